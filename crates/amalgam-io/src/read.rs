//! Memory-mapped safetensors reading with a fully validated header.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{DType, Error, Result};

/// Largest header accepted, as in the reference implementation (100 MB).
pub const MAX_HEADER_SIZE: u64 = 100_000_000;

/// The `__metadata__` map of a safetensors header (string values only, as the format requires).
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// One tensor's header entry, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Absolute byte range in the file (header included), validated to lie inside it.
    pub start: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A borrowed view of one tensor's bytes inside a mapped file.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// Header entry.
    pub info: &'a TensorInfo,
    /// The tensor's little-endian bytes.
    pub data: &'a [u8],
    /// The file it lives in (for messages).
    pub path: &'a Path,
}

/// A memory-mapped safetensors file whose header has been validated.
///
/// Also what a `torch.save` archive (`pytorch_model.bin`) is opened as (see
/// [`SafetensorsFile::open_torch`]): its tensors are stored uncompressed, so each is a byte range
/// of the file too, and the engine reads both kinds the same way.
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    mmap: Mmap,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: Option<Metadata>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Opens and maps `path`, validating the whole header (see [`parse_header`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len < 8 {
            // Checked before mapping: an empty file cannot be mapped, and the error must say
            // what is wrong with the file rather than with mmap.
            return Err(Error::TooShort { path, len });
        }
        // SAFETY: `Mmap::map` maps the file read-only and MAP_SHARED: this process never writes
        // through the mapping, but the pages are the file's page cache, so another process that
        // writes to the file changes the bytes we see, and one that truncates it makes later
        // accesses fault (SIGBUS). That is the documented risk of every mmap-based model loader
        // (safetensors, candle, mergekit), accepted for the I/O savings; amalgam reads tensor
        // data with positioned reads and uses the map for the header, which is validated
        // against the file length before any access.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (tensors, metadata) = parse_header(&path, &mmap)?;
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path,
            file,
            mmap,
            tensors,
            by_name,
            metadata,
        })
    }

    /// A file whose tensor table was validated by another reader (`torch.rs` for a
    /// `torch.save` archive): every entry's `start..end` must lie inside `mmap`. Tensors may
    /// share bytes there (views of one storage), which a safetensors file never does.
    pub(crate) fn from_validated(
        path: PathBuf,
        file: File,
        mmap: Mmap,
        tensors: Vec<TensorInfo>,
    ) -> Self {
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        SafetensorsFile {
            path,
            file,
            mmap,
            tensors,
            by_name,
            metadata: None,
        }
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Header entries in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The `__metadata__` map, if any.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let info = self.tensors.get(*self.by_name.get(name)?)?;
        Some(TensorRef {
            info,
            data: self.mmap.get(info.start..info.end)?,
            path: &self.path,
        })
    }

    /// Page-aligned part of `name`'s bytes that lies entirely inside it (so advice on it never
    /// touches a neighbour's pages), as (offset, length) in the mapping.
    fn inner_pages(&self, name: &str) -> Option<(usize, usize)> {
        let info = self.tensors.get(*self.by_name.get(name)?)?;
        let page = 4096;
        let start = info.start.div_ceil(page) * page;
        let end = info.end / page * page;
        (end > start).then(|| (start, end - start))
    }

    /// Advises the kernel that `name`'s pages will not be needed again, so the resident set
    /// does not grow with the model: the pages are dropped and would be re-read from the file.
    pub fn release(&self, name: &str) {
        if let Some((start, len)) = self.inner_pages(name) {
            // SAFETY: the mapping is read-only and file-backed and is never written, so it has no
            // private (copy-on-write) pages; MADV_DONTNEED therefore only drops clean page-cache
            // references and a later access re-reads the same bytes from the file. No data any
            // live `&[u8]` points to can change.
            let _ = unsafe {
                self.mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
    }

    /// Copies the bytes of `part` (a slice of this file's mapping, as handed out by
    /// [`SafetensorsFile::get`]) into `buf` with positioned reads instead of touching the
    /// mapping. Streaming a large tensor this way, chunk by chunk, costs no page faults and
    /// leaves nothing mapped, so resident memory stays at the size of the buffers. Returns
    /// `Ok(false)` if `part` is not in this file or `buf` has another length.
    pub fn read_part(&self, part: &[u8], buf: &mut [u8]) -> Result<bool> {
        let base = self.mmap.as_ptr() as usize;
        let p = part.as_ptr() as usize;
        if p < base || p + part.len() > base + self.mmap.len() || buf.len() != part.len() {
            return Ok(false);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file
                .read_exact_at(buf, (p - base) as u64)
                .map_err(|e| Error::io(&self.path, e))?;
        }
        #[cfg(not(unix))]
        buf.copy_from_slice(part);
        Ok(true)
    }

    /// Asks the kernel to map `name`'s pages now, in one call (`MADV_POPULATE_READ`, Linux
    /// 5.14+; read-ahead with `MADV_WILLNEED` elsewhere), instead of one page fault per 4 KiB
    /// page when the bytes are first touched. Purely advisory.
    pub fn prefetch(&self, name: &str) {
        if let Some((start, len)) = self.inner_pages(name) {
            #[cfg(target_os = "linux")]
            if self
                .mmap
                .advise_range(memmap2::Advice::PopulateRead, start, len)
                .is_ok()
            {
                return;
            }
            let _ = self
                .mmap
                .advise_range(memmap2::Advice::WillNeed, start, len);
        }
    }
}

/// Parses and validates a safetensors header held in `bytes` (the whole file).
///
/// Checks, each with its own error: 8-byte prefix present; header length within
/// [`MAX_HEADER_SIZE`] and the file; UTF-8 JSON object; known dtypes; shape x size equals the byte
/// span; offsets inside the data section; no overlaps, no holes, no duplicate names.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<(Vec<TensorInfo>, Option<Metadata>)> {
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return Err(Error::TooShort {
            path: path.into(),
            len: file_len,
        });
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(n8);
    if header_len > MAX_HEADER_SIZE || header_len > file_len - 8 {
        return Err(Error::HeaderLength {
            path: path.into(),
            header_len,
            file_len,
            limit: MAX_HEADER_SIZE,
        });
    }
    let hdr_end = 8 + header_len as usize;
    let json_err = |reason: String| Error::HeaderJson {
        path: path.into(),
        reason,
    };
    let text = std::str::from_utf8(&bytes[8..hdr_end]).map_err(|e| Error::HeaderUtf8 {
        path: path.into(),
        valid_up_to: e.valid_up_to(),
    })?;
    // Duplicate keys must be detected, which a map deserializer would silently merge: walk the
    // object with a visitor that keeps every entry.
    let entries: RawHeader = serde_json::from_str(text).map_err(|e| json_err(format!("{e}")))?;
    let data_len = file_len - hdr_end as u64;
    let mut tensors = Vec::with_capacity(entries.0.len());
    let mut metadata = None;
    let mut seen = std::collections::HashSet::new();
    for (name, value) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(Error::DuplicateTensor {
                path: path.into(),
                tensor: name,
            });
        }
        if name == "__metadata__" {
            match value {
                serde_json::Value::Object(m) => {
                    if m.values().any(|v| !v.is_string()) {
                        return Err(json_err("__metadata__ values must all be strings".into()));
                    }
                    metadata = Some(m);
                }
                _ => return Err(json_err("__metadata__ must be an object".into())),
            }
            continue;
        }
        let entry: RawEntry =
            serde_json::from_value(value).map_err(|e| json_err(format!("tensor `{name}`: {e}")))?;
        let dtype = DType::from_header(&entry.dtype).ok_or_else(|| Error::UnknownDtype {
            path: path.into(),
            tensor: name.clone(),
            dtype: entry.dtype.clone(),
        })?;
        let [begin, end] = entry.data_offsets;
        if begin > end || end > data_len {
            return Err(Error::OffsetsOutOfBounds {
                path: path.into(),
                tensor: name,
                begin,
                end,
                data_len,
            });
        }
        let expected = entry
            .shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d));
        if expected != Some(end - begin) {
            return Err(Error::SizeMismatch {
                path: path.into(),
                tensor: name,
                dtype,
                shape: entry.shape.clone(),
                expected: expected.map_or("more than 2^64".into(), |e| e.to_string()),
                actual: end - begin,
            });
        }
        // Fits in usize: bounded by the file length, which is mapped.
        let shape = entry.shape.iter().map(|&d| d as usize).collect();
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            start: hdr_end + begin as usize,
            end: hdr_end + end as usize,
        });
    }
    // Coverage: sorted by start, each must begin where the previous ended.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].start, tensors[i].end));
    let mut cursor = hdr_end;
    let mut prev: Option<usize> = None;
    for &i in &order {
        let t = &tensors[i];
        if t.start < cursor {
            let first = prev.map_or_else(String::new, |p| tensors[p].name.clone());
            return Err(Error::Overlap {
                path: path.into(),
                first,
                second: t.name.clone(),
            });
        }
        if t.start > cursor {
            return Err(Error::Hole {
                path: path.into(),
                begin: (cursor - hdr_end) as u64,
                end: (t.start - hdr_end) as u64,
            });
        }
        cursor = t.end;
        prev = Some(i);
    }
    if cursor as u64 != file_len {
        return Err(Error::Hole {
            path: path.into(),
            begin: (cursor - hdr_end) as u64,
            end: data_len,
        });
    }
    Ok((tensors, metadata))
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// A JSON object kept as an ordered list of entries, duplicates included.
struct RawHeader(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for RawHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = map.next_entry::<String, serde_json::Value>()? {
                    v.push((k, val));
                }
                Ok(RawHeader(v))
            }
        }
        d.deserialize_map(V)
    }
}
