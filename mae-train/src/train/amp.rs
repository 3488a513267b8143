//! Mixed precision: `--precision f32|amp-f16`.
//!
//! PyTorch counterpart: `torch.cuda.amp.autocast()` around the forward and the loss, and
//! `GradScaler` (the official code's `NativeScalerWithGradNormCount`) around the backward and the
//! optimizer step.
//!
//! The weights, the optimizer's moments and the gradients the optimizer reads stay `f32` (the
//! master copy). At the start of every optimizer step the weights are cast to a half copy
//! ([`AmpF16`]: dfdx's `AMP<f16>`, values stored in half precision, matmuls accumulated and
//! reductions and transcendental functions computed in f32); each micro-batch runs its forward
//! and backward on that copy with the loss scaled ([`LossScaler`]), and its half gradients are
//! added, unscaled, into the `f32` gradients ([`MixedPrecision::forward_backward`]). Gradients
//! that overflowed (an infinity or NaN anywhere) make the step a skipped one: no update, the scale
//! halved, as `GradScaler` does; after 2000 steps without overflow the scale doubles.
//!
//! A dfdx tape holds one dtype, so the casts cannot be ops on the tape as `autocast` makes them;
//! moving the gradients back across is a small op of its own: the backward of
//! `Σ sum(w · g) / scale` over the parameters `w` (on the `f32` tape) with `g` their half
//! gradients as `f32`, which adds `g / scale` to each `w`'s gradient where the tensors lie.

use std::fmt;
use std::str::FromStr;

use mae_core::dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorRef,
};
use mae_core::dfdx::prelude::*;
use mae_core::{tape_from, AmpF16, Classifier, Mae, MaeDevice, MaeDtype, MaePreset, ScaledLoss};

#[cfg(doc)]
use mae_core::soft_target_cross_entropy_scaled;
use serde::{Deserialize, Serialize};

use crate::error::{device_err, TrainError};

/// The element type of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Precision {
    /// Everything in f32 (default).
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// Forward and backward in half precision with f32 master weights and dynamic loss scaling.
    #[serde(rename = "amp-f16")]
    AmpF16,
}

impl FromStr for Precision {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "amp-f16" => Ok(Precision::AmpF16),
            other => Err(TrainError::Config(format!(
                "unknown precision `{other}` (f32 or amp-f16)"
            ))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::AmpF16 => "amp-f16",
        })
    }
}

/// What a run in mixed precision on the CPU logs: it works, slowly.
pub const ON_THE_CPU: &str = "--precision amp-f16 on the cpu runs dfdx's half-precision CPU \
    kernels, about 20x slower than f32 (one thread, a conversion per value): it is there to check \
    the path; mixed precision pays on a GPU (--device cuda)";

/// Steps without overflow after which the scale doubles (`GradScaler`'s `growth_interval`).
pub const GROWTH_INTERVAL: u32 = 2000;

/// Dynamic loss scaling, as `torch.cuda.amp.GradScaler` with its defaults (initial scale 2¹⁶,
/// halved on overflow, doubled after [`GROWTH_INTERVAL`] steps without one). Saved in
/// checkpoints, as the official code saves `scaler.state_dict()`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The factor the loss is multiplied by before the backward.
    pub scale: f64,
    /// Steps without overflow since the scale last changed.
    pub good_steps: u32,
    /// Steps skipped on overflow over the whole run.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            good_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// After an optimizer step: `overflow` says whether its gradients overflowed (and so the
    /// step was skipped).
    pub fn update(&mut self, overflow: bool) {
        if overflow {
            self.scale *= 0.5;
            self.good_steps = 0;
            self.skipped += 1;
        } else {
            self.good_steps += 1;
            if self.good_steps == GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        }
    }
}

/// A model trained in mixed precision: it makes its half copy, and lists its trainable
/// parameters (and the half copy's gradients) flattened, in one order.
pub trait AmpModel<D: MaeDevice + MaeDevice<AmpF16>> {
    /// The half copy.
    type Half;
    /// A half copy of the weights.
    fn to_half(&self) -> Result<Self::Half, TrainError>;
    /// Gradients for every trainable tensor of the half copy.
    fn alloc_half_grads(half: &Self::Half) -> Result<Gradients<AmpF16, D>, TrainError>;
    /// Zeroes them.
    fn zero_half_grads(
        half: &Self::Half,
        grads: &mut Gradients<AmpF16, D>,
    ) -> Result<(), TrainError>;
    /// Every trainable parameter, flattened to `[n]`.
    fn flat_params(&self) -> Result<Vec<Flat<f32, D>>, TrainError>;
    /// The gradient of every trainable parameter of the half copy, in the order of
    /// [`AmpModel::flat_params`].
    fn flat_half_grads(
        half: &Self::Half,
        grads: &mut Gradients<AmpF16, D>,
    ) -> Result<Vec<Flat<AmpF16, D>>, TrainError>;
}

/// The half copy of an `f32` module (for instance an [`mae_core::Encoder`] whose passes run in
/// half precision).
pub fn to_half<M: TensorCollection<f32, D>, D: MaeDevice + MaeDevice<AmpF16>>(
    module: &M,
) -> Result<M::To<AmpF16, D>, TrainError> {
    use mae_core::dfdx::nn::ToDtype;
    module.try_to_dtype::<AmpF16>().map_err(device_err)
}

/// A tensor flattened to `[n]`.
pub type Flat<E, D> = Tensor<(usize,), E, D>;

impl<P: MaePreset, D: MaeDevice + MaeDevice<AmpF16>> AmpModel<D> for Mae<P, f32, D> {
    type Half = Mae<P, AmpF16, D>;
    fn to_half(&self) -> Result<Self::Half, TrainError> {
        to_half(self)
    }
    fn alloc_half_grads(half: &Self::Half) -> Result<Gradients<AmpF16, D>, TrainError> {
        half.try_alloc_grads().map_err(device_err)
    }
    fn zero_half_grads(
        half: &Self::Half,
        grads: &mut Gradients<AmpF16, D>,
    ) -> Result<(), TrainError> {
        half.try_zero_grads(grads).map_err(device_err)
    }
    fn flat_params(&self) -> Result<Vec<Flat<f32, D>>, TrainError> {
        flatten(self, None)
    }
    fn flat_half_grads(
        half: &Self::Half,
        grads: &mut Gradients<AmpF16, D>,
    ) -> Result<Vec<Flat<AmpF16, D>>, TrainError> {
        flatten(half, Some(grads))
    }
}

impl<P: MaePreset, D: MaeDevice + MaeDevice<AmpF16>> AmpModel<D> for Classifier<P, D> {
    type Half = Classifier<P, D, AmpF16>;
    fn to_half(&self) -> Result<Self::Half, TrainError> {
        Ok(self.to_dtype::<AmpF16>()?)
    }
    fn alloc_half_grads(half: &Self::Half) -> Result<Gradients<AmpF16, D>, TrainError> {
        Ok(half.alloc_grads()?)
    }
    fn zero_half_grads(
        half: &Self::Half,
        grads: &mut Gradients<AmpF16, D>,
    ) -> Result<(), TrainError> {
        Ok(half.zero_grads(grads)?)
    }
    fn flat_params(&self) -> Result<Vec<Flat<f32, D>>, TrainError> {
        let mut out = flatten(&self.vit, None)?;
        out.extend(flat_head(&self.head)?);
        Ok(out)
    }
    fn flat_half_grads(
        half: &Self::Half,
        grads: &mut Gradients<AmpF16, D>,
    ) -> Result<Vec<Flat<AmpF16, D>>, TrainError> {
        let mut out = flatten(&half.vit, Some(grads))?;
        out.extend(flat_head_grads(&half.head, grads)?);
        Ok(out)
    }
}

/// A linear head's weight and bias, flattened (they lie outside the module walk).
pub(crate) fn flat_head<P: MaePreset, E: Dtype, D: Device<E>>(
    head: &mae_core::Head<P, D, E>,
) -> Result<[Flat<E, D>; 2], TrainError> {
    Ok([
        flat(head.weight.clone()).map_err(device_err)?,
        flat(head.bias.clone()).map_err(device_err)?,
    ])
}

/// The gradients of a linear head's weight and bias, flattened.
pub(crate) fn flat_head_grads<P: MaePreset, E: Dtype, D: Device<E>>(
    head: &mae_core::Head<P, D, E>,
    grads: &mut Gradients<E, D>,
) -> Result<[Flat<E, D>; 2], TrainError> {
    Ok([
        flat_grad(grads, &head.weight).map_err(device_err)?,
        flat_grad(grads, &head.bias).map_err(device_err)?,
    ])
}

/// `t` as `[n]`.
fn flat<S: Shape, E: Dtype, D: Device<E>>(t: Tensor<S, E, D>) -> Result<Flat<E, D>, D::Err> {
    let n = t.shape().num_elements();
    t.try_reshape_like(&(n,))
}

/// The gradient of `t` (allocated as zeros where the backward did not reach it) as `[n]`.
fn flat_grad<S: Shape, E: Dtype, D: Device<E>>(
    grads: &mut Gradients<E, D>,
    t: &Tensor<S, E, D>,
) -> Result<Flat<E, D>, D::Err> {
    grads.try_alloc_for(t)?;
    flat(grads.get(t))
}

/// The trainable parameters of `model` (or, with `grads`, their gradients), flattened, in the
/// module walk's order.
fn flatten<M: TensorCollection<E, D>, E: Dtype, D: Device<E>>(
    model: &M,
    grads: Option<&mut Gradients<E, D>>,
) -> Result<Vec<Flat<E, D>>, TrainError> {
    let mut visitor = Flatten {
        grads,
        out: Vec::new(),
    };
    M::iter_tensors(&mut RecursiveWalker {
        m: model,
        f: &mut visitor,
    })
    .map_err(device_err)?;
    Ok(visitor.out)
}

/// The mixed-precision side of a training loop: the loss scaler, the half copy of the weights
/// for the current optimizer step, and whether its gradients overflowed. Per micro-batch,
/// [`MixedPrecision::forward_backward`] takes the place of `forward` + `backward`; after the
/// gradients' all-reduce, [`MixedPrecision::end_step`] is told whether the step was skipped.
pub struct MixedPrecision<M: AmpModel<D>, D: MaeDevice + MaeDevice<AmpF16>> {
    /// The loss scale and its history.
    pub scaler: LossScaler,
    half: Option<(M::Half, Gradients<AmpF16, D>)>,
    overflow: bool,
}

impl<M: AmpModel<D>, D: MaeDevice + MaeDevice<AmpF16>> MixedPrecision<M, D> {
    /// Starts with `scaler` (a resumed run's, or the default).
    pub fn new(scaler: LossScaler) -> Self {
        MixedPrecision {
            scaler,
            half: None,
            overflow: false,
        }
    }

    /// One micro-batch of `accum_iter`: `forward` runs on the half copy of `model` (made at the
    /// first micro-batch of a step) with a tape and the loss scale `scale / accum_iter`, and
    /// returns the scaled loss ([`Mae::forward_scaled`], [`soft_target_cross_entropy_scaled`]);
    /// the backward follows, and the gradients are added, unscaled, into `grads` (unless this
    /// step's gradients already overflowed). Returns the loss and the gradients.
    pub fn forward_backward(
        &mut self,
        dev: &D,
        model: &M,
        grads: Gradients<f32, D>,
        accum_iter: usize,
        forward: impl FnOnce(
            &M::Half,
            OwnedTape<AmpF16, D>,
            f64,
        ) -> Result<ScaledLoss<AmpF16, D, OwnedTape<AmpF16, D>>, TrainError>,
    ) -> Result<(f32, Gradients<f32, D>), TrainError> {
        let (half, half_grads) = match self.half.take() {
            Some(h) => h,
            None => {
                let h = model.to_half()?;
                let g = M::alloc_half_grads(&h)?;
                (h, g)
            }
        };
        let out = forward(
            &half,
            tape_from(dev, half_grads),
            self.scaler.scale / accum_iter as f64,
        )?;
        let loss = out.loss.as_vec()[0].to_f32();
        let mut half_grads = out.backward.try_backward().map_err(device_err)?;
        let mut grads = grads;
        if !self.overflow {
            let weights = model.flat_params()?;
            let half_flat = M::flat_half_grads(&half, &mut half_grads)?;
            let (g, finite) = add_unscaled(dev, grads, weights, half_flat, self.scaler.scale)?;
            grads = g;
            self.overflow = !finite;
        }
        M::zero_half_grads(&half, &mut half_grads)?;
        self.half = Some((half, half_grads));
        Ok((loss, grads))
    }

    /// Whether this step's gradients overflowed on this rank so far.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// The all-reduce's overflow scalar of a step ([`crate::dist::StepScalars::overflow`]): 1
    /// where `amp` is on and this step's gradients overflowed on this rank.
    pub fn overflow_flag(amp: Option<&Self>) -> f64 {
        match amp {
            Some(amp) if amp.overflow => 1.0,
            _ => 0.0,
        }
    }

    /// The line a run logs at its end.
    pub fn summary(&self) -> String {
        format!(
            "amp-f16: loss scale {}, {} step(s) skipped on gradient overflow",
            self.scaler.scale, self.scaler.skipped
        )
    }

    /// After the optimizer step: `skipped` says whether it was skipped for an overflow (on any
    /// rank). Updates the scale; the next step makes a new half copy.
    pub fn end_step(&mut self, skipped: bool) {
        self.scaler.update(skipped);
        self.overflow = false;
        self.half = None;
    }
}

/// Adds the half gradients `half_grads` (of the parameters `weights`, in the same order),
/// divided by `scale`, into `master_grads`, where the tensors lie. Returns the gradients and
/// whether the half gradients were all finite; where they were not, nothing is added (the step
/// is to be skipped).
fn add_unscaled<D: MaeDevice + MaeDevice<AmpF16>>(
    dev: &D,
    master_grads: Gradients<f32, D>,
    weights: Vec<Flat<f32, D>>,
    half_grads: Vec<Flat<AmpF16, D>>,
    scale: f64,
) -> Result<(Gradients<f32, D>, bool), TrainError> {
    if weights.len() != half_grads.len()
        || weights
            .iter()
            .zip(&half_grads)
            .any(|(w, g)| w.shape() != g.shape())
    {
        return Err(TrainError::Config(
            "the half copy of the model does not have the model's parameters".into(),
        ));
    }
    // one read of one number: the sum of every gradient is finite exactly when every gradient
    // is (each is at most f16's 65504, far from f32's range)
    let mut grads32 = Vec::with_capacity(half_grads.len());
    let mut total: Tensor<Rank0, f32, D> = dev.try_zeros().map_err(device_err)?;
    for g in half_grads {
        let g = g.try_to_dtype::<f32>().map_err(device_err)?;
        let sum = g.clone().try_sum::<Rank0, _>().map_err(device_err)?;
        total = total.try_add(sum).map_err(device_err)?;
        grads32.push(g);
    }
    if !total.as_vec()[0].is_finite() {
        return Ok((master_grads, false));
    }
    let mut tape = Some(tape_from(dev, master_grads));
    let mut probe: Option<Tensor<Rank0, f32, D, OwnedTape<f32, D>>> = None;
    for (w, g) in weights.into_iter().zip(grads32) {
        let w = match tape.take() {
            Some(t) => w.put_tape(t),
            None => w.retaped::<OwnedTape<f32, D>>(),
        };
        let term = w
            .try_mul(g)
            .and_then(|t| t.try_sum::<Rank0, _>())
            .map_err(device_err)?;
        probe = Some(match probe {
            None => term,
            Some(p) => p.try_add(term).map_err(device_err)?,
        });
    }
    let Some(probe) = probe else {
        return Err(TrainError::Config("the model has no parameters".into()));
    };
    let grads = probe
        .try_mul((1.0 / scale) as f32)
        .and_then(|p| p.try_backward())
        .map_err(device_err)?;
    Ok((grads, true))
}

/// Every trainable parameter, flattened to `[n]`, in the module walk's order: the parameters
/// themselves, or (with `grads`) their gradients.
struct Flatten<'a, E: Dtype, D: Storage<E>> {
    grads: Option<&'a mut Gradients<E, D>>,
    out: Vec<Tensor<(usize,), E, D>>,
}

impl<E: Dtype, D: Device<E>> TensorVisitor<E, D> for Flatten<'_, E, D> {
    type Viewer = ViewTensorRef;
    type Err = D::Err;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, D>,
        t: &Tensor<S, E, D>,
    ) -> Result<Option<Tensor<S, E, D>>, Self::Err> {
        if !opts.do_gradient_update {
            return Ok(None);
        }
        self.out.push(match &mut self.grads {
            Some(grads) => flat_grad(grads, t)?,
            None => flat(t.clone())?,
        });
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_the_growth_interval() {
        let mut s = LossScaler::default();
        assert_eq!(s.scale, 65536.0);
        s.update(true);
        assert_eq!((s.scale, s.skipped), (32768.0, 1));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!(s.scale, 32768.0);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        // an overflow resets the count towards growth
        for _ in 0..10 {
            s.update(false);
        }
        s.update(true);
        assert_eq!((s.scale, s.good_steps, s.skipped), (32768.0, 0, 2));
    }

    #[test]
    fn names_parse_and_print_back() {
        for p in [Precision::F32, Precision::AmpF16] {
            assert_eq!(p.to_string().parse::<Precision>().ok(), Some(p));
        }
        assert!("fp16".parse::<Precision>().is_err());
    }
}
