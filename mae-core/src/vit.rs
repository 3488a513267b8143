//! The fine-tuning classifier: the pretrained ViT encoder, a pooling of its tokens and a linear
//! head.
//!
//! PyTorch counterpart: `models_vit.VisionTransformer` (timm's ViT with `qkv_bias=True`,
//! LayerNorm eps 1e-6, drop path) with either head of its `global_pool` flag ([`Pooling`]): the
//! default `global_pool=True`, where `fc_norm` normalizes the mean of the patch tokens (the final
//! `norm` removed), or `global_pool=False` (`--cls_token`), where the final `norm` is kept and the
//! cls token is classified; and the loading part of `main_finetune.py` (`interpolate_pos_embed`,
//! `load_state_dict(strict=False)` leaving `head` and `fc_norm` fresh, `trunc_normal_(head.weight,
//! std=2e-5)`). In fine-tuning the position embedding is a trained parameter.
//!
//! Parameter paths are the official ones (`patch_embed.proj.weight`, `cls_token`, `pos_embed`,
//! `blocks.{i}.…`, `fc_norm.*` or `norm.*`, `head.weight`, `head.bias`), which timm's ViT
//! (`global_pool='avg'` / `'token'`) shares. The head's class count is a runtime
//! value, so the head lives beside the [`TensorCollection`] (whose tensors need const shapes).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::prelude::*;
use rand_distr::{Distribution, StandardNormal};

use crate::device::{MaeDevice, MaeDtype};
use crate::error::MaeError;
use crate::host::{dev_err, host_tensor};
use crate::layers::{Blocks, BranchScales, LayerNorm};
use crate::model::{
    prepend_cls, project_patches, sincos_init, token_init, EncDim, PatchEmbed, ScaledLoss,
};
use crate::patch::PatchGeometry;
use crate::pos_embed::interpolate_pos_embed;
use crate::preset::{MaePreset, TransformerDims};
use crate::weights::{
    assign_tensors, check_tensor, collect_gradients, collect_tensors, is_decoder_name,
    write_safetensors, NamedTensor, TensorFile,
};

/// The ViT of preset `P` as fine-tuning uses it (everything but the head).
#[derive(Debug, Clone)]
pub struct VisionTransformer<P: MaePreset, E: Dtype, D: Storage<E>> {
    /// `patch_embed.proj`.
    pub patch_embed: PatchEmbed<P::PatchDim, EncDim<P>, E, D>,
    /// `cls_token`, stored `[D]`.
    pub cls_token: Tensor<(EncDim<P>,), E, D>,
    /// `pos_embed`, stored `[1 + L, D]`; trained here.
    pub pos_embed: Tensor<(P::Tokens, EncDim<P>), E, D>,
    /// `blocks.{i}`.
    pub blocks: Blocks<P::Encoder, E, D>,
    /// The LayerNorm before the head: `fc_norm` over the pooled patch tokens
    /// ([`Pooling::GlobalPool`]), or the final `norm`, of which the cls token is taken
    /// ([`Pooling::ClsToken`]). Walked as `fc_norm` whichever it is; [`Classifier::named_tensors`]
    /// names it as the pooling does.
    pub fc_norm: LayerNorm<EncDim<P>, E, D>,
}

impl<P: MaePreset, E: MaeDtype, D: Device<E>> TensorCollection<E, D>
    for VisionTransformer<P, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = VisionTransformer<P, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("patch_embed", |s| &s.patch_embed, |s| &mut s.patch_embed),
                Self::tensor(
                    "cls_token",
                    |s| &s.cls_token,
                    |s| &mut s.cls_token,
                    TensorOptions::reset_with(token_init),
                ),
                Self::tensor(
                    "pos_embed",
                    |s| &s.pos_embed,
                    |s| &mut s.pos_embed,
                    TensorOptions::reset_with(sincos_init),
                ),
                Self::module("blocks", |s| &s.blocks, |s| &mut s.blocks),
                Self::module("fc_norm", |s| &s.fc_norm, |s| &mut s.fc_norm),
            ),
            |(patch_embed, cls_token, pos_embed, blocks, fc_norm)| VisionTransformer {
                patch_embed,
                cls_token,
                pos_embed,
                blocks,
                fc_norm,
            },
        )
    }
}

/// The linear head: `[classes, D]` weight and `[classes]` bias.
#[derive(Debug, Clone)]
pub struct Head<P: MaePreset, D: Storage<E>, E: Dtype = f32> {
    /// `head.weight`.
    pub weight: Tensor<(usize, EncDim<P>), E, D>,
    /// `head.bias`.
    pub bias: Tensor<(usize,), E, D>,
}

/// How the classifier turns the encoder's tokens into one feature vector: `models_vit.py`'s
/// `global_pool` (timm's `global_pool='avg'` / `'token'`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// `global_pool=True`, the official fine-tuning default: `fc_norm(mean of the patch tokens)`.
    #[default]
    GlobalPool,
    /// `global_pool=False` (`main_finetune.py --cls_token`, and timm's supervised ViTs):
    /// `norm(x)[:, 0]`, the cls token after the final norm.
    ClsToken,
}

impl Pooling {
    /// The module name of the norm before the head: `fc_norm` or `norm`.
    pub fn norm_name(self) -> &'static str {
        match self {
            Pooling::GlobalPool => "fc_norm",
            Pooling::ClsToken => "norm",
        }
    }

    /// timm's name for it (`avg` or `token`), also what classifier files record as `global_pool`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::GlobalPool => "avg",
            Pooling::ClsToken => "token",
        }
    }

    /// The pooling whose norm a classifier's tensor names hold: `fc_norm.weight` for the global
    /// pool, else `norm.weight` for the cls token; `None` when neither is there.
    pub fn of_names<S: AsRef<str>>(names: &[S]) -> Option<Pooling> {
        let has = |n: &str| names.iter().any(|s| s.as_ref() == n);
        if has("fc_norm.weight") {
            Some(Pooling::GlobalPool)
        } else if has("norm.weight") {
            Some(Pooling::ClsToken)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pooling::GlobalPool => f.write_str("global-pool head (`fc_norm`)"),
            Pooling::ClsToken => f.write_str("cls-token head (`norm`)"),
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "avg" | "global-pool" | "global_pool" => Ok(Pooling::GlobalPool),
            "token" | "cls-token" | "cls_token" => Ok(Pooling::ClsToken),
            other => Err(format!(
                "pooling `{other}`: expected `avg` (global pool, fc_norm) or `token` (cls token, norm)"
            )),
        }
    }
}

/// What a classifier file holds: its class count (`head.bias`) and its head's pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifierLayout {
    /// `head.bias`'s length.
    pub num_classes: usize,
    /// `fc_norm` (global pool) or `norm` (cls token).
    pub pooling: Pooling,
}

impl ClassifierLayout {
    /// The layout of `file`'s classifier; `None` when it has no `head.bias` (an MAE or an
    /// encoder), an error when it has a head but neither `fc_norm` nor `norm`.
    pub fn of_file(file: &TensorFile) -> Result<Option<ClassifierLayout>, MaeError> {
        let Some(shape) = file.shape("head.bias")? else {
            return Ok(None);
        };
        let num_classes = match shape[..] {
            [n] if n > 0 => n,
            _ => {
                return Err(MaeError::Format {
                    path: file.path().to_path_buf(),
                    message: format!("`head.bias` has shape {shape:?}, not [classes]"),
                })
            }
        };
        let pooling = Pooling::of_names(&file.names()?).ok_or_else(|| MaeError::Format {
            path: file.path().to_path_buf(),
            message: "a classifier head without `fc_norm.*` (global pool) or `norm.*` (cls token)"
                .into(),
        })?;
        Ok(Some(ClassifierLayout {
            num_classes,
            pooling,
        }))
    }
}

/// The classifier: ViT + head.
///
/// ```
/// use dfdx::prelude::*;
/// use mae_core::{presets::Parity, Classifier, MaePreset};
///
/// let dev: Cpu = Cpu::seed_from_u64(0);
/// let model = Classifier::<Parity, Cpu>::new(&dev, 10).unwrap();
/// let imgs = vec![0.1f32; 2 * Parity::image_numel()];
/// let logits = model.forward(&imgs, &[], NoneTape).unwrap();
/// assert_eq!(logits.shape().1, 10);
/// ```
///
/// `E` is the element type: `f32`, or [`crate::AmpF16`] for the half copy mixed precision
/// computes with ([`Classifier::to_dtype`]).
#[derive(Debug, Clone)]
pub struct Classifier<P: MaePreset, D: Storage<E>, E: Dtype = f32> {
    /// Everything but the head.
    pub vit: VisionTransformer<P, E, D>,
    /// The head.
    pub head: Head<P, D, E>,
    /// How the tokens are pooled for the head.
    pub pooling: Pooling,
}

/// What [`Classifier::load_pretrained`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PretrainedLoad {
    /// Names loaded from the file.
    pub loaded: Vec<String>,
    /// Names left at their initialization (`fc_norm` or, for the cls-token head, nothing
    /// beyond `head`, from an MAE checkpoint).
    pub fresh: Vec<String>,
    /// `Some((old, new))` when the position embedding was interpolated from an `old×old` grid.
    pub interpolated: Option<(usize, usize)>,
}

/// `N(0, std²)` cut at ±2 (timm's `trunc_normal_` with its default absolute bounds).
struct TruncNormal(f32);
impl Distribution<f32> for TruncNormal {
    fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> f32 {
        loop {
            let z: f32 = StandardNormal.sample(rng);
            let v = z * self.0;
            if v.abs() <= 2.0 {
                return v;
            }
        }
    }
}

fn geometry<P: MaePreset>() -> PatchGeometry {
    PatchGeometry::of::<P>()
}

impl<P: MaePreset, E: MaeDtype, D: MaeDevice<E>> Head<P, D, E> {
    /// Logits `[N, classes]` of features `x` (`[N, D]`): `x · weightᵀ + bias`, recorded on
    /// `x`'s tape.
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Tensor<(usize, EncDim<P>), E, D, T>,
    ) -> Result<Tensor<(usize, usize), E, D, T>, MaeError> {
        let batch = x.shape().0;
        let classes = self.bias.shape().0;
        x.try_matmul(self.weight.retaped::<T>().try_permute().map_err(dev_err)?)
            .and_then(|y| {
                y.try_add(
                    self.bias
                        .retaped::<T>()
                        .try_broadcast_like::<_, Axis<0>>(&(batch, classes))?,
                )
            })
            .map_err(dev_err)
    }

    /// Gradients of the weight and the bias in `grads`, kept after backward (as a module
    /// walk's own tensors are: the head lies outside it, and dfdx exposes a tensor's id only
    /// through `UnusedTensors`).
    pub fn alloc_grads_in(&self, grads: &mut Gradients<E, D>) -> Result<(), MaeError> {
        grads.try_alloc_for(&self.weight).map_err(dev_err)?;
        grads.try_alloc_for(&self.bias).map_err(dev_err)?;
        let mut ids = dfdx::optim::UnusedTensors::default();
        ids.add(&self.weight);
        ids.add(&self.bias);
        grads.retain_leafs(&ids.ids);
        Ok(())
    }

    /// Zeroes the weight's and the bias's gradients.
    pub fn zero_grads(&self, grads: &mut Gradients<E, D>) -> Result<(), MaeError> {
        let dev = self.bias.device().clone();
        dev.try_fill_with_zeros(grads.get_or_alloc_mut(&self.weight).map_err(dev_err)?)
            .map_err(dev_err)?;
        dev.try_fill_with_zeros(grads.get_or_alloc_mut(&self.bias).map_err(dev_err)?)
            .map_err(dev_err)
    }
}

impl<P: MaePreset, E: MaeDtype, D: MaeDevice<E>> Classifier<P, D, E> {
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.head.bias.shape().0
    }

    /// Logits `[N, classes]` of NCHW `imgs`. `drop_path[i]` is block `i`'s stochastic depth
    /// (empty for evaluation). `tape` as in [`crate::Mae::forward`].
    pub fn forward<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        drop_path: &[Option<BranchScales>],
        tape: T,
    ) -> Result<Tensor<(usize, usize), E, D, T>, MaeError> {
        let vit = &self.vit;
        let x = project_patches::<P, E, D, T>(&vit.patch_embed, imgs, tape)?;
        let shape = *x.shape();
        let (batch, l, m) = shape;
        let pos = vit.pos_embed.retaped::<T>();
        let patch_pos = pos
            .with_empty_tape()
            .try_slice((1.., ..))
            .and_then(|p| p.try_broadcast_like::<_, Axis<0>>(&shape))
            .map_err(dev_err)?;
        let x = x.try_add(patch_pos).map_err(dev_err)?;
        let cls = pos
            .try_slice((0..1, ..))
            .and_then(|p| p.try_reshape_like(&(m,)))
            .and_then(|p| vit.cls_token.retaped::<T>().try_add(p))
            .map_err(dev_err)?;
        let x = prepend_cls(cls, x)?;
        let x = vit.blocks.forward_scaled(x, drop_path)?;
        let pooled = match self.pooling {
            // the mean of the patch tokens, then fc_norm
            Pooling::GlobalPool => x
                .try_slice((.., 1..l + 1, ..))
                .and_then(|t| t.try_mean::<(usize, EncDim<P>), Axis<1>>())
                .and_then(|t| t.try_reshape_like(&(batch, 1usize, m))),
            // norm(x)[:, 0]: LayerNorm is per token, so norm of the cls token alone
            Pooling::ClsToken => x
                .try_slice((.., 0..1, ..))
                .and_then(|t| t.try_reshape_like(&(batch, 1usize, m))),
        }
        .map_err(dev_err)?;
        let pooled = vit
            .fc_norm
            .forward(pooled)?
            .try_reshape_like(&(batch, m))
            .map_err(dev_err)?;
        self.head.forward(pooled)
    }

    /// Gradients for every trainable tensor, head included (what a tape should record into).
    pub fn alloc_grads(&self) -> Result<Gradients<E, D>, MaeError> {
        let mut grads = self.vit.try_alloc_grads().map_err(dev_err)?;
        self.head.alloc_grads_in(&mut grads)?;
        Ok(grads)
    }

    /// Zeroes the gradients of every trainable tensor, head included.
    pub fn zero_grads(&self, grads: &mut Gradients<E, D>) -> Result<(), MaeError> {
        self.vit.try_zero_grads(grads).map_err(dev_err)?;
        self.head.zero_grads(grads)
    }
}

impl<P: MaePreset, D: MaeDevice> Classifier<P, D> {
    /// A copy in element type `E2` (the half copy of mixed precision: `E2 =` [`crate::AmpF16`]).
    pub fn to_dtype<E2: MaeDtype>(&self) -> Result<Classifier<P, D, E2>, MaeError>
    where
        D: MaeDevice<E2>,
    {
        use dfdx::nn::ToDtype;
        Ok(Classifier {
            vit: self.vit.try_to_dtype::<E2>().map_err(dev_err)?,
            head: Head {
                weight: self.head.weight.clone().try_to_dtype().map_err(dev_err)?,
                bias: self.head.bias.clone().try_to_dtype().map_err(dev_err)?,
            },
            pooling: self.pooling,
        })
    }

    /// A fresh global-pool classifier for `num_classes` classes: the ViT initialized as the MAE
    /// encoder is, a unit `fc_norm`, the head weight `trunc_normal(std=2e-5)` and a zero bias.
    pub fn new(dev: &D, num_classes: usize) -> Result<Self, MaeError> {
        Self::with_pooling(dev, num_classes, Pooling::GlobalPool)
    }

    /// The classifier of `file` with the head `layout` says (the official / timm names), loaded
    /// strictly as [`Self::load_from`] does.
    pub fn from_file(
        dev: &D,
        file: &TensorFile,
        layout: ClassifierLayout,
    ) -> Result<Self, MaeError> {
        let mut model = Self::with_pooling(dev, layout.num_classes, layout.pooling)?;
        model.load_from(file, "")?;
        Ok(model)
    }

    /// [`Self::new`] with the head's `pooling` (a unit `norm` for [`Pooling::ClsToken`]).
    pub fn with_pooling(dev: &D, num_classes: usize, pooling: Pooling) -> Result<Self, MaeError> {
        if num_classes == 0 {
            return Err(MaeError::InputShape {
                what: "number of classes",
                expected: "at least 1".into(),
                got: "0".into(),
            });
        }
        let vit = VisionTransformer::<P, f32, D>::try_build(dev).map_err(dev_err)?;
        let mut weight: Tensor<(usize, EncDim<P>), f32, D> = dev
            .try_zeros_like(&(num_classes, EncDim::<P>::default()))
            .map_err(dev_err)?;
        weight
            .try_fill_with_distr(TruncNormal(2e-5))
            .map_err(dev_err)?;
        let bias = dev.try_zeros_like(&(num_classes,)).map_err(dev_err)?;
        Ok(Classifier {
            vit,
            head: Head { weight, bias },
            pooling,
        })
    }

    /// Every tensor (all trainable), official names and shapes, head last.
    pub fn named_tensors(&self) -> Result<Vec<NamedTensor>, MaeError> {
        let mut out = collect_tensors(&self.vit, geometry::<P>())?;
        self.rename_norm(&mut out);
        out.extend(self.head_tensors(None));
        Ok(out)
    }

    /// The walk names the norm before the head `fc_norm`; the cls-token head's is `norm`.
    fn rename_norm(&self, tensors: &mut [NamedTensor]) {
        if self.pooling == Pooling::ClsToken {
            for t in tensors {
                if let Some(rest) = t.name.strip_prefix("fc_norm.") {
                    t.name = format!("norm.{rest}");
                }
            }
        }
    }

    /// The gradient of every tensor, official names and shapes (as [`Self::named_tensors`]).
    pub fn named_gradients(&self, grads: &Gradients<f32, D>) -> Result<Vec<NamedTensor>, MaeError> {
        let mut out = collect_gradients(&self.vit, geometry::<P>(), grads)?;
        self.rename_norm(&mut out);
        out.extend(self.head_tensors(Some(grads)));
        Ok(out)
    }

    fn head_tensors(&self, grads: Option<&Gradients<f32, D>>) -> Vec<NamedTensor> {
        let (w, b) = match grads {
            None => (self.head.weight.as_vec(), self.head.bias.as_vec()),
            Some(g) => (
                g.get(&self.head.weight).as_vec(),
                g.get(&self.head.bias).as_vec(),
            ),
        };
        let dim = <P::Encoder as TransformerDims>::DIM;
        vec![
            NamedTensor {
                name: "head.weight".into(),
                shape: vec![self.num_classes(), dim],
                data: w,
                trainable: true,
            },
            NamedTensor {
                name: "head.bias".into(),
                shape: vec![self.num_classes()],
                data: b,
                trainable: true,
            },
        ]
    }

    /// Sets every tensor from `values` by name (head included); names absent keep their values.
    /// Lengths are checked before anything is written.
    pub fn assign(&mut self, values: &HashMap<String, Vec<f32>>) -> Result<(), MaeError> {
        for t in self.named_tensors()? {
            if let Some(v) = values.get(&t.name) {
                if v.len() != t.data.len() {
                    return Err(MaeError::InputShape {
                        what: "tensor values",
                        expected: format!("{} values for `{}`", t.data.len(), t.name),
                        got: v.len().to_string(),
                    });
                }
            }
        }
        self.assign_checked(values)
    }

    /// [`Self::assign`] of values whose lengths the caller has already checked against
    /// [`Self::named_tensors`] (the loaders do, tensor by tensor).
    fn assign_checked(&mut self, values: &HashMap<String, Vec<f32>>) -> Result<(), MaeError> {
        if self.pooling == Pooling::ClsToken {
            // the walk's name for the cls-token head's `norm`
            let renamed: HashMap<String, Vec<f32>> = values
                .iter()
                .filter_map(|(k, v)| {
                    let rest = k.strip_prefix("norm.")?;
                    Some((format!("fc_norm.{rest}"), v.clone()))
                })
                .collect();
            assign_tensors(&mut self.vit, &renamed)?;
        }
        assign_tensors(&mut self.vit, values)?;
        if let Some(w) = values.get("head.weight") {
            self.head.weight.copy_from(w);
        }
        if let Some(b) = values.get("head.bias") {
            self.head.bias.copy_from(b);
        }
        Ok(())
    }

    /// Loads a classifier file written by [`Self::save_safetensors`] (or timm/official
    /// fine-tuned weights under the same names, each prefixed by `prefix`): every tensor must be
    /// there with its official shape and finite values; extra keys are an error. Nothing
    /// changes when it fails.
    pub fn load_from(&mut self, file: &TensorFile, prefix: &str) -> Result<(), MaeError> {
        let expected = self.named_tensors()?;
        let mut values = HashMap::new();
        for t in &expected {
            let key = format!("{prefix}{}", t.name);
            let host = file.read(&key)?.ok_or_else(|| MaeError::MissingKey {
                path: file.path().to_path_buf(),
                key: key.clone(),
                expected: t.shape.clone(),
            })?;
            check_tensor(
                file.path(),
                &key,
                &host.shape,
                &t.shape,
                &host.data,
                P::PRESET,
            )?;
            values.insert(t.name.clone(), host.data);
        }
        for key in file.names()? {
            if let Some(name) = key.strip_prefix(prefix) {
                if !values.contains_key(name) {
                    return Err(MaeError::UnexpectedKey {
                        path: file.path().to_path_buf(),
                        shape: file.shape(&key)?.unwrap_or_default(),
                        key,
                        preset: P::PRESET,
                    });
                }
            }
        }
        self.assign_checked(&values)
    }

    /// `main_finetune.py`'s start from pretrained weights: the encoder tensors (`patch_embed`,
    /// `cls_token`, `pos_embed`, `blocks`) from an MAE checkpoint, full or encoder-only, of any
    /// preset with the same encoder; the position embedding is interpolated (bicubic) when the
    /// checkpoint's patch grid differs. The decoder and `mask_token` are skipped, and so is the
    /// pretraining `norm` under the global-pool head, while the cls-token head takes it (as
    /// `main_finetune.py --cls_token` does); the head's norm and `head` stay fresh unless the file
    /// has them with matching shapes.
    /// Nothing changes when it fails.
    pub fn load_pretrained(&mut self, file: &TensorFile) -> Result<PretrainedLoad, MaeError> {
        let path = file.path().to_path_buf();
        let mut values = HashMap::new();
        let mut report = PretrainedLoad {
            loaded: Vec::new(),
            fresh: Vec::new(),
            interpolated: None,
        };
        let l = P::num_patches();
        let grid = (l as f64).sqrt().round() as usize;
        let norm_prefix = format!("{}.", self.pooling.norm_name());
        for t in self.named_tensors()? {
            let optional = t.name.starts_with(norm_prefix.as_str()) || t.name.starts_with("head.");
            let Some(host) = file.read(&t.name)? else {
                if optional {
                    report.fresh.push(t.name);
                    continue;
                }
                return Err(MaeError::MissingKey {
                    path,
                    key: t.name.clone(),
                    expected: t.shape,
                });
            };
            if optional && host.shape != t.shape {
                // e.g. a head for another number of classes: dropped, as main_finetune.py does
                report.fresh.push(t.name);
                continue;
            }
            let mut data = host.data;
            let mut shape = host.shape;
            if t.name == "pos_embed" && shape != t.shape {
                let dim = t.shape[2];
                let tokens = shape.get(1).copied().unwrap_or(0);
                let old = ((tokens.max(1) - 1) as f64).sqrt().round() as usize;
                if shape.len() == 3 && shape[0] == 1 && shape[2] == dim && 1 + old * old == tokens {
                    check_tensor(&path, "pos_embed", &shape, &shape, &data, P::PRESET)?;
                    data = interpolate_pos_embed(&data, dim, old, grid);
                    shape = t.shape.clone();
                    report.interpolated = Some((old, grid));
                }
            }
            check_tensor(&path, &t.name, &shape, &t.shape, &data, P::PRESET)?;
            values.insert(t.name.clone(), data);
            report.loaded.push(t.name);
        }
        for key in file.names()? {
            let known = values.contains_key(&key)
                || is_decoder_name(&key)
                || key.starts_with("norm.")
                || key.starts_with("fc_norm.")
                || key.starts_with("head.");
            if !known {
                return Err(MaeError::UnexpectedKey {
                    path: path.clone(),
                    shape: file.shape(&key)?.unwrap_or_default(),
                    key,
                    preset: P::PRESET,
                });
            }
        }
        self.assign_checked(&values)?;
        Ok(report)
    }

    /// Writes every tensor (official names and shapes) with `metadata` plus `preset`,
    /// `kind = classifier`, `num_classes` and `global_pool` (`avg` or `token`), atomically.
    pub fn save_safetensors(
        &self,
        path: impl AsRef<Path>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), MaeError> {
        let mut meta = metadata.clone();
        meta.insert("preset".into(), P::PRESET.to_string());
        meta.insert("kind".into(), "classifier".into());
        meta.insert("num_classes".into(), self.num_classes().to_string());
        meta.insert("global_pool".into(), self.pooling.as_str().into());
        write_safetensors(path.as_ref(), &self.named_tensors()?, &meta)
    }
}

/// timm's `SoftTargetCrossEntropy`: `mean_n Σ_c −target[n,c] · log_softmax(logits)[n,c]`, the loss
/// `main_finetune.py` trains with under mixup/cutmix (with label smoothing inside the targets);
/// with smoothed one-hot targets it equals `LabelSmoothingCrossEntropy`. `targets` is `[N, C]`
/// row-major.
pub fn soft_target_cross_entropy<E: MaeDtype, D: MaeDevice<E>, T: Tape<E, D>>(
    logits: Tensor<(usize, usize), E, D, T>,
    targets: &[f32],
) -> Result<Tensor<Rank0, E, D, T>, MaeError> {
    let (log_probs, t) = log_probs_and_targets(logits, targets)?;
    mean_cross_entropy(log_probs, t)
}

/// [`soft_target_cross_entropy`] for mixed-precision training with loss scaling (as
/// [`crate::Mae::scaled_loss`]): the loss's value off the tape, and a scalar whose gradients are
/// `grad_scale` times the loss's, the scale folded into the per-class weights (`−grad_scale ·
/// target / N`) so that no gradient on the way leaves f16's range. One `log_softmax` serves both.
pub fn soft_target_cross_entropy_scaled<E: MaeDtype, D: MaeDevice<E>, T: Tape<E, D>>(
    logits: Tensor<(usize, usize), E, D, T>,
    targets: &[f32],
    grad_scale: f64,
) -> Result<ScaledLoss<E, D, T>, MaeError> {
    let (log_probs, t) = log_probs_and_targets(logits, targets)?;
    let n = t.shape().0;
    let loss = mean_cross_entropy(log_probs.retaped::<NoneTape>(), t.clone())?;
    let weights = t
        .try_mul(E::of_f64(-grad_scale / n as f64))
        .map_err(dev_err)?;
    let backward = log_probs
        .try_mul(weights)
        .and_then(|l| l.try_sum::<Rank0, _>())
        .map_err(dev_err)?;
    Ok(ScaledLoss { loss, backward })
}

/// `log_softmax(logits)` over the classes and the targets as a tensor, after checking that
/// `targets` holds `[N, C]` values for `N ≥ 1`.
#[allow(clippy::type_complexity)]
fn log_probs_and_targets<E: MaeDtype, D: MaeDevice<E>, T: Tape<E, D>>(
    logits: Tensor<(usize, usize), E, D, T>,
    targets: &[f32],
) -> Result<
    (
        Tensor<(usize, usize), E, D, T>,
        Tensor<(usize, usize), E, D>,
    ),
    MaeError,
> {
    let shape = *logits.shape();
    if targets.len() != shape.0 * shape.1 || shape.0 == 0 {
        return Err(MaeError::InputShape {
            what: "targets",
            expected: format!("{} × {} values", shape.0, shape.1),
            got: targets.len().to_string(),
        });
    }
    let t = host_tensor(logits.device(), &E::from_f32_slice(targets), shape)?;
    let log_probs = logits.try_log_softmax::<Axis<1>>().map_err(dev_err)?;
    Ok((log_probs, t))
}

/// `−(1/N) Σ target · log_probs`.
fn mean_cross_entropy<E: MaeDtype, D: MaeDevice<E>, T: Tape<E, D>>(
    log_probs: Tensor<(usize, usize), E, D, T>,
    targets: Tensor<(usize, usize), E, D>,
) -> Result<Tensor<Rank0, E, D, T>, MaeError> {
    let n = targets.shape().0;
    log_probs
        .try_mul(targets)
        .and_then(|l| l.try_sum::<Rank0, _>())
        .and_then(|s| s.try_mul(E::of_f64((-1.0 / n as f64) as f32 as f64)))
        .map_err(dev_err)
}
