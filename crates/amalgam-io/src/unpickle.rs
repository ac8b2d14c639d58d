//! A restricted unpickler for the `data.pkl` of a `torch.save` archive.
//!
//! It never runs code: a pickle is a program for a stack machine whose `GLOBAL` + `REDUCE`
//! opcodes call any importable function (`posix.system` included), which is why `torch.load`
//! without `weights_only` is unsafe. Here every global is looked up in a fixed allow-list of the
//! names a state dict needs ([`Global`]), anything else stops the parse at the `GLOBAL` opcode
//! with an error naming it, and "calling" an allowed global only builds a description of a tensor
//! (storage key, dtype, offset, shape, strides). No tensor bytes are read here; `torch.rs`
//! checks the descriptions against the archive.
//!
//! Only the opcodes a state dict uses are implemented (protocol 2 as `torch.save` writes it, plus
//! the few protocol 4 ones `pickle.dump` would use: `FRAME`, `SHORT_BINUNICODE`, `MEMOIZE`,
//! `STACK_GLOBAL`); any other opcode is an error naming it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::DType;

/// Why a pickle was refused.
#[derive(Debug)]
pub(crate) enum PickleError {
    /// A global outside the allow-list.
    Global { module: String, name: String },
    /// Anything else, at a byte offset of the pickle.
    Malformed { offset: usize, reason: String },
}

/// The globals a state dict may reference. Anything else is refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.Parameter`: only ever an argument of `_rebuild_from_type_v2`.
    TensorClass,
    /// A typed storage class (`torch.FloatStorage`...): only in a persistent id.
    Storage(DType),
    /// `torch.UntypedStorage`: bytes; the tensor's dtype comes from `_rebuild_tensor_v3`.
    UntypedStorage,
    /// A dtype object (`torch.float8_e4m3fn`), as `_rebuild_tensor_v3` takes it.
    Dtype(DType),
}

fn resolve(module: &str, name: &str) -> Option<Global> {
    use Global::*;
    let dtype = |n: &str| {
        Some(match n {
            "float64" | "double" => DType::F64,
            "float32" | "float" => DType::F32,
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int16" | "short" => DType::I16,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "uint16" => DType::U16,
            "uint32" => DType::U32,
            "uint64" => DType::U64,
            "bool" => DType::BOOL,
            "float8_e4m3fn" => DType::F8_E4M3,
            "float8_e5m2" => DType::F8_E5M2,
            _ => return None,
        })
    };
    Some(match (module, name) {
        ("collections", "OrderedDict") => OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => RebuildParameterWithState,
        ("torch._tensor" | "torch._utils", "_rebuild_from_type_v2") => RebuildFromTypeV2,
        ("torch" | "torch._tensor", "Tensor")
        | ("torch.nn.parameter" | "torch.nn", "Parameter") => TensorClass,
        ("torch" | "torch.storage", "UntypedStorage") => UntypedStorage,
        ("torch", storage) if storage.ends_with("Storage") => Storage(match storage {
            "DoubleStorage" => DType::F64,
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::BOOL,
            _ => return None,
        }),
        ("torch", d) => Dtype(dtype(d)?),
        _ => return None,
    })
}

/// A tensor as the pickle describes it: nothing is read yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PickledTensor {
    /// Storage key: the archive member `<prefix>/data/<key>`.
    pub key: String,
    /// Element type of the tensor.
    pub dtype: DType,
    /// Bytes per element of the storage as declared (1 for an untyped storage).
    pub storage_elem: usize,
    /// Elements of the storage as declared in the persistent id.
    pub storage_numel: u64,
    /// Offset into the storage, in elements of `dtype`.
    pub offset: u64,
    /// Shape.
    pub shape: Vec<u64>,
    /// Strides, in elements (may be negative in a hostile file; checked by the caller).
    pub stride: Vec<i64>,
}

#[derive(Debug)]
struct StorageRef {
    key: String,
    /// None for an untyped storage.
    dtype: Option<DType>,
    numel: u64,
}

/// A Python dict, keeping insertion order; a repeated string key replaces the value in place, as
/// in Python.
#[derive(Default)]
struct Dict {
    items: Vec<(Value, Value)>,
    by_str: HashMap<Rc<str>, usize>,
}

impl Dict {
    fn insert(&mut self, k: Value, v: Value) {
        if let Value::Str(s) = &k {
            if let Some(&i) = self.by_str.get(s) {
                if let Some(slot) = self.items.get_mut(i) {
                    slot.1 = v;
                }
                return;
            }
            self.by_str.insert(s.clone(), self.items.len());
        }
        self.items.push((k, v));
    }
}

/// A value on the machine's stack (a bool or a float is kept without its value: a state dict
/// uses them only for `requires_grad` and entries that are skipped). Containers are shared (`Rc`) as Python objects are, so a
/// `BINGET` is O(1) and a mutation through one reference is seen through the memo.
#[derive(Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Dict>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<PickledTensor>),
}

impl Drop for Value {
    /// Iterative, so a pickle of a million nested tuples (a few MB) cannot overflow the stack
    /// when it is dropped, as the derived recursive drop would.
    fn drop(&mut self) {
        fn children(v: &mut Value, out: &mut Vec<Value>) {
            match v {
                Value::Tuple(rc) => {
                    if let Some(items) = Rc::get_mut(rc) {
                        out.append(items);
                    }
                }
                Value::List(rc) => {
                    if let Some(items) = Rc::get_mut(rc) {
                        out.append(items.get_mut());
                    }
                }
                Value::Dict(rc) => {
                    if let Some(d) = Rc::get_mut(rc) {
                        let d = d.get_mut();
                        d.by_str.clear();
                        for (k, v) in d.items.drain(..) {
                            out.push(k);
                            out.push(v);
                        }
                    }
                }
                _ => {}
            }
        }
        let mut stack = Vec::new();
        children(self, &mut stack);
        while let Some(mut v) = stack.pop() {
            children(&mut v, &mut stack);
        }
    }
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class or function",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

/// What a `data.pkl` holds: its tensors by name, in pickle order, and the names of entries that
/// are not tensors (skipped).
#[derive(Debug, Default)]
pub(crate) struct StateDict {
    pub tensors: Vec<(String, PickledTensor)>,
    pub skipped: Vec<String>,
}

/// Runs the restricted machine over `data` and returns the state dict it builds: the top-level
/// dict, or its `state_dict` entry when it has one that is a dict (as mergekit reads training
/// checkpoints).
pub(crate) fn state_dict(data: &[u8]) -> Result<StateDict, PickleError> {
    let top = Machine::new(data).run()?;
    let Value::Dict(top) = &top else {
        return Err(PickleError::Malformed {
            offset: data.len(),
            reason: format!("the pickle holds {}, not a state dict", top.kind()),
        });
    };
    let inner = {
        let d = top.borrow();
        d.by_str
            .get("state_dict")
            .and_then(|&i| d.items.get(i))
            .and_then(|(_, v)| match v {
                Value::Dict(inner) => Some(inner.clone()),
                _ => None,
            })
    };
    let dict = inner.unwrap_or_else(|| top.clone());
    let dict = dict.borrow();
    let mut out = StateDict::default();
    for (k, v) in &dict.items {
        let Value::Str(name) = k else {
            return Err(PickleError::Malformed {
                offset: data.len(),
                reason: format!("a state dict key is {}, not a string", k.kind()),
            });
        };
        match v {
            Value::Tensor(t) => out.tensors.push((name.to_string(), (**t).clone())),
            _ => out.skipped.push(name.to_string()),
        }
    }
    Ok(out)
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed (for messages).
    op_at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine {
            data,
            pos: 0,
            op_at: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn err(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            offset: self.op_at,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let data = self.data;
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
            .ok_or_else(|| self.err(format!("truncated: {n} bytes needed past the end")))?;
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("truncated: unterminated GLOBAL name"))?;
        let s = self.take(n + 1)?;
        std::str::from_utf8(&s[..n]).map_err(|_| self.err("GLOBAL name is not UTF-8"))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.err("stack underflow (popped past a MARK)"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let at = self.op_at;
        self.stack.last_mut().ok_or(PickleError::Malformed {
            offset: at,
            reason: "stack underflow".into(),
        })
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK past the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn str_value(&mut self, n: usize) -> Result<Value, PickleError> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.err("string is not UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn memo_get(&self, k: u32) -> Result<Value, PickleError> {
        self.memo
            .get(&k)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {k} was never stored")))
    }

    fn memo_put(&mut self, k: u32) -> Result<(), PickleError> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.err("stack underflow"))?;
        self.memo.insert(k, v);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        let g = resolve(module, name).ok_or_else(|| PickleError::Global {
            module: module.to_string(),
            name: name.to_string(),
        })?;
        self.stack.push(Value::Global(g));
        Ok(())
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            self.op_at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.err(format!("pickle protocol {p} is unknown")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint; the frame's opcodes follow inline.
                    self.take(8)?;
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self
                    .stack
                    .push(Value::Dict(Rc::new(RefCell::new(Dict::default())))),
                b']' => self.stack.push(Value::List(Rc::default())),
                b')' => self.stack.push(Value::Tuple(Rc::default())),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool),
                0x89 => self.stack.push(Value::Bool),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                0x8a => {
                    // LONG1: n bytes of little-endian two's complement.
                    let n = usize::from(self.u8()?);
                    if n > 8 {
                        return Err(self.err(format!("integer of {n} bytes is too large")));
                    }
                    let b = self.take(n)?;
                    let mut a = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xFFu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    a[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(a)));
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Float);
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let v = self.str_value(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.str_value(n)?;
                    self.stack.push(v);
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(u32::from(k))?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k =
                        u32::try_from(self.memo.len()).map_err(|_| self.err("memo too large"))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()?;
                    let v = self.memo_get(u32::from(k))?;
                    self.stack.push(v);
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le()?);
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'0' => {
                    self.pop()?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(&m, &n)?;
                        }
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().push(v),
                        other => {
                            let k = other.kind();
                            return Err(self.err(format!("APPEND to {k}")));
                        }
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => {
                            let k = other.kind();
                            return Err(self.err(format!("APPENDS to {k}")));
                        }
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.err("SETITEMS with an odd number of items"));
                    }
                    self.set_items(items)?;
                }
                b'b' => {
                    // BUILD: the state of an OrderedDict (`_metadata`) or of a tensor (Python
                    // attributes); neither matters to the weights, so it is dropped.
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => {
                            let k = other.kind();
                            return Err(self.err(format!("BUILD on {k}")));
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let s = self.persistent(&pid)?;
                    self.stack.push(Value::Storage(Rc::new(s)));
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(&func, &args)?;
                    self.stack.push(v);
                }
                other => {
                    return Err(self.err(format!(
                        "opcode {} (0x{other:02x}) is not one a state dict uses",
                        opcode_name(other)
                    )))
                }
            }
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        match self.top()? {
            Value::Dict(d) => {
                let mut d = d.borrow_mut();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.insert(k, v);
                }
                Ok(())
            }
            other => {
                let k = other.kind();
                Err(self.err(format!("SETITEM on {k}")))
            }
        }
    }

    /// `('storage', storage_type, key, location, numel)`, as torch's `persistent_id` writes it.
    fn persistent(&self, pid: &Value) -> Result<StorageRef, PickleError> {
        let bad =
            || self.err("a persistent id that is not ('storage', type, key, location, numel)");
        let Value::Tuple(t) = pid else {
            return Err(bad());
        };
        let [Value::Str(tag), Value::Global(ty), Value::Str(key), Value::Str(_loc), Value::Int(numel)] =
            t.as_slice()
        else {
            return Err(bad());
        };
        if &**tag != "storage" {
            return Err(bad());
        }
        let dtype = match ty {
            Global::Storage(d) => Some(*d),
            Global::UntypedStorage => None,
            _ => return Err(self.err("a persistent id whose storage type is not a storage class")),
        };
        let numel = u64::try_from(*numel).map_err(|_| self.err("negative storage size"))?;
        Ok(StorageRef {
            key: key.to_string(),
            dtype,
            numel,
        })
    }

    fn reduce(&self, func: &Value, args: &Value) -> Result<Value, PickleError> {
        let Value::Global(g) = func else {
            return Err(self.err(format!("REDUCE calls {}, not a function", func.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err(format!("REDUCE arguments are {}, not a tuple", args.kind())));
        };
        self.call(*g, args, 0)
    }

    /// "Calls" an allowed global: only builds a value, and only for the globals that are
    /// functions (classes used as arguments, storages and dtypes are not callable).
    fn call(&self, g: Global, args: &[Value], depth: u32) -> Result<Value, PickleError> {
        let tensor_arg = |v: Option<&Value>, what: &str| match v {
            Some(Value::Tensor(t)) => Ok(Value::Tensor(t.clone())),
            _ => Err(self.err(format!("{what} needs a tensor as first argument"))),
        };
        match g {
            Global::OrderedDict if args.is_empty() => {
                Ok(Value::Dict(Rc::new(RefCell::new(Dict::default()))))
            }
            Global::OrderedDict => Err(self.err("OrderedDict called with arguments")),
            Global::RebuildTensorV2 | Global::RebuildTensorV3 => self.rebuild(g, args),
            Global::RebuildParameter if args.len() == 3 => {
                tensor_arg(args.first(), "_rebuild_parameter")
            }
            Global::RebuildParameterWithState if args.len() == 4 => {
                tensor_arg(args.first(), "_rebuild_parameter_with_state")
            }
            Global::RebuildFromTypeV2 if args.len() == 4 && depth == 0 => {
                // (func, new_type, args, state): the tensor func(*args) builds, as the
                // subclass `new_type` (Tensor or Parameter: the same weights); state dropped.
                let (Some(Value::Global(f)), Some(Value::Global(Global::TensorClass))) =
                    (args.first(), args.get(1))
                else {
                    return Err(self.err(
                        "_rebuild_from_type_v2 needs a rebuild function and torch.Tensor or \
                         torch.nn.Parameter",
                    ));
                };
                let Some(Value::Tuple(inner)) = args.get(2) else {
                    return Err(self.err("_rebuild_from_type_v2 arguments are not a tuple"));
                };
                let v = self.call(*f, inner, depth + 1)?;
                tensor_arg(Some(&v), "_rebuild_from_type_v2")
            }
            other => Err(self.err(format!(
                "{} called with {} arguments, which a state dict does not do",
                global_name(other),
                args.len()
            ))),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`
    /// or `_rebuild_tensor_v3(..., hooks, dtype[, metadata])`.
    fn rebuild(&self, g: Global, args: &[Value]) -> Result<Value, PickleError> {
        let what = global_name(g);
        let v3 = g == Global::RebuildTensorV3;
        let (min, max) = if v3 { (7, 8) } else { (6, 7) };
        if args.len() < min || args.len() > max {
            return Err(self.err(format!("{what} with {} arguments", args.len())));
        }
        let Some(Value::Storage(s)) = args.first() else {
            return Err(self.err(format!("{what}: first argument is not a storage")));
        };
        let Some(Value::Int(offset)) = args.get(1) else {
            return Err(self.err(format!("{what}: storage offset is not an int")));
        };
        let offset = u64::try_from(*offset)
            .map_err(|_| self.err(format!("{what}: negative storage offset")))?;
        let ints = |v: Option<&Value>, which: &str| -> Result<Vec<i64>, PickleError> {
            match v {
                Some(Value::Tuple(t)) => t
                    .iter()
                    .map(|x| match x {
                        Value::Int(i) => Ok(*i),
                        _ => Err(self.err(format!("{what}: {which} holds a non-int"))),
                    })
                    .collect(),
                _ => Err(self.err(format!("{what}: {which} is not a tuple"))),
            }
        };
        let shape = ints(args.get(2), "size")?
            .into_iter()
            .map(|d| u64::try_from(d).map_err(|_| self.err(format!("{what}: negative size"))))
            .collect::<Result<Vec<u64>, _>>()?;
        let stride = ints(args.get(3), "stride")?;
        let dtype = if v3 {
            match args.get(6) {
                Some(Value::Global(Global::Dtype(d))) => *d,
                _ => return Err(self.err(format!("{what}: the dtype argument is not a dtype"))),
            }
        } else {
            s.dtype.ok_or_else(|| {
                self.err(format!(
                    "{what} on an untyped storage (no dtype to read it as)"
                ))
            })?
        };
        Ok(Value::Tensor(Rc::new(PickledTensor {
            key: s.key.clone(),
            dtype,
            storage_elem: s.dtype.map_or(1, DType::size),
            storage_numel: s.numel,
            offset,
            shape,
            stride,
        })))
    }
}

fn global_name(g: Global) -> &'static str {
    match g {
        Global::OrderedDict => "collections.OrderedDict",
        Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
        Global::RebuildTensorV3 => "torch._utils._rebuild_tensor_v3",
        Global::RebuildParameter => "torch._utils._rebuild_parameter",
        Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state",
        Global::RebuildFromTypeV2 => "torch._tensor._rebuild_from_type_v2",
        Global::TensorClass => "a tensor class",
        Global::Storage(_) | Global::UntypedStorage => "a storage class",
        Global::Dtype(_) => "a dtype",
    }
}

/// Names of the opcodes a refusal may name (the rest by byte).
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        b'P' => "PERSID",
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        0x8b => "LONG4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x82..=0x84 => "EXT",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        b'V' => "UNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        b'g' => "GET",
        b'p' => "PUT",
        b'2' => "DUP",
        b'1' => "POP_MARK",
        b'l' => "LIST",
        b'd' => "DICT",
        _ => "unknown",
    }
}
