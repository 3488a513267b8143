//! Gradient clipping by the total L2 norm (`--clip-grad`).
//!
//! PyTorch counterpart: `torch.nn.utils.clip_grad_norm_(parameters, max_norm)` as the official
//! `NativeScalerWithGradNormCount` calls it (after unscaling, before `optimizer.step()`): the norm
//! of the per-tensor L2 norms, then every gradient multiplied by
//! `min(1, max_norm / (total_norm + 1e-6))`.

use mae_core::device::MaeDevice;
use mae_core::dfdx::prelude::*;

use crate::error::device_err;
use crate::error::TrainError;

/// The factor `clip_grad_norm_` multiplies every gradient by: `max_norm / (total_norm + 1e-6)`
/// clamped to at most 1 (computed in f32 as torch does).
pub fn clip_coef(total_norm: f64, max_norm: f64) -> f32 {
    let coef = max_norm as f32 / (total_norm as f32 + 1e-6);
    coef.min(1.0)
}

/// The L2 norm of every trainable parameter's gradient of `model` in `grads`, together with the
/// host gradients `extra` (a head outside the module walk): `sqrt(Σ ‖g‖²)`, accumulated in f64.
pub fn grad_norm<M: TensorCollection<f32, D>, D: MaeDevice>(
    model: &mut M,
    grads: &mut Gradients<f32, D>,
    extra: &[&[f32]],
) -> Result<f64, TrainError> {
    let mut visitor = SquaredNorm { grads, sum: 0.0 };
    M::iter_tensors(&mut RecursiveWalker {
        m: (model, String::new()),
        f: &mut visitor,
    })?;
    let extra: f64 = extra.iter().map(|g| squared(g)).sum();
    Ok((visitor.sum + extra).sqrt())
}

fn squared(g: &[f32]) -> f64 {
    g.iter().map(|&v| v as f64 * v as f64).sum()
}

struct SquaredNorm<'a, D: Storage<f32>> {
    grads: &'a mut Gradients<f32, D>,
    sum: f64,
}

impl<D: MaeDevice> TensorVisitor<f32, D> for SquaredNorm<'_, D> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = TrainError;
    type E2 = f32;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, f32, D>,
        (param, _name): (&mut Tensor<S, f32, D>, String),
    ) -> Result<Option<Tensor<S, f32, D>>, Self::Err> {
        if !opts.do_gradient_update {
            return Ok(None);
        }
        let grad = self.grads.get_or_alloc_mut(param).map_err(device_err)?;
        if let Some(g) = D::host_slice_mut(grad) {
            self.sum += squared(g);
        } else {
            // where the gradient lies (a GPU): one scalar comes back
            let g = self.grads.get(param);
            let n = g.shape().num_elements();
            let s = g
                .try_reshape_like(&(n,))
                .and_then(|g| g.try_square()?.try_sum::<Rank0, _>())
                .map_err(device_err)?;
            self.sum += s.as_vec()[0] as f64;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coefficient_is_torchs() {
        // below the bound: untouched; above: scaled to the bound (up to torch's 1e-6)
        assert_eq!(clip_coef(0.5, 1.0), 1.0);
        assert_eq!(clip_coef(1.0, 1.0), 1.0 / (1.0 + 1e-6));
        let c = clip_coef(8.0, 2.0);
        assert!((c - 0.25).abs() < 1e-7, "{c}");
    }

    #[test]
    fn the_norm_covers_the_walk_and_the_extras() {
        let dev = Cpu::default();
        let mut model = dev.build_module::<mae_core::dfdx::nn::builders::Linear<2, 2>, f32>();
        let mut grads = model.alloc_grads();
        {
            let g = grads.get_or_alloc_mut(&model.weight).expect("alloc");
            g.copy_from_slice(&[3.0, 0.0, 0.0, 4.0]);
        }
        let norm = grad_norm(&mut model, &mut grads, &[&[12.0]]).expect("norm");
        assert!((norm - 13.0).abs() < 1e-12, "{norm}");
    }
}
