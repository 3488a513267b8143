//! PyTorch `.pth` / `.bin` files (`torch.save`), read safely: the ZIP container of PyTorch ≥ 1.6
//! and the legacy (pre-1.6) one, their pickle parsed by the `pytorch-reader` crate (burn's; it
//! builds values and never runs code), tensors of any dtype, strided and offset views gathered.
//! On top of it, the policy of a weights file: every Python global the pickle names must be one a
//! checkpoint holds (tensors, `OrderedDict`, the `argparse.Namespace` of `main_pretrain.py`'s
//! `args`, numpy scalars), any other is refused naming it; the checkpoint wrapper (`model`,
//! `state_dict`) and DDP's `module.` prefix are taken off; no tensor may declare more bytes than
//! the file holds.
//!
//! The result is the same tensors as an in-memory safetensors file (their dtypes and bytes kept),
//! so every reader of weights takes `.pth` files through [`crate::weights::TensorFile::open`].
//!
//! PyTorch counterpart: `torch.load(path, map_location="cpu", weights_only=True)` followed by
//! `checkpoint["model"]` as the official `main_finetune.py` does, and DDP's
//! `model_without_ddp` naming.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use pytorch_reader::{DType, PickleValue, PytorchReader};
use safetensors::tensor::TensorView;
use safetensors::Dtype as StDtype;

use crate::error::MaeError;

/// Python globals a weights file may name: what `torch.save` of a state dict or of an official
/// checkpoint (`model`, `optimizer`, `epoch`, `scaler`, `args`) writes.
const ALLOWED_GLOBALS: &[&str] = &[
    "torch.Tensor",
    "torch.Size",
    "torch.device",
    "argparse.Namespace",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
];

/// Wrapper keys under which checkpoints keep their state dict, in the order they are tried.
const WRAPPERS: &[&str] = &["model", "state_dict", "model_state_dict", "module"];

/// Metadata key of the in-memory safetensors: the wrapper key the tensors came from.
pub const PTH_WRAPPER_KEY: &str = "pth_wrapper";
/// Metadata key: the prefix taken off every name (`module.` of DDP).
pub const PTH_PREFIX_KEY: &str = "pth_prefix";
/// Metadata key: which container the file was (`zip`, `legacy`, `tar`).
pub const PTH_FORMAT_KEY: &str = "pth_format";

/// True when the first bytes of a file are not a safetensors header but could be `torch.save`'s:
/// a ZIP archive, a pickle (legacy format), or a tar (the oldest format).
pub fn looks_like_pth(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04")
        || head.first() == Some(&0x80)
        || head.get(257..262) == Some(b"ustar".as_slice())
}

/// Reads a `.pth` / `.bin` file into the bytes of a safetensors file holding its state dict:
/// names without wrapper or `module.` prefix, each tensor's dtype, shape and values as in the
/// file, and the [`PTH_WRAPPER_KEY`] / [`PTH_PREFIX_KEY`] / [`PTH_FORMAT_KEY`] metadata.
pub fn pth_to_safetensors(path: &Path) -> Result<Vec<u8>, MaeError> {
    let bad = |message: String| MaeError::Format {
        path: path.to_path_buf(),
        message,
    };
    if cfg!(target_endian = "big") {
        return Err(bad(
            "PyTorch files are read on little-endian machines only".into()
        ));
    }
    let file_len = fs::metadata(path).map_err(|e| MaeError::io(path, e))?.len();
    let tree = PytorchReader::read_pickle_data(path, None)
        .map_err(|e| bad(format!("not a readable PyTorch file: {e}")))?;
    if let Some(name) = unknown_global(&tree) {
        return Err(bad(format!(
            "it names the Python global `{name}`, which a weights file has no use for; refused \
             (nothing in it was run)"
        )));
    }
    let wrapper = choose_wrapper(&tree);
    let reader = match wrapper {
        Some(key) => PytorchReader::with_top_level_key(path, key),
        None => PytorchReader::new(path),
    }
    .map_err(|e| bad(format!("not a readable PyTorch file: {e}")))?;
    let format = format!("{:?}", reader.metadata().format_type).to_ascii_lowercase();
    let mut tensors: Vec<_> = reader.into_tensors().into_iter().collect();
    if tensors.is_empty() {
        return Err(bad("a PyTorch file without tensors".into()));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let prefix = "module.";
    let ddp = tensors.iter().all(|(n, _)| n.starts_with(prefix));
    let mut named = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if t.byte_len() as u64 > file_len {
            return Err(bad(format!(
                "tensor `{name}` declares {} bytes ({:?} of shape {:?}), more than the whole file \
                 holds ({file_len})",
                t.byte_len(),
                t.dtype(),
                t.shape()
            )));
        }
        let bytes = t.read().map_err(|e| bad(e.to_string()))?;
        let name = if ddp {
            name[prefix.len()..].to_string()
        } else {
            name
        };
        named.push((name, st_dtype(t.dtype()), t.shape().to_vec(), bytes));
    }
    let mut meta = HashMap::from([(PTH_FORMAT_KEY.to_string(), format)]);
    if let Some(w) = wrapper {
        meta.insert(PTH_WRAPPER_KEY.to_string(), w.to_string());
    }
    if ddp {
        meta.insert(PTH_PREFIX_KEY.to_string(), prefix.to_string());
    }
    let views = named
        .iter()
        .map(|(n, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| bad(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    safetensors::serialize(views, &Some(meta)).map_err(|e| bad(e.to_string()))
}

/// The first Python type in `tree` that is not in [`ALLOWED_GLOBALS`].
fn unknown_global(tree: &PickleValue) -> Option<&str> {
    match tree {
        PickleValue::Unsupported(name) => {
            let allowed = ALLOWED_GLOBALS.contains(&name.as_str()) || is_torch_dtype(name);
            (!allowed).then_some(name.as_str())
        }
        PickleValue::List(items) => items.iter().find_map(unknown_global),
        PickleValue::Dict(map) => {
            // in key order, so that the error names the same global every time
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            keys.into_iter().find_map(|k| unknown_global(&map[k]))
        }
        _ => None,
    }
}

/// `torch.float32`, `torch.bfloat16`, …: the dtype objects an optimizer state may hold.
fn is_torch_dtype(name: &str) -> bool {
    name.strip_prefix("torch.").is_some_and(|d| {
        [
            "float", "half", "bfloat", "double", "int", "uint", "long", "bool", "complex",
        ]
        .iter()
        .any(|p| d.starts_with(p))
    })
}

/// The wrapper key holding the state dict: the first of [`WRAPPERS`] whose value is a dict with
/// a tensor in it; none when the file is a state dict itself.
fn choose_wrapper(tree: &PickleValue) -> Option<&'static str> {
    let PickleValue::Dict(root) = tree else {
        return None;
    };
    WRAPPERS.iter().copied().find(|key| {
        matches!(root.get(*key), Some(PickleValue::Dict(d))
            if d.values().any(|v| matches!(v, PickleValue::Unsupported(t) if t == "torch.Tensor")))
    })
}

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F64 => StDtype::F64,
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::I64 => StDtype::I64,
        DType::I32 => StDtype::I32,
        DType::I16 => StDtype::I16,
        DType::I8 => StDtype::I8,
        DType::U64 => StDtype::U64,
        DType::U32 => StDtype::U32,
        DType::U16 => StDtype::U16,
        DType::U8 => StDtype::U8,
        DType::Bool => StDtype::BOOL,
    }
}

/// Writes f32 tensors as `torch.save` does (the ZIP format of PyTorch ≥ 1.6, protocol-2 pickle,
/// one stored entry per tensor, 64-byte aligned): a state dict (`OrderedDict` of contiguous f32
/// tensors) under `wrapper` when given (`{'model': state_dict}`, the official checkpoints'
/// layout), as the file itself otherwise. `torch.load(path, weights_only=True)` reads it.
/// Written through a synced temporary file and a rename, as every weights file is.
pub fn write_pth(
    path: &Path,
    tensors: &[crate::weights::NamedTensor],
    wrapper: Option<&str>,
) -> Result<(), MaeError> {
    let bytes = pth_bytes(path, tensors, wrapper)?;
    crate::weights::write_atomic(path, &bytes)
}

/// The bytes [`write_pth`] writes; `path` names the file in errors and gives the archive's
/// folder name (its stem, as `torch.save` does).
pub fn pth_bytes(
    path: &Path,
    tensors: &[crate::weights::NamedTensor],
    wrapper: Option<&str>,
) -> Result<Vec<u8>, MaeError> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let bad = |message: String| MaeError::Format {
        path: path.to_path_buf(),
        message,
    };
    let archive = path
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "archive".into());
    for t in tensors {
        let n = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if n != Some(t.data.len()) {
            return Err(bad(format!(
                "tensor `{}`: shape {:?} does not hold {} values",
                t.name,
                t.shape,
                t.data.len()
            )));
        }
    }
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(tensors.iter().map(|t| t.data.len() as u64 * 4).sum::<u64>() >= u32::MAX as u64)
        .with_alignment(64);
    let mut put = |name: &str, bytes: &[u8]| -> Result<(), MaeError> {
        zip.start_file(format!("{archive}/{name}"), stored)
            .and_then(|()| zip.write_all(bytes).map_err(Into::into))
            .map_err(|e| bad(format!("writing {name}: {e}")))
    };
    put("data.pkl", &state_dict_pickle(tensors, wrapper))?;
    put("byteorder", b"little")?;
    for (i, t) in tensors.iter().enumerate() {
        let data: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        put(&format!("data/{i}"), &data)?;
    }
    put("version", b"3\n")?;
    let cursor = zip.finish().map_err(|e| bad(e.to_string()))?;
    Ok(cursor.into_inner())
}

/// The pickle of `torch.save(state_dict)`: `OrderedDict` entries rebuilt by
/// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())` with the
/// storages as persistent ids `('storage', torch.FloatStorage, key, 'cpu', numel)`.
fn state_dict_pickle(tensors: &[crate::weights::NamedTensor], wrapper: Option<&str>) -> Vec<u8> {
    let mut p = PickleWriter(vec![0x80, 2]);
    if let Some(w) = wrapper {
        p.0.push(b'}'); // EMPTY_DICT
        p.unicode(w);
    }
    p.global("collections", "OrderedDict");
    p.0.extend([b')', b'R']); // EMPTY_TUPLE REDUCE
    p.0.push(b'('); // MARK
    for (i, t) in tensors.iter().enumerate() {
        p.unicode(&t.name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.push(b'(');
        // the storage, as a persistent id
        p.0.push(b'(');
        p.unicode("storage");
        p.global("torch", "FloatStorage");
        p.unicode(&i.to_string());
        p.unicode("cpu");
        p.int(t.data.len() as u64);
        p.0.extend([b't', b'Q']); // TUPLE BINPERSID
        p.int(0); // storage offset
        p.tuple(&t.shape);
        let mut stride = vec![1u64; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1].saturating_mul(t.shape[d + 1] as u64);
        }
        p.tuple_u64(&stride);
        p.0.push(0x89); // NEWFALSE: requires_grad
        p.global("collections", "OrderedDict");
        p.0.extend([b')', b'R']);
        p.0.extend([b't', b'R']); // the arguments, the call
    }
    p.0.push(b'u'); // SETITEMS
    if wrapper.is_some() {
        p.0.push(b's'); // SETITEM
    }
    p.0.push(b'.');
    p.0
}

/// Just the pickle opcodes [`state_dict_pickle`] needs (protocol 2).
struct PickleWriter(Vec<u8>);

impl PickleWriter {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        for part in [module, name] {
            self.0.extend(part.as_bytes());
            self.0.push(b'\n');
        }
    }

    fn unicode(&mut self, s: &str) {
        self.0.push(b'X'); // BINUNICODE
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
    }

    fn int(&mut self, v: u64) {
        match v {
            0..=0xff => self.0.extend([b'K', v as u8]),
            0x100..=0xffff => {
                self.0.push(b'M');
                self.0.extend((v as u16).to_le_bytes());
            }
            0x1_0000..=0x7fff_ffff => {
                self.0.push(b'J');
                self.0.extend((v as u32).to_le_bytes());
            }
            _ => {
                // LONG1: 8 little-endian bytes, a ninth 0 keeps it positive
                self.0.extend([0x8a, 9]);
                self.0.extend(v.to_le_bytes());
                self.0.push(0);
            }
        }
    }

    fn tuple(&mut self, items: &[usize]) {
        let items: Vec<u64> = items.iter().map(|&d| d as u64).collect();
        self.tuple_u64(&items);
    }

    fn tuple_u64(&mut self, items: &[u64]) {
        self.0.push(b'(');
        for &v in items {
            self.int(v);
        }
        self.0.push(b't');
    }
}
