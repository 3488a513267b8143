//! Weights in safetensors under the official `models_mae.py` state_dict names.
//!
//! PyTorch counterpart: `model.state_dict()` / `load_state_dict(strict=True)` of
//! `MaskedAutoencoderViT`, and the encoder-only `mae_pretrain_vit_*.pth` files (the same names
//! without the decoder).
//!
//! The parameter paths come from the models' [`TensorCollection`] walk, whose field names are
//! the official names. [`official_shape`] is the one table of where our storage shape differs
//! from the official one (same values, same order, another shape): the conv-shaped patch
//! projection, the `[1, 1, D]` tokens and the `[1, 1 + L, D]` position embeddings. Nothing else in
//! the workspace spells checkpoint key names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorName,
    ViewTensorRef,
};
use dfdx::prelude::*;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};

use crate::error::MaeError;
use crate::model::{Encoder, Mae};
use crate::patch::PatchGeometry;
use crate::preset::{MaePreset, Preset};

/// Where an official tensor's shape differs from how we store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OfficialShape {
    /// Stored `[D, C·p·p]`, official conv weight `[D, C, p, p]`.
    ConvWeight,
    /// Stored `[D]`, official `[1, 1, D]`.
    Token,
    /// Stored `[1 + L, D]`, official `[1, 1 + L, D]`.
    PosEmbed,
}

/// The table: official names whose shape differs from ours.
const SHAPE_TABLE: &[(&str, OfficialShape)] = &[
    ("patch_embed.proj.weight", OfficialShape::ConvWeight),
    ("cls_token", OfficialShape::Token),
    ("mask_token", OfficialShape::Token),
    ("pos_embed", OfficialShape::PosEmbed),
    ("decoder_pos_embed", OfficialShape::PosEmbed),
];

/// Decoder parameter names (and prefixes) of the official MAE: what an encoder-only load skips.
const DECODER_NAMES: &[&str] = &[
    "decoder_embed.",
    "mask_token",
    "decoder_pos_embed",
    "decoder_blocks.",
    "decoder_norm.",
    "decoder_pred.",
];

/// The official shape of the tensor we store under `name` with shape `ours`.
pub fn official_shape(name: &str, ours: &[usize], geometry: &PatchGeometry) -> Vec<usize> {
    match SHAPE_TABLE.iter().find(|(n, _)| *n == name).map(|e| e.1) {
        Some(OfficialShape::ConvWeight) => vec![
            ours[0],
            geometry.in_chans,
            geometry.patch_size,
            geometry.patch_size,
        ],
        Some(OfficialShape::Token) => [&[1, 1][..], ours].concat(),
        Some(OfficialShape::PosEmbed) => [&[1][..], ours].concat(),
        None => ours.to_vec(),
    }
}

/// True for names that belong to the MAE decoder.
pub fn is_decoder_name(name: &str) -> bool {
    DECODER_NAMES.iter().any(|p| name.starts_with(p))
}

/// One named tensor in official layout, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The official name.
    pub name: String,
    /// The official shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
    /// Whether the optimizer updates it (false for the fixed position embeddings).
    pub trainable: bool,
}

struct Collect<'g, D: Storage<f32>> {
    geometry: PatchGeometry,
    grads: Option<&'g Gradients<f32, D>>,
    out: Vec<NamedTensor>,
}

impl<D: Device<f32>> TensorVisitor<f32, D> for Collect<'_, D> {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = D::Err;
    type E2 = f32;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, f32, D>,
        (t, name): (&Tensor<S, f32, D>, String),
    ) -> Result<Option<Tensor<S, f32, D>>, Self::Err> {
        let data = match self.grads {
            None => t.as_vec(),
            Some(_) if !opts.do_gradient_update => return Ok(None),
            Some(grads) => grads.get(t).as_vec(),
        };
        self.out.push(NamedTensor {
            shape: official_shape(&name, t.shape().concrete().as_ref(), &self.geometry),
            name,
            data,
            trainable: opts.do_gradient_update,
        });
        Ok(None)
    }
}

fn collect<M: TensorCollection<f32, D>, D: Device<f32>>(
    module: &M,
    geometry: PatchGeometry,
    grads: Option<&Gradients<f32, D>>,
) -> Result<Vec<NamedTensor>, MaeError> {
    let mut visitor = Collect {
        geometry,
        grads,
        out: Vec::new(),
    };
    M::iter_tensors(&mut RecursiveWalker {
        m: (module, String::new()),
        f: &mut visitor,
    })
    .map_err(MaeError::device)?;
    Ok(visitor.out)
}

/// Every tensor of any module built from our layers (parameters and fixed buffers), official
/// names and shapes for a model of `geometry`.
pub fn collect_tensors<M: TensorCollection<f32, D>, D: Device<f32>>(
    module: &M,
    geometry: PatchGeometry,
) -> Result<Vec<NamedTensor>, MaeError> {
    collect(module, geometry, None)
}

/// The gradient of every trainable parameter of any module, official names and shapes.
pub fn collect_gradients<M: TensorCollection<f32, D>, D: Device<f32>>(
    module: &M,
    geometry: PatchGeometry,
    grads: &Gradients<f32, D>,
) -> Result<Vec<NamedTensor>, MaeError> {
    collect(module, geometry, Some(grads))
}

struct Assign<'a> {
    values: &'a HashMap<String, Vec<f32>>,
    assigned: usize,
}

impl<D: Device<f32>> TensorVisitor<f32, D> for Assign<'_> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = MaeError;
    type E2 = f32;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        _opts: TensorOptions<S, f32, D>,
        (t, name): (&mut Tensor<S, f32, D>, String),
    ) -> Result<Option<Tensor<S, f32, D>>, MaeError> {
        if let Some(v) = self.values.get(&name) {
            if v.len() != t.shape().num_elements() {
                return Err(MaeError::InputShape {
                    what: "tensor values",
                    expected: format!("{} values for `{name}`", t.shape().num_elements()),
                    got: v.len().to_string(),
                });
            }
            t.copy_from(v);
            self.assigned += 1;
        }
        Ok(None)
    }
}

/// Copies `values` (by official name, row-major) into the module's tensors of those names;
/// tensors not named keep their values. Returns how many were assigned. The caller checks the
/// values first: a length mismatch stops the walk part-way.
pub fn assign_tensors<M: TensorCollection<f32, D>, D: Device<f32>>(
    module: &mut M,
    values: &HashMap<String, Vec<f32>>,
) -> Result<usize, MaeError> {
    let mut visitor = Assign {
        values,
        assigned: 0,
    };
    M::iter_tensors(&mut RecursiveWalker {
        m: (module, String::new()),
        f: &mut visitor,
    })?;
    Ok(visitor.assigned)
}

/// Every tensor of the model (parameters and fixed buffers), official names and shapes.
pub fn named_tensors<P: MaePreset, D: Device<f32>>(
    model: &Mae<P, f32, D>,
) -> Result<Vec<NamedTensor>, MaeError> {
    collect(model, PatchGeometry::of::<P>(), None)
}

/// The gradient of every trainable parameter, official names and shapes. Every trainable
/// parameter must have a gradient in `grads` (as after a backward from `model.alloc_grads()`).
pub fn named_gradients<P: MaePreset, D: Device<f32>>(
    model: &Mae<P, f32, D>,
    grads: &Gradients<f32, D>,
) -> Result<Vec<NamedTensor>, MaeError> {
    collect(model, PatchGeometry::of::<P>(), Some(grads))
}

/// A tensor read from a file: shape and f32 values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// The shape in the file.
    pub shape: Vec<usize>,
    /// The values.
    pub data: Vec<f32>,
}

/// Metadata key of the content checksum that every file written by [`write_safetensors`]
/// carries: `xxh3:` and 16 hex digits of the XXH3-64 of every tensor (name, dtype, shape, bytes,
/// in name order) and every other metadata entry (in key order). [`TensorFile`] verifies it when
/// present, so a flipped byte in a checkpoint is an error naming the file instead of a silently
/// different model. Files from elsewhere (official, timm, Hugging Face) have none and load as
/// they are.
pub const CHECKSUM_KEY: &str = "checksum";

/// Metadata key naming the command that wrote a file (`mae init`, `mae pretrain`, ...): how a
/// command recognizes a previous output of its own kind before replacing it.
pub const WRITTEN_BY_KEY: &str = "written_by";

/// Reads a whole safetensors file: `(name → (shape, f32 values))` plus its metadata.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    /// Reads `path` into memory and checks it: a valid safetensors file (offsets, sizes, header)
    /// whose content checksum, if it has one, matches. `path` must be a regular file (not a
    /// device, a FIFO or a directory).
    ///
    /// A PyTorch file (`.pth`, `.bin`: what `torch.save` writes) is read as [`crate::pth`] says
    /// and held as the safetensors file of its state dict.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MaeError> {
        let path = path.as_ref().to_path_buf();
        let head = read_head(&path, 512)?;
        // safetensors: an 8-byte header length, then the JSON header
        if head.get(8) != Some(&b'{') && crate::pth::looks_like_pth(&head) {
            let converted = crate::pth::pth_to_safetensors(&path)?;
            return Self::from_bytes(path, converted);
        }
        let bytes = read_regular_file(&path)?;
        Self::from_bytes(path, bytes)
    }

    /// A file already in memory, checked as [`TensorFile::open`] checks; `path` names it in
    /// errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, MaeError> {
        let file = TensorFile {
            path: path.into(),
            bytes,
        };
        let st = file.parse()?;
        let meta = file.metadata()?;
        if let Some(expected) = meta.get(CHECKSUM_KEY).filter(|c| c.starts_with("xxh3:")) {
            let mut tensors = st.tensors();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            let actual = content_checksum(
                tensors
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())),
                &meta,
            );
            if *expected != actual {
                return Err(MaeError::Checksum {
                    path: file.path.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self) -> Result<SafeTensors<'_>, MaeError> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| MaeError::Format {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// The `__metadata__` map of the header.
    pub fn metadata(&self) -> Result<HashMap<String, String>, MaeError> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).map_err(|e| MaeError::Format {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// Names of all tensors.
    pub fn names(&self) -> Result<Vec<String>, MaeError> {
        let mut names: Vec<String> = self.parse()?.names().into_iter().cloned().collect();
        names.sort();
        Ok(names)
    }

    /// The shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Result<Option<Vec<usize>>, MaeError> {
        Ok(self.parse()?.tensor(name).ok().map(|t| t.shape().to_vec()))
    }

    /// The values of `name` converted to f32 (F32, F16, BF16, F64 are read; I64/I32 too, for index
    /// tensors in fixtures), with its shape.
    pub fn read(&self, name: &str) -> Result<Option<HostTensor>, MaeError> {
        let st = self.parse()?;
        let Ok(view) = st.tensor(name) else {
            return Ok(None);
        };
        let data = to_f32(&view).ok_or_else(|| MaeError::Dtype {
            path: self.path.clone(),
            key: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        Ok(Some(HostTensor {
            shape: view.shape().to_vec(),
            data,
        }))
    }

    /// The values of `name` as integers, with its name and shape: I64 and I32 exactly; a float tensor
    /// (F32, F16, BF16, F64: how older files stored labels) when every value is a whole number
    /// of at most 2^24, else a [`MaeError::NotIntegers`] error.
    pub fn read_i64(&self, name: &str) -> Result<Option<IndexTensor>, MaeError> {
        let st = self.parse()?;
        let Ok(view) = st.tensor(name) else {
            return Ok(None);
        };
        let b = view.data();
        let data = match view.dtype() {
            StDtype::I64 => Some(
                b.chunks_exact(8)
                    .map(|c| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        i64::from_le_bytes(a)
                    })
                    .collect(),
            ),
            StDtype::I32 => Some(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
            ),
            _ => {
                let v = to_f32(&view).ok_or_else(|| MaeError::Dtype {
                    path: self.path.clone(),
                    key: name.to_string(),
                    dtype: format!("{:?}", view.dtype()),
                })?;
                const EXACT: f32 = (1u32 << 24) as f32;
                v.iter()
                    .map(|&x| (x.fract() == 0.0 && x.abs() <= EXACT).then_some(x as i64))
                    .collect()
            }
        };
        let data = data.ok_or_else(|| MaeError::NotIntegers {
            path: self.path.clone(),
            key: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        Ok(Some(IndexTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            data,
        }))
    }
}

fn to_f32(view: &TensorView<'_>) -> Option<Vec<f32>> {
    let b = view.data();
    let out = match view.dtype() {
        StDtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StDtype::F64 => b
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        StDtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StDtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StDtype::I64 => b
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                i64::from_le_bytes(a) as f32
            })
            .collect(),
        StDtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        _ => return None,
    };
    Some(out)
}

/// The first `n` bytes (fewer if the file is shorter) of a file that must be a regular file.
fn read_head(path: &Path, n: u64) -> Result<Vec<u8>, MaeError> {
    use std::io::Read;
    let meta = fs::metadata(path).map_err(|e| MaeError::io(path, e))?;
    if !meta.is_file() {
        return Err(MaeError::io(path, not_a_regular_file()));
    }
    let mut head = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(n).read_to_end(&mut head))
        .map_err(|e| MaeError::io(path, e))?;
    Ok(head)
}

/// Reads a file that must be a regular file (a device such as `/dev/zero` would be read forever).
fn read_regular_file(path: &Path) -> Result<Vec<u8>, MaeError> {
    let meta = fs::metadata(path).map_err(|e| MaeError::io(path, e))?;
    if !meta.is_file() {
        return Err(MaeError::io(path, not_a_regular_file()));
    }
    fs::read(path).map_err(|e| MaeError::io(path, e))
}

fn not_a_regular_file() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")
}

/// The [`CHECKSUM_KEY`] value of tensors (in name order) and metadata (the checksum entry
/// itself left out).
fn content_checksum<'a>(
    tensors: impl Iterator<Item = (&'a str, StDtype, &'a [usize], &'a [u8])>,
    metadata: &HashMap<String, String>,
) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut put = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for (name, dtype, shape, data) in tensors {
        put(name.as_bytes());
        put(format!("{dtype:?}").as_bytes());
        let dims: Vec<u8> = shape
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        put(&dims);
        put(data);
    }
    let mut keys: Vec<&String> = metadata.keys().filter(|k| *k != CHECKSUM_KEY).collect();
    keys.sort();
    for k in keys {
        put(k.as_bytes());
        put(metadata[k].as_bytes());
    }
    format!("xxh3:{:016x}", h.digest())
}

/// The [`WRITTEN_BY_KEY`] of a safetensors file, read from its header alone; `None` when the
/// file is missing, not a regular file, not safetensors, or has no such entry.
pub fn written_by(path: &Path) -> Option<String> {
    use std::io::Read;
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut f = fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 16 << 20 || n + 8 > meta.len() {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&header).ok()?;
    Some(
        value
            .get("__metadata__")?
            .get(WRITTEN_BY_KEY)?
            .as_str()?
            .to_string(),
    )
}

/// What to do with tensors of the file that the module does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    /// Any extra tensor is an error (strict, as `load_state_dict(strict=True)`).
    Error,
    /// The decoder's tensors are skipped (encoder from a full MAE file), and so is a
    /// classifier's `head.*` (the encoder of a timm / cls-token classifier); others are an error.
    SkipDecoder,
}

struct Load<'f> {
    file: &'f TensorFile,
    prefix: &'f str,
    geometry: PatchGeometry,
    preset: Preset,
    used: HashSet<String>,
    /// False: only check keys, shapes and values; true: copy them into the module.
    write: bool,
}

impl<D: Device<f32>> TensorVisitor<f32, D> for Load<'_> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = MaeError;
    type E2 = f32;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        _opts: TensorOptions<S, f32, D>,
        (t, name): (&mut Tensor<S, f32, D>, String),
    ) -> Result<Option<Tensor<S, f32, D>>, MaeError> {
        let key = format!("{}{name}", self.prefix);
        let path = self.file.path().to_path_buf();
        let expected = official_shape(&name, t.shape().concrete().as_ref(), &self.geometry);
        let Some(HostTensor { shape, data }) = self.file.read(&key)? else {
            return Err(MaeError::MissingKey {
                path,
                key,
                expected,
            });
        };
        check_tensor(&path, &key, &shape, &expected, &data, self.preset)?;
        if self.write {
            t.copy_from(&data);
        }
        self.used.insert(key);
        Ok(None)
    }
}

/// The checks every loaded tensor passes: the expected (official) shape and finite values.
pub(crate) fn check_tensor(
    path: &Path,
    key: &str,
    got: &[usize],
    expected: &[usize],
    data: &[f32],
    preset: Preset,
) -> Result<(), MaeError> {
    if got != expected {
        return Err(MaeError::ShapeMismatch {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected: expected.to_vec(),
            got: got.to_vec(),
            preset,
        });
    }
    if data.iter().any(|v| !v.is_finite()) {
        return Err(MaeError::NonFinite {
            path: path.to_path_buf(),
            key: key.to_string(),
        });
    }
    Ok(())
}

fn load_into<M: TensorCollection<f32, D>, D: Device<f32>>(
    module: &mut M,
    file: &TensorFile,
    prefix: &str,
    geometry: PatchGeometry,
    preset: Preset,
    extra: Extra,
) -> Result<(), MaeError> {
    // Check every key, shape and value first, then copy: a failed load leaves the module
    // untouched.
    let mut visitor = Load {
        file,
        prefix,
        geometry,
        preset,
        used: HashSet::new(),
        write: false,
    };
    M::iter_tensors(&mut RecursiveWalker {
        m: (&mut *module, String::new()),
        f: &mut visitor,
    })?;
    for key in file.names()? {
        let Some(name) = key.strip_prefix(prefix) else {
            continue;
        };
        let skipped = is_decoder_name(name) || name.starts_with("head.");
        if visitor.used.contains(&key) || (extra == Extra::SkipDecoder && skipped) {
            continue;
        }
        return Err(MaeError::UnexpectedKey {
            path: file.path().to_path_buf(),
            shape: file.shape(&key)?.unwrap_or_default(),
            key,
            preset,
        });
    }
    visitor.write = true;
    M::iter_tensors(&mut RecursiveWalker {
        m: (module, String::new()),
        f: &mut visitor,
    })?;
    Ok(())
}

impl<P: MaePreset, D: Device<f32>> Mae<P, f32, D> {
    /// Loads every tensor of the model from `file` under the official names, each prefixed by
    /// `prefix` (`""` for our own files, `"model."` for the parity fixtures). Strict: a missing
    /// key, an extra key under the prefix, a shape that does not fit preset `P`, an unreadable
    /// dtype or a non-finite value is an error, and then the model is left as it was.
    pub fn load_from(&mut self, file: &TensorFile, prefix: &str) -> Result<(), MaeError> {
        load_into(
            self,
            file,
            prefix,
            PatchGeometry::of::<P>(),
            P::PRESET,
            Extra::Error,
        )
    }

    /// [`Mae::load_from`] a safetensors file by path, without prefix.
    pub fn load_safetensors(&mut self, path: impl AsRef<Path>) -> Result<(), MaeError> {
        self.load_from(&TensorFile::open(path)?, "")
    }

    /// Writes every tensor (official names and shapes, f32) to `path` with `metadata` plus
    /// `preset`. The file is written to a temporary name, synced, then renamed into place: a crash
    /// never leaves a half-written file under `path`.
    pub fn save_safetensors(
        &self,
        path: impl AsRef<Path>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), MaeError> {
        let mut meta = metadata.clone();
        meta.insert("preset".into(), P::PRESET.to_string());
        write_safetensors(path.as_ref(), &named_tensors(self)?, &meta)
    }
}

impl<P: MaePreset, D: Device<f32>> Encoder<P, f32, D> {
    /// Loads the encoder from an encoder-only file (the official `mae_pretrain_vit_*` kind),
    /// from a full MAE file, whose decoder tensors are skipped, or from a classifier with the
    /// final `norm` (timm's ViTs, the cls-token head), whose `head.*` is skipped. Otherwise as
    /// strict as [`Mae::load_from`].
    pub fn load_from(&mut self, file: &TensorFile, prefix: &str) -> Result<(), MaeError> {
        load_into(
            self,
            file,
            prefix,
            PatchGeometry::of::<P>(),
            P::PRESET,
            Extra::SkipDecoder,
        )
    }
}

/// Writes named f32 tensors as a safetensors file, atomically (temporary file, fsync, rename),
/// with a content checksum ([`CHECKSUM_KEY`]) added to `metadata`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<(), MaeError> {
    write_atomic(path, &safetensors_bytes(path, tensors, metadata)?)
}

/// The bytes [`write_safetensors`] writes; `path` names the file in errors.
pub fn safetensors_bytes(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, MaeError> {
    safetensors_bytes_with_indices(path, tensors, &[], metadata)
}

/// Named integer tensors (labels, indices), written as safetensors `I64` beside f32 ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexTensor {
    /// The name.
    pub name: String,
    /// The shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<i64>,
}

/// [`write_safetensors`] with integer tensors too (as `I64`, what `torch.save` of labels and
/// `numpy.int64` hold).
pub fn write_safetensors_with_indices(
    path: &Path,
    tensors: &[NamedTensor],
    indices: &[IndexTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<(), MaeError> {
    write_atomic(
        path,
        &safetensors_bytes_with_indices(path, tensors, indices, metadata)?,
    )
}

/// The bytes [`write_safetensors_with_indices`] writes; `path` names the file in errors.
pub fn safetensors_bytes_with_indices(
    path: &Path,
    tensors: &[NamedTensor],
    indices: &[IndexTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, MaeError> {
    let mut entries: Vec<(&str, StDtype, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (t.name.as_str(), StDtype::F32, t.shape.as_slice(), bytes)
        })
        .collect();
    entries.extend(indices.iter().map(|t| {
        let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        (t.name.as_str(), StDtype::I64, t.shape.as_slice(), bytes)
    }));
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let views = entries
        .iter()
        .map(|(name, dtype, shape, b)| {
            TensorView::new(*dtype, shape.to_vec(), b)
                .map(|v| (name.to_string(), v))
                .map_err(|e| MaeError::Format {
                    path: path.to_path_buf(),
                    message: format!("tensor `{name}`: {e}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let checksum = content_checksum(
        entries
            .iter()
            .map(|(n, dtype, s, b)| (*n, *dtype, *s, b.as_slice())),
        &meta,
    );
    meta.insert(CHECKSUM_KEY.to_string(), checksum);
    safetensors::serialize(views, &Some(meta)).map_err(|e| MaeError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes `bytes` to `path` through a synced temporary file in the same directory. An existing
/// `path` that is not a regular file (a device, a FIFO, a directory) is an error and stays as it
/// is: renaming over `/dev/null` would replace the device itself.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MaeError> {
    if let Ok(meta) = fs::metadata(path) {
        if !meta.is_file() {
            return Err(MaeError::io(path, not_a_regular_file()));
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "weights".into());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |e| MaeError::io(path, e);
    // `.NAME.XXXXXX.tmp`: removed when dropped on any error; named so that a run can tell the
    // leftover of a killed process as its own
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // make the rename durable; not all platforms can open directories
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Per-block parts: Hugging Face ViTMAE name → official name (after `layer.{i}.` /
/// `blocks.{i}.`). The fused `qkv` is built from `query`, `key`, `value` separately.
const HF_BLOCK_TABLE: &[(&str, &str)] = &[
    ("layernorm_before.weight", "norm1.weight"),
    ("layernorm_before.bias", "norm1.bias"),
    ("attention.output.dense.weight", "attn.proj.weight"),
    ("attention.output.dense.bias", "attn.proj.bias"),
    ("layernorm_after.weight", "norm2.weight"),
    ("layernorm_after.bias", "norm2.bias"),
    ("intermediate.dense.weight", "mlp.fc1.weight"),
    ("intermediate.dense.bias", "mlp.fc1.bias"),
    ("output.dense.weight", "mlp.fc2.weight"),
    ("output.dense.bias", "mlp.fc2.bias"),
];

/// Whole-model parts: Hugging Face name (without the optional `vit.` prefix) → official name.
const HF_TABLE: &[(&str, &str)] = &[
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    (
        "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.weight",
    ),
    (
        "embeddings.patch_embeddings.projection.bias",
        "patch_embed.proj.bias",
    ),
    ("layernorm.weight", "norm.weight"),
    ("layernorm.bias", "norm.bias"),
    ("decoder.mask_token", "mask_token"),
    ("decoder.decoder_pos_embed", "decoder_pos_embed"),
    ("decoder.decoder_embed.weight", "decoder_embed.weight"),
    ("decoder.decoder_embed.bias", "decoder_embed.bias"),
    ("decoder.decoder_norm.weight", "decoder_norm.weight"),
    ("decoder.decoder_norm.bias", "decoder_norm.bias"),
    ("decoder.decoder_pred.weight", "decoder_pred.weight"),
    ("decoder.decoder_pred.bias", "decoder_pred.bias"),
];

/// True when `file` uses Hugging Face ViTMAE names.
pub fn is_hugging_face(file: &TensorFile) -> Result<bool, MaeError> {
    Ok(file
        .names()?
        .iter()
        .any(|n| n.ends_with("embeddings.cls_token") || n.contains("attention.attention.query")))
}

/// Converts a Hugging Face ViTMAE file (`ViTMAEForPreTraining` or `ViTMAEModel`) to official
/// names: the tables above, plus `query`/`key`/`value` stacked into `qkv` in that order. A tensor
/// the tables do not know is an error naming it.
pub fn hugging_face_to_official(file: &TensorFile) -> Result<Vec<NamedTensor>, MaeError> {
    let path = file.path().to_path_buf();
    let mut out: Vec<NamedTensor> = Vec::new();
    let mut qkv: BTreeMap<String, [Option<HostTensorData>; 3]> = BTreeMap::new();
    for key in file.names()? {
        let name = key.strip_prefix("vit.").unwrap_or(&key);
        let t = file.read(&key)?.ok_or_else(|| MaeError::MissingKey {
            path: path.clone(),
            key: key.clone(),
            expected: Vec::new(),
        })?;
        if let Some((_, official)) = HF_TABLE.iter().find(|(hf, _)| *hf == name) {
            out.push(NamedTensor {
                name: official.to_string(),
                shape: t.shape,
                data: t.data,
                trainable: true,
            });
            continue;
        }
        // encoder.layer.{i}.… or decoder.decoder_layers.{i}.…
        let (rest, prefix) = if let Some(r) = name.strip_prefix("encoder.layer.") {
            (r, "blocks")
        } else if let Some(r) = name.strip_prefix("decoder.decoder_layers.") {
            (r, "decoder_blocks")
        } else {
            return Err(unknown_hf(path, &key));
        };
        let (index, part) = rest.split_once('.').unwrap_or((rest, ""));
        if let Some((_, official)) = HF_BLOCK_TABLE.iter().find(|(hf, _)| *hf == part) {
            out.push(NamedTensor {
                name: format!("{prefix}.{index}.{official}"),
                shape: t.shape,
                data: t.data,
                trainable: true,
            });
        } else if let Some(qkv_part) = part.strip_prefix("attention.attention.") {
            let (which, kind) = qkv_part.split_once('.').unwrap_or((qkv_part, ""));
            let slot = match which {
                "query" => 0,
                "key" => 1,
                "value" => 2,
                _ => usize::MAX,
            };
            if slot == usize::MAX || !(kind == "weight" || kind == "bias") {
                return Err(unknown_hf(path, &key));
            }
            qkv.entry(format!("{prefix}.{index}.attn.qkv.{kind}"))
                .or_default()[slot] = Some((t.shape, t.data));
        } else {
            return Err(unknown_hf(path, &key));
        }
    }
    for (name, parts) in qkv {
        let [Some(q), Some(k), Some(v)] = parts else {
            return Err(MaeError::MissingKey {
                path: path.clone(),
                key: format!("query/key/value of {name}"),
                expected: Vec::new(),
            });
        };
        if q.0.is_empty() || q.0 != k.0 || q.0 != v.0 {
            return Err(MaeError::Format {
                path: path.clone(),
                message: format!(
                    "query/key/value of {name} have shapes {:?}, {:?}, {:?}; they must be one \
                     shape of at least one dimension",
                    q.0, k.0, v.0
                ),
            });
        }
        let mut shape = q.0.clone();
        shape[0] = shape[0].checked_mul(3).ok_or_else(|| MaeError::Format {
            path: path.clone(),
            message: format!("query of {name} has an impossible shape {:?}", q.0),
        })?;
        out.push(NamedTensor {
            name,
            shape,
            data: [q.1, k.1, v.1].concat(),
            trainable: true,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

type HostTensorData = (Vec<usize>, Vec<f32>);

fn unknown_hf(path: PathBuf, key: &str) -> MaeError {
    MaeError::Format {
        path,
        message: format!("tensor `{key}` is not a Hugging Face ViTMAE name this converter knows"),
    }
}

/// Converts official names to Hugging Face ViTMAE names, the inverse of
/// [`hugging_face_to_official`]: `qkv` split into `query`, `key`, `value`; the encoder under
/// `vit.` when `vit_prefix` (`ViTMAEForPreTraining`), bare for an encoder alone (`ViTMAEModel`,
/// `ViTModel`). A name the tables do not know is an error naming it.
pub fn official_to_hugging_face(
    path: &Path,
    tensors: &[NamedTensor],
    vit_prefix: bool,
) -> Result<Vec<NamedTensor>, MaeError> {
    let unknown = |name: &str| MaeError::Format {
        path: path.to_path_buf(),
        message: format!("tensor `{name}` has no Hugging Face ViTMAE name"),
    };
    let mut out = Vec::with_capacity(tensors.len() + 2 * tensors.len() / 12);
    let encoder_prefix = if vit_prefix { "vit." } else { "" };
    for t in tensors {
        let renamed = |name: String| NamedTensor { name, ..t.clone() };
        let under = |hf: &str| {
            if hf.starts_with("decoder.") {
                hf.to_string()
            } else {
                format!("{encoder_prefix}{hf}")
            }
        };
        if let Some((hf, _)) = HF_TABLE.iter().find(|(_, o)| *o == t.name) {
            out.push(renamed(under(hf)));
            continue;
        }
        let (rest, hf_prefix) = if let Some(r) = t.name.strip_prefix("blocks.") {
            (r, format!("{encoder_prefix}encoder.layer."))
        } else if let Some(r) = t.name.strip_prefix("decoder_blocks.") {
            (r, "decoder.decoder_layers.".to_string())
        } else {
            return Err(unknown(&t.name));
        };
        let (index, part) = rest.split_once('.').ok_or_else(|| unknown(&t.name))?;
        if let Some((hf, _)) = HF_BLOCK_TABLE.iter().find(|(_, o)| *o == part) {
            out.push(renamed(format!("{hf_prefix}{index}.{hf}")));
        } else if let Some(kind) = part.strip_prefix("attn.qkv.") {
            let rows = t.shape.first().copied().unwrap_or(0);
            if rows == 0 || rows % 3 != 0 {
                return Err(MaeError::Format {
                    path: path.to_path_buf(),
                    message: format!("`{}` of shape {:?} is not 3 stacked parts", t.name, t.shape),
                });
            }
            let third = t.data.len() / 3;
            for (i, which) in ["query", "key", "value"].iter().enumerate() {
                let mut shape = t.shape.clone();
                shape[0] = rows / 3;
                out.push(NamedTensor {
                    name: format!("{hf_prefix}{index}.attention.attention.{which}.{kind}"),
                    shape,
                    data: t.data[i * third..(i + 1) * third].to_vec(),
                    trainable: t.trainable,
                });
            }
        } else {
            return Err(unknown(&t.name));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
