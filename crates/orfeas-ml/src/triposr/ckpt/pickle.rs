//! The restricted pickle machine of [`super`]: interprets `data.pkl`'s opcodes
//! into plain data, resolving only the globals a state dict needs and refusing
//! every other one by name. Nothing is imported or called.

use std::collections::HashMap;

use candle_core::DType;

/// The element type a `torch.*Storage` global names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StorageType {
    Float,
    Half,
    BFloat16,
    Double,
    Long,
    Int,
    Short,
    Byte,
    Bool,
}

impl StorageType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::Float,
            "HalfStorage" => Self::Half,
            "BFloat16Storage" => Self::BFloat16,
            "DoubleStorage" => Self::Double,
            "LongStorage" => Self::Long,
            "IntStorage" => Self::Int,
            "ShortStorage" => Self::Short,
            "ByteStorage" => Self::Byte,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub(super) fn dtype(self) -> DType {
        match self {
            Self::Float => DType::F32,
            Self::Half => DType::F16,
            Self::BFloat16 => DType::BF16,
            Self::Double => DType::F64,
            Self::Long => DType::I64,
            Self::Int => DType::I32,
            Self::Short => DType::I16,
            Self::Byte | Self::Bool => DType::U8,
        }
    }
}

/// The globals this reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    RebuildTensorV2,
    RebuildParameter,
    OrderedDict,
    Storage(StorageType),
}

impl Global {
    fn resolve(module: &str, name: &str) -> std::result::Result<Self, String> {
        match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Self::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Ok(Self::RebuildParameter),
            ("collections", "OrderedDict") => Ok(Self::OrderedDict),
            ("torch", storage) => StorageType::from_name(storage)
                .map(Self::Storage)
                .ok_or_else(|| refused(module, name)),
            _ => Err(refused(module, name)),
        }
    }
}

fn refused(module: &str, name: &str) -> String {
    format!(
        "its pickle calls the Python global `{module}.{name}`, which no PyTorch state dict needs: \
         refused, and nothing in the file was run (only tensors are read from .ckpt files)"
    )
}

#[derive(Debug, Clone)]
pub(super) struct StorageRef {
    pub(super) key: String,
    pub(super) kind: StorageType,
    pub(super) numel: usize,
}

#[derive(Debug, Clone)]
pub(super) struct TensorRef {
    pub(super) storage: StorageRef,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

/// What the pickle machine holds: data only (scalars a state dict never
/// looks at are kept as their kind alone).
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Value {
    fn describe(&self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Bool => "a bool",
            Self::Int(_) => "an int",
            Self::Float => "a float",
            Self::Str(_) => "a string",
            Self::Bytes => "bytes",
            Self::Tuple(_) => "a tuple",
            Self::List(_) => "a list",
            Self::Dict(_) => "a dict",
            Self::Global(_) => "a global",
            Self::Storage(_) => "a storage",
            Self::Tensor(_) => "a tensor",
        }
    }

    fn as_usize(&self, what: &str) -> std::result::Result<usize, String> {
        match self {
            Self::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} is negative ({i})")),
            other => Err(format!("{what} is {} instead of an int", other.describe())),
        }
    }

    fn as_usizes(&self, what: &str) -> std::result::Result<Vec<usize>, String> {
        match self {
            Self::Tuple(items) | Self::List(items) => {
                items.iter().map(|v| v.as_usize(what)).collect()
            }
            other => Err(format!("{what} is {} instead of a tuple", other.describe())),
        }
    }
}

/// Reads the opcode stream of a pickle, refusing every global not on the list.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    budget: usize,
}

pub(super) type PResult<T> = std::result::Result<T, String>;

/// Deepest nesting a pickle may build (a state dict needs 4 or so); bounds the
/// recursion of walking and dropping what a hostile file builds.
const MAX_DEPTH: usize = 64;

/// Objects the reader may visit while nesting and copying memo entries; a
/// state dict needs a few per tensor. Bounds "billion laughs" memo copying.
const WORK_BUDGET: usize = 2_000_000;

/// Charges `v`'s size to `budget` and checks it nests at most `MAX_DEPTH - depth` deep.
fn measure(v: &Value, depth: usize, budget: &mut usize) -> PResult<()> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "the pickle nests objects more than {MAX_DEPTH} deep; not a state dict"
        ));
    }
    *budget = budget
        .checked_sub(1)
        .ok_or_else(|| "the pickle builds far more objects than a state dict holds".to_owned())?;
    match v {
        Value::Tuple(items) | Value::List(items) => {
            for item in items {
                measure(item, depth + 1, budget)?;
            }
        }
        Value::Dict(pairs) => {
            for (k, item) in pairs {
                measure(k, depth + 1, budget)?;
                measure(item, depth + 1, budget)?;
            }
        }
        _ => {}
    }
    Ok(())
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            budget: WORK_BUDGET,
        }
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                "the pickle ends in the middle of an opcode (truncated file?)".to_owned()
            })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> PResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len_u64(&mut self) -> PResult<usize> {
        usize::try_from(self.u64()?).map_err(|_| "a length does not fit in memory".to_owned())
    }

    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| "a GLOBAL opcode has no end of line".to_owned())?;
        let text = std::str::from_utf8(&rest[..end])
            .map_err(|_| "a GLOBAL name is not UTF-8".to_owned())?
            .to_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn text(&mut self, n: usize) -> PResult<Value> {
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(|s| Value::Str(s.to_owned()))
            .map_err(|_| "a string is not UTF-8".to_owned())
    }

    fn pop(&mut self) -> PResult<Value> {
        self.stack
            .pop()
            .ok_or_else(|| "the pickle pops an empty stack".to_owned())
    }

    fn top(&mut self) -> PResult<&mut Value> {
        self.stack
            .last_mut()
            .ok_or_else(|| "the pickle reads an empty stack".to_owned())
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| "the pickle closes a MARK it never opened".to_owned())?;
        if mark > self.stack.len() {
            return Err("the pickle's MARK points past the stack".to_owned());
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&mut self, key: u32) -> PResult<Value> {
        let v = self
            .memo
            .get(&key)
            .ok_or_else(|| format!("the pickle reads memo entry {key}, which was never stored"))?;
        measure(v, 1, &mut self.budget)?;
        Ok(v.clone())
    }

    /// Checks values about to become children of a container.
    fn nest<'v>(&mut self, children: impl IntoIterator<Item = &'v Value>) -> PResult<()> {
        for child in children {
            measure(child, 1, &mut self.budget)?;
        }
        Ok(())
    }

    fn memo_put(&mut self, key: u32) -> PResult<()> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| "the pickle memoizes an empty stack".to_owned())?;
        self.memo.insert(key, v);
        Ok(())
    }

    /// Runs the program to STOP and returns its result.
    fn run(mut self) -> PResult<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!(
                            "pickle protocol {proto} is newer than any torch writes"
                        ));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only.
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'N' => self.stack.push(Value::None),
                0x88 | 0x89 => self.stack.push(Value::Bool),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err(format!("an integer of {n} bytes is too large"));
                    }
                    let mut buf = [if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    }; 8];
                    buf[..n].copy_from_slice(bytes);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Float);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = usize::from(self.u8()?);
                    self.take(n)?;
                    self.stack.push(Value::Bytes);
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    self.take(n)?;
                    self.stack.push(Value::Bytes);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack
                        .push(Value::Global(Global::resolve(&module, &name)?));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL without a module and name string".to_owned());
                    };
                    self.stack
                        .push(Value::Global(Global::resolve(&module, &name)?));
                }
                b'q' => {
                    let k = u32::from(self.u8()?);
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k =
                        u32::try_from(self.memo.len()).map_err(|_| "memo overflow".to_owned())?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = u32::from(self.u8()?);
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let k = self.u32()?;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.nest(&items)?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err("a TUPLE opcode finds too few items".to_owned());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.nest(&items)?;
                    self.stack.push(Value::Tuple(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.nest([&v])?;
                    match self.top()? {
                        Value::List(items) => items.push(v),
                        other => return Err(format!("APPEND to {}", other.describe())),
                    }
                }
                b'e' => {
                    let vs = self.pop_mark()?;
                    self.nest(&vs)?;
                    match self.top()? {
                        Value::List(items) => items.extend(vs),
                        other => return Err(format!("APPENDS to {}", other.describe())),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.nest([&k, &v])?;
                    match self.top()? {
                        Value::Dict(items) => items.push((k, v)),
                        other => return Err(format!("SETITEM on {}", other.describe())),
                    }
                }
                b'u' => {
                    let kv = self.pop_mark()?;
                    self.nest(&kv)?;
                    if kv.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".to_owned());
                    }
                    let mut pairs = Vec::with_capacity(kv.len() / 2);
                    let mut it = kv.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top()? {
                        Value::Dict(items) => items.extend(pairs),
                        other => return Err(format!("SETITEMS on {}", other.describe())),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::Storage(storage_from_pid(pid)?));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = reduce(callable, args)?;
                    self.stack.push(result);
                }
                b'b' => {
                    // BUILD sets attributes (an OrderedDict's `_metadata`); tensors need none of them.
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => return Err(format!("BUILD on {}", other.describe())),
                    }
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {} is not used by torch.save state dicts",
                        self.pos - 1
                    ));
                }
            }
        }
    }
}

/// `('storage', torch.XStorage, key, location, numel)`.
fn storage_from_pid(pid: Value) -> PResult<StorageRef> {
    let Value::Tuple(items) = pid else {
        return Err(format!(
            "a persistent id is {} instead of a tuple",
            pid.describe()
        ));
    };
    match items.as_slice() {
        [
            Value::Str(tag),
            Value::Global(Global::Storage(kind)),
            Value::Str(key),
            Value::Str(_location),
            numel,
        ] if tag == "storage" => Ok(StorageRef {
            key: key.clone(),
            kind: *kind,
            numel: numel.as_usize("a storage size")?,
        }),
        _ => Err("a persistent id is not a torch storage reference".to_owned()),
    }
}

fn reduce(callable: Value, args: Value) -> PResult<Value> {
    let Value::Tuple(args) = args else {
        return Err(format!(
            "REDUCE arguments are {} instead of a tuple",
            args.describe()
        ));
    };
    let Value::Global(global) = callable else {
        return Err(format!(
            "REDUCE calls {}, not a global",
            callable.describe()
        ));
    };
    match global {
        Global::OrderedDict => match args.as_slice() {
            [] => Ok(Value::Dict(Vec::new())),
            _ => Err("OrderedDict built from arguments".to_owned()),
        },
        Global::RebuildTensorV2 => match args.as_slice() {
            [
                Value::Storage(storage),
                offset,
                size,
                stride,
                _requires_grad,
                _hooks,
                ..,
            ] => {
                let size = size.as_usizes("a tensor size")?;
                let stride = stride.as_usizes("a tensor stride")?;
                if size.len() != stride.len() {
                    return Err("a tensor's size and stride differ in length".to_owned());
                }
                Ok(Value::Tensor(TensorRef {
                    storage: storage.clone(),
                    offset: offset.as_usize("a storage offset")?,
                    size,
                    stride,
                }))
            }
            _ => Err("_rebuild_tensor_v2 with unexpected arguments".to_owned()),
        },
        Global::RebuildParameter => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err("_rebuild_parameter without a tensor".to_owned()),
        },
        Global::Storage(_) => Err("a storage type called directly".to_owned()),
    }
}

/// The `name → tensor` entries of a checkpoint's result (a state dict, or a
/// dict holding one under `state_dict`, as Lightning writes).
fn tensor_entries(root: Value) -> PResult<Vec<(String, TensorRef)>> {
    let Value::Dict(items) = root else {
        return Err(format!(
            "the checkpoint holds {} instead of a state dict",
            root.describe()
        ));
    };
    let nested = items.iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(k), Value::Dict(_)) if k == "state_dict" => Some(v.clone()),
        _ => None,
    });
    if let Some(inner) = nested {
        return tensor_entries(inner);
    }
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        match (k, v) {
            (Value::Str(name), Value::Tensor(t)) => out.push((name, t)),
            (k, v) => tracing::debug!(
                "checkpoint entry {:?} ({}) is not a tensor; skipped",
                k,
                v.describe()
            ),
        }
    }
    Ok(out)
}

/// Runs a checkpoint's `data.pkl` and returns its `name → tensor` references.
pub(super) fn state_dict_tensors(pickle: &[u8]) -> PResult<Vec<(String, TensorRef)>> {
    tensor_entries(Machine::new(pickle).run()?)
}
