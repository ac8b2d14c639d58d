use std::fmt;

/// Element type of a tensor, as named in safetensors headers.
///
/// The declaration order follows the safetensors crate's alignment order; the writer sorts tensors
/// by [`DType::alignment_rank`] (descending) and then by name, exactly like the Python library, so
/// that shards are byte-identical to `safetensors.torch.save_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs, non_camel_case_types)]
pub enum DType {
    BOOL,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl DType {
    /// Every dtype, in alignment order.
    pub const ALL: [DType; 15] = [
        DType::BOOL,
        DType::U8,
        DType::I8,
        DType::F8_E5M2,
        DType::F8_E4M3,
        DType::I16,
        DType::U16,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U32,
        DType::F32,
        DType::F64,
        DType::I64,
        DType::U64,
    ];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::BOOL | DType::U8 | DType::I8 | DType::F8_E5M2 | DType::F8_E4M3 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// Position in the safetensors crate's `Dtype` declaration order; the writer sorts by this,
    /// descending, so the layout matches the reference implementation.
    pub fn alignment_rank(self) -> usize {
        self as usize
    }

    /// The header spelling (`"BF16"`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::BOOL => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8_E5M2 => "F8_E5M2",
            DType::F8_E4M3 => "F8_E4M3",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
        }
    }

    /// Parses a header spelling.
    pub fn from_header(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Parses a mergekit / PyTorch dtype name (`bfloat16`, `torch.float16`, ...), accepting only
    /// the names mergekit 0.1.5 accepts.
    pub fn from_mergekit(s: &str) -> Option<DType> {
        let s = s.strip_prefix("torch.").unwrap_or(s);
        match s {
            "bfloat16" => Some(DType::BF16),
            "float16" => Some(DType::F16),
            "float32" => Some(DType::F32),
            "float64" => Some(DType::F64),
            "int64" => Some(DType::I64),
            _ => None,
        }
    }

    /// The PyTorch name written into `config.json` (`"bfloat16"`).
    pub const fn torch_name(self) -> &'static str {
        match self {
            DType::BOOL => "bool",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::F8_E5M2 => "float8_e5m2",
            DType::F8_E4M3 => "float8_e4m3fn",
            DType::I16 => "int16",
            DType::U16 => "uint16",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I32 => "int32",
            DType::U32 => "uint32",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::U64 => "uint64",
        }
    }

    /// Whether this is a floating-point type that merges operate on.
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            DType::F16 | DType::BF16 | DType::F32 | DType::F64 | DType::F8_E4M3 | DType::F8_E5M2
        )
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
