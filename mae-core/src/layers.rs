//! The building blocks of the ViT encoder and the MAE decoder: Linear, LayerNorm, attention,
//! MLP and the pre-norm transformer block.
//!
//! PyTorch counterparts: `nn.Linear`, `nn.LayerNorm(eps=1e-6)`, and timm's
//! `vision_transformer.Block` / `Attention` / `Mlp` with `qkv_bias=True`, exact (erf) GELU and
//! `x = x + attn(norm1(x)); x = x + mlp(norm2(x))`.
//!
//! Field names are the reference's state_dict names, so a [`TensorCollection`] walk yields the
//! official parameter paths (`blocks.3.attn.qkv.weight`). Weights are stored as PyTorch stores
//! them: `[out, in]`.
//!
//! Activations are `[batch, tokens, width]` with `usize` batch and token dims and the width a
//! const dim of the preset.

use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::prelude::*;
use rand_distr::Uniform;

use crate::dtype::MaeDtype;
use crate::error::MaeError;
use crate::gelu::gelu_composed;
use crate::host::{dev_err, host_tensor};
use crate::preset::TransformerDims;

/// The LayerNorm epsilon of every norm in MAE.
pub const LAYER_NORM_EPS: f64 = 1e-6;

/// A `[batch, tokens, W]` activation (of element type `E`, `f32` unless named).
pub type Act<W, D, T, E = f32> = Tensor<(usize, usize, W), E, D, T>;

/// A dfdx device the MAE model runs on in element type `E` (`f32` unless named).
pub trait MaeDevice<E: MaeDtype = f32>: Device<E> + ZerosTensor<usize> + CopySlice<usize> {
    /// Exact erf GELU with a correct gradient.
    fn gelu<S: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
    ) -> Result<Tensor<S, E, Self, T>, MaeError> {
        gelu_composed(x)
    }

    /// One pre-norm transformer block (with optional drop-path scales); the default is the
    /// composition of dfdx ops, [`Block::forward_composed`].
    fn block<Tr: TransformerDims, T: Tape<E, Self>>(
        block: &Block<Tr, E, Self>,
        x: Act<Tr::Model, Self, T, E>,
        scales: Option<&BranchScales>,
    ) -> Result<Act<Tr::Model, Self, T, E>, MaeError> {
        block.forward_composed(x, scales)
    }

    /// The values of a gradient buffer as a host slice, borrowed in place, where the device keeps
    /// its buffers in host memory (`Cpu`); `None` elsewhere, where callers copy through
    /// `Gradients::get`.
    fn host_slice_mut(_buffer: &mut <Self as Storage<E>>::Vec) -> Option<&mut [E]> {
        None
    }

    /// Whether [`MaeDevice::host_slice_mut`] gives the buffers in place (they lie in host memory).
    fn keeps_host_memory() -> bool {
        false
    }

    /// A tensor's values, row-major, borrowed in place from its storage where the device keeps
    /// it in host memory (`Cpu`) and it is contiguous; `None` elsewhere (callers copy).
    fn tensor_host_slice<S: Shape, T>(_t: &Tensor<S, E, Self, T>) -> Option<&[E]> {
        None
    }

    /// [`MaeDevice::tensor_host_slice`], writable in place (copy-on-write when the storage is
    /// shared with a clone of the tensor).
    fn tensor_host_slice_mut<S: Shape, T>(_t: &mut Tensor<S, E, Self, T>) -> Option<&mut [E]> {
        None
    }
}

/// [`MaeDevice::tensor_host_slice`] for a device in host memory (the patched dfdx's
/// `host_data`): the storage when it holds exactly the tensor's elements in row-major order.
pub(crate) fn cpu_slice<S: Shape, E: Unit, T>(t: &Tensor<S, E, Cpu, T>) -> Option<&[E]> {
    let n = t.shape().num_elements();
    (t.is_contiguous() && t.host_data().len() == n).then(|| t.host_data())
}

/// [`cpu_slice`], writable.
pub(crate) fn cpu_slice_mut<S: Shape, E: Unit, T>(
    t: &mut Tensor<S, E, Cpu, T>,
) -> Option<&mut [E]> {
    let n = t.shape().num_elements();
    if !t.is_contiguous() || t.host_data().len() != n {
        return None;
    }
    Some(t.host_data_mut())
}

/// `y = x·Wᵀ + b` with `W: [O, I]` (PyTorch's layout) and `b: [O]`.
///
/// Initialized as MAE initializes every Linear: xavier-uniform weight, zero bias.
#[derive(Debug, Clone)]
pub struct Linear<I: ConstDim, O: ConstDim, E: Dtype, D: Storage<E>> {
    /// `[out, in]`.
    pub weight: Tensor<(O, I), E, D>,
    /// `[out]`.
    pub bias: Tensor<(O,), E, D>,
}

/// Draws from an `f32` distribution and rounds to the model's element type, so that a model in
/// any [`MaeDtype`] draws the values (and advances the RNG) as the `f32` model does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DrawnInF32<Dist>(pub Dist);

impl<E: MaeDtype, Dist: rand_distr::Distribution<f32>> rand_distr::Distribution<E>
    for DrawnInF32<Dist>
{
    fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> E {
        E::of_f64(self.0.sample(rng) as f64)
    }
}

/// Fills a `[out, in]` weight with xavier-uniform values, `U(±sqrt(6 / (in + out)))`.
pub fn xavier_uniform<O: ConstDim, I: ConstDim, E: MaeDtype, D: Device<E>>(
    t: &mut Tensor<(O, I), E, D>,
) -> Result<(), D::Err> {
    let (o, i) = *t.shape();
    let bound = (6.0 / (i.size() + o.size()) as f64).sqrt() as f32;
    t.try_fill_with_distr(DrawnInF32(Uniform::new(-bound, bound)))
}

impl<I: ConstDim, O: ConstDim, E: MaeDtype, D: Device<E>> TensorCollection<E, D>
    for Linear<I, O, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = Linear<I, O, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "weight",
                    |s| &s.weight,
                    |s| &mut s.weight,
                    TensorOptions::reset_with(xavier_uniform),
                ),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| &mut s.bias,
                    TensorOptions::reset_to_zeros(),
                ),
            ),
            |(weight, bias)| Linear { weight, bias },
        )
    }
}

impl<I: ConstDim, O: ConstDim, E: MaeDtype, D: MaeDevice<E>> Linear<I, O, E, D> {
    /// Applies the layer to `[batch, tokens, I]`, as one `[batch·tokens, I]` matmul.
    pub fn forward<T: Tape<E, D>>(&self, x: Act<I, D, T, E>) -> Result<Act<O, D, T, E>, MaeError> {
        let (b, s, i) = *x.shape();
        let o = self.weight.shape().0;
        let x2 = x.try_reshape_like(&(b * s, i)).map_err(dev_err)?;
        let y = x2
            .try_matmul(self.weight.retaped::<T>().try_permute().map_err(dev_err)?)
            .map_err(dev_err)?;
        let y = y
            .try_add(
                self.bias
                    .retaped::<T>()
                    .try_broadcast_like(&(b * s, o))
                    .map_err(dev_err)?,
            )
            .map_err(dev_err)?;
        y.try_reshape_like(&(b, s, o)).map_err(dev_err)
    }
}

/// LayerNorm over the last axis with eps 1e-6: `(x − mean) / sqrt(var + eps) · weight + bias`.
#[derive(Debug, Clone)]
pub struct LayerNorm<M: ConstDim, E: Dtype, D: Storage<E>> {
    /// Scale (γ), initialized to 1.
    pub weight: Tensor<(M,), E, D>,
    /// Shift (β), initialized to 0.
    pub bias: Tensor<(M,), E, D>,
}

impl<M: ConstDim, E: MaeDtype, D: Device<E>> TensorCollection<E, D> for LayerNorm<M, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = LayerNorm<M, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "weight",
                    |s| &s.weight,
                    |s| &mut s.weight,
                    TensorOptions::reset_to_ones(),
                ),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| &mut s.bias,
                    TensorOptions::reset_to_zeros(),
                ),
            ),
            |(weight, bias)| LayerNorm { weight, bias },
        )
    }
}

impl<M: ConstDim, E: MaeDtype, D: MaeDevice<E>> LayerNorm<M, E, D> {
    /// Normalizes each token of `[batch, tokens, M]`.
    pub fn forward<T: Tape<E, D>>(&self, x: Act<M, D, T, E>) -> Result<Act<M, D, T, E>, MaeError> {
        let shape = *x.shape();
        let x = x
            .try_normalize::<Axis<2>>(LAYER_NORM_EPS)
            .map_err(dev_err)?;
        let x = x
            .try_mul(
                self.weight
                    .retaped::<T>()
                    .try_broadcast_like(&shape)
                    .map_err(dev_err)?,
            )
            .map_err(dev_err)?;
        x.try_add(
            self.bias
                .retaped::<T>()
                .try_broadcast_like(&shape)
                .map_err(dev_err)?,
        )
        .map_err(dev_err)
    }
}

/// Multi-head self-attention with a fused `qkv` projection (q, k, v stacked in that order along
/// the output axis, as timm's `Attention`) and an output projection `proj`.
#[derive(Debug, Clone)]
pub struct Attention<Tr: TransformerDims, E: Dtype, D: Storage<E>> {
    /// `[3·D, D]` and `[3·D]`.
    pub qkv: Linear<Tr::Model, Tr::Qkv, E, D>,
    /// `[D, D]` and `[D]`.
    pub proj: Linear<Tr::Model, Tr::Model, E, D>,
}

impl<Tr: TransformerDims, E: MaeDtype, D: Device<E>> TensorCollection<E, D>
    for Attention<Tr, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = Attention<Tr, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("qkv", |s| &s.qkv, |s| &mut s.qkv),
                Self::module("proj", |s| &s.proj, |s| &mut s.proj),
            ),
            |(qkv, proj)| Attention { qkv, proj },
        )
    }
}

impl<Tr: TransformerDims, E: MaeDtype, D: MaeDevice<E>> Attention<Tr, E, D> {
    /// `softmax(q·kᵀ / sqrt(head_dim))·v` per head, heads concatenated, then `proj`.
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Act<Tr::Model, D, T, E>,
    ) -> Result<Act<Tr::Model, D, T, E>, MaeError> {
        let (b, s, m) = *x.shape();
        let (h, dh) = (Tr::NUM_HEADS, Tr::HEAD_DIM);
        let qkv = self.qkv.forward(x)?;
        let width = m.size();
        let split = |t: Act<Tr::Qkv, D, T, E>, part: usize| {
            t.try_slice((.., .., part * width..(part + 1) * width))
                .and_then(|t| t.try_reshape_like(&(b, s, h, dh)))
                .and_then(|t| t.try_permute::<_, Axes4<0, 2, 1, 3>>())
                .map_err(dev_err)
        };
        let q = split(qkv.with_empty_tape(), 0)?;
        let k = split(qkv.with_empty_tape(), 1)?;
        let v = split(qkv, 2)?;
        let scale = 1.0 / (dh as f64).sqrt();
        let scores = q
            .try_matmul(k.try_permute::<_, Axes4<0, 1, 3, 2>>().map_err(dev_err)?)
            .map_err(dev_err)?
            .try_mul(E::of_f64(scale as f32 as f64))
            .map_err(dev_err)?;
        let attn = scores.try_softmax::<Axis<3>>().map_err(dev_err)?;
        let out = attn
            .try_matmul(v)
            .and_then(|t| t.try_permute::<_, Axes4<0, 2, 1, 3>>())
            .and_then(|t| t.try_reshape_like(&(b, s, m)))
            .map_err(dev_err)?;
        self.proj.forward(out)
    }
}

/// The transformer MLP: `fc2(gelu(fc1(x)))` with exact erf GELU.
#[derive(Debug, Clone)]
pub struct Mlp<Tr: TransformerDims, E: Dtype, D: Storage<E>> {
    /// `[4·D, D]` and `[4·D]`.
    pub fc1: Linear<Tr::Model, Tr::Mlp, E, D>,
    /// `[D, 4·D]` and `[D]`.
    pub fc2: Linear<Tr::Mlp, Tr::Model, E, D>,
}

impl<Tr: TransformerDims, E: MaeDtype, D: Device<E>> TensorCollection<E, D> for Mlp<Tr, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = Mlp<Tr, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("fc1", |s| &s.fc1, |s| &mut s.fc1),
                Self::module("fc2", |s| &s.fc2, |s| &mut s.fc2),
            ),
            |(fc1, fc2)| Mlp { fc1, fc2 },
        )
    }
}

impl<Tr: TransformerDims, E: MaeDtype, D: MaeDevice<E>> Mlp<Tr, E, D> {
    /// `fc2(gelu(fc1(x)))`.
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Act<Tr::Model, D, T, E>,
    ) -> Result<Act<Tr::Model, D, T, E>, MaeError> {
        let hidden = self.fc1.forward(x)?;
        let hidden = D::gelu(hidden)?;
        self.fc2.forward(hidden)
    }
}

/// A pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Debug, Clone)]
pub struct Block<Tr: TransformerDims, E: Dtype, D: Storage<E>> {
    /// Norm before attention.
    pub norm1: LayerNorm<Tr::Model, E, D>,
    /// Self-attention.
    pub attn: Attention<Tr, E, D>,
    /// Norm before the MLP.
    pub norm2: LayerNorm<Tr::Model, E, D>,
    /// The MLP.
    pub mlp: Mlp<Tr, E, D>,
}

impl<Tr: TransformerDims, E: MaeDtype, D: Device<E>> TensorCollection<E, D> for Block<Tr, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = Block<Tr, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("norm1", |s| &s.norm1, |s| &mut s.norm1),
                Self::module("attn", |s| &s.attn, |s| &mut s.attn),
                Self::module("norm2", |s| &s.norm2, |s| &mut s.norm2),
                Self::module("mlp", |s| &s.mlp, |s| &mut s.mlp),
            ),
            |(norm1, attn, norm2, mlp)| Block {
                norm1,
                attn,
                norm2,
                mlp,
            },
        )
    }
}

/// Stochastic depth ("drop path") of one block: per-sample multipliers of its two residual
/// branches, 0 for a sample whose branch is dropped and `1 / keep_prob` for one that is kept
/// (timm's `DropPath` with `scale_by_keep=True`, drawn separately for `drop_path1` and
/// `drop_path2`).
#[derive(Debug, Clone, PartialEq)]
pub struct BranchScales {
    /// Multipliers of the attention branch, one per sample.
    pub attn: Vec<f32>,
    /// Multipliers of the MLP branch, one per sample.
    pub mlp: Vec<f32>,
}

impl BranchScales {
    /// Draws the multipliers of `batch` samples for drop probability `drop_prob`.
    pub fn sample(rng: &mut impl rand::Rng, batch: usize, drop_prob: f64) -> Self {
        let keep = 1.0 - drop_prob;
        let mut draw = || -> Vec<f32> {
            (0..batch)
                .map(|_| {
                    if rng.gen::<f64>() < keep {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let attn = draw();
        let mlp = draw();
        BranchScales { attn, mlp }
    }

    /// An error unless both branches have one multiplier per sample of a `batch`.
    pub fn check(&self, batch: usize) -> Result<(), MaeError> {
        if self.attn.len() == batch && self.mlp.len() == batch {
            return Ok(());
        }
        Err(MaeError::InputShape {
            what: "drop-path scales",
            expected: format!("{batch} samples"),
            got: format!("{} and {}", self.attn.len(), self.mlp.len()),
        })
    }
}

/// Multiplies each sample of a `[batch, tokens, M]` branch output by its scale (one per sample,
/// checked by [`BranchScales::check`]).
fn scale_samples<M: ConstDim, E: MaeDtype, D: MaeDevice<E>, T: Tape<E, D>>(
    x: Act<M, D, T, E>,
    scales: &[f32],
) -> Result<Act<M, D, T, E>, MaeError> {
    let shape = *x.shape();
    let s = host_tensor(x.device(), &E::from_f32_slice(scales), (shape.0,))?
        .try_broadcast_like::<_, Axes2<1, 2>>(&shape)
        .map_err(dev_err)?;
    x.try_mul(s).map_err(dev_err)
}

impl<Tr: TransformerDims, E: MaeDtype, D: MaeDevice<E>> Block<Tr, E, D> {
    /// One pre-norm block.
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Act<Tr::Model, D, T, E>,
    ) -> Result<Act<Tr::Model, D, T, E>, MaeError> {
        self.forward_scaled(x, None)
    }

    /// One pre-norm block with stochastic depth: `x + s₁·attn(norm1(x))`, then
    /// `x + s₂·mlp(norm2(x))`, with per-sample `s` from `scales` (no scaling when `None`).
    /// Runs the device's block kernel ([`MaeDevice::block`]: fused on `Cpu`).
    pub fn forward_scaled<T: Tape<E, D>>(
        &self,
        x: Act<Tr::Model, D, T, E>,
        scales: Option<&BranchScales>,
    ) -> Result<Act<Tr::Model, D, T, E>, MaeError> {
        if let Some(s) = scales {
            s.check(x.shape().0)?;
        }
        D::block(self, x, scales)
    }

    /// [`Block::forward_scaled`] composed of dfdx ops (Linear, LayerNorm, attention, MLP): what
    /// devices without a fused block run, and the reference the fused kernel is tested against.
    pub fn forward_composed<T: Tape<E, D>>(
        &self,
        x: Act<Tr::Model, D, T, E>,
        scales: Option<&BranchScales>,
    ) -> Result<Act<Tr::Model, D, T, E>, MaeError> {
        if let Some(s) = scales {
            s.check(x.shape().0)?;
        }
        let residual = x.with_empty_tape();
        let mut branch = self.attn.forward(self.norm1.forward(x)?)?;
        if let Some(s) = scales {
            branch = scale_samples(branch, &s.attn)?;
        }
        let x = branch.try_add(residual).map_err(dev_err)?;
        let residual = x.with_empty_tape();
        let mut branch = self.mlp.forward(self.norm2.forward(x)?)?;
        if let Some(s) = scales {
            branch = scale_samples(branch, &s.mlp)?;
        }
        branch.try_add(residual).map_err(dev_err)
    }
}

/// `Tr::DEPTH` blocks applied in order, named `0`, `1`, … under their parent's field.
#[derive(Debug, Clone)]
pub struct Blocks<Tr: TransformerDims, E: Dtype, D: Storage<E>> {
    /// The blocks.
    pub blocks: Vec<Block<Tr, E, D>>,
}

impl<Tr: TransformerDims, E: MaeDtype, D: Device<E>> TensorCollection<E, D> for Blocks<Tr, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = Blocks<Tr, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        let names: Vec<String> = (0..Tr::DEPTH).map(|i| i.to_string()).collect();
        visitor.visit_fields(
            names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    Self::module(name, move |s| &s.blocks[i], move |s| &mut s.blocks[i])
                })
                .collect::<Vec<_>>(),
            |blocks| Blocks { blocks },
        )
    }
}

impl<Tr: TransformerDims, E: MaeDtype, D: MaeDevice<E>> Blocks<Tr, E, D> {
    /// All blocks in order.
    pub fn forward<T: Tape<E, D>>(
        &self,
        x: Act<Tr::Model, D, T, E>,
    ) -> Result<Act<Tr::Model, D, T, E>, MaeError> {
        self.forward_scaled(x, &[])
    }

    /// All blocks in order, block `i` with stochastic depth `scales[i]` where given (blocks past
    /// the end of `scales`, or with `None`, run unscaled).
    pub fn forward_scaled<T: Tape<E, D>>(
        &self,
        mut x: Act<Tr::Model, D, T, E>,
        scales: &[Option<BranchScales>],
    ) -> Result<Act<Tr::Model, D, T, E>, MaeError> {
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward_scaled(x, scales.get(i).and_then(|s| s.as_ref()))?;
        }
        Ok(x)
    }
}
