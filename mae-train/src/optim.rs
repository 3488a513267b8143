//! AdamW with the official parameter groups: weight decay on weights, none on biases and 1-D
//! parameters.
//!
//! PyTorch counterpart: `torch.optim.AdamW(param_groups_weight_decay(model, wd), lr, betas=(0.9,
//! 0.95))` in `main_pretrain.py` (timm's `param_groups_weight_decay`: no decay where
//! `param.ndim <= 1 or name.endswith(".bias")`, judged on the official shapes, so `cls_token`
//! `[1, 1, D]` and `mask_token` are decayed). dfdx's `Adam` applies one decay to every parameter
//! and keeps its moments private (so they could not be checkpointed); this one keeps them by name.
//!
//! The step, per parameter, as PyTorch's single-tensor AdamW computes it:
//! `p ← p·(1 − lr·wd)`; `m ← β₁m + (1−β₁)g`; `v ← β₂v + (1−β₂)g²`;
//! `p ← p − (lr / (1−β₁ᵗ)) · m / (sqrt(v) / sqrt(1−β₂ᵗ) + ε)`.

use std::collections::{BTreeMap, BTreeSet};

use mae_core::dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorName,
};
use mae_core::dfdx::prelude::*;

use rayon::prelude::*;

use mae_core::device::MaeDevice;
use mae_core::layers::{host_copy_into, host_vec};

use crate::error::{device_err, TrainError};

/// The first and second moments of one parameter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Moments {
    /// `exp_avg`.
    pub exp_avg: Vec<f32>,
    /// `exp_avg_sq`.
    pub exp_avg_sq: Vec<f32>,
}

/// AdamW state and hyper-parameters (the learning rate is given per step).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    /// β₁, β₂.
    pub betas: (f64, f64),
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay of the decayed group.
    pub weight_decay: f64,
    /// Optimizer steps taken.
    pub step: u64,
    /// Names of the parameters that get weight decay.
    pub decayed: BTreeSet<String>,
    /// Moments by parameter name.
    pub state: BTreeMap<String, Moments>,
    /// Learning-rate multipliers by parameter name (layer-wise decay in fine-tuning, as
    /// `param_group["lr_scale"]`); 1 for names not listed.
    pub lr_scale: BTreeMap<String, f64>,
}

impl AdamW {
    /// The recipe's AdamW (β 0.9/0.95, ε 1e-8) with `weight_decay` on the parameters named in
    /// `decayed`.
    pub fn new(weight_decay: f64, decayed: BTreeSet<String>) -> Self {
        AdamW {
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay,
            step: 0,
            decayed,
            state: BTreeMap::new(),
            lr_scale: BTreeMap::new(),
        }
    }

    /// The step of one parameter held on the host (a tensor outside the module walk, such as the
    /// classifier's head), at the current step count: call it after [`AdamW::update`] of the
    /// same step.
    pub fn update_named(
        &mut self,
        name: &str,
        p: &mut [f32],
        grad: &[f32],
        lr: f64,
    ) -> Result<(), TrainError> {
        if p.len() != grad.len() {
            return Err(TrainError::Config(format!(
                "`{name}`: {} values, gradient {}",
                p.len(),
                grad.len()
            )));
        }
        self.apply(name, p, grad, lr);
        Ok(())
    }

    /// The AdamW step of one parameter, with its learning-rate multiplier and decay group.
    fn apply(&mut self, name: &str, p: &mut [f32], grad: &[f32], lr: f64) {
        let lr = lr * self.lr_scale.get(name).copied().unwrap_or(1.0);
        let (b1, b2) = self.betas;
        let t = self.step.max(1) as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let eps = self.eps as f32;
        let decay = if self.decayed.contains(name) {
            (1.0 - lr * self.weight_decay) as f32
        } else {
            1.0
        };
        let m = self
            .state
            .entry(name.to_string())
            .or_insert_with(|| Moments {
                exp_avg: vec![0.0; p.len()],
                exp_avg_sq: vec![0.0; p.len()],
            });
        let (b1f, b2f) = (b1 as f32, b2 as f32);
        // elementwise, so the result is the same whatever the number of threads
        const CHUNK: usize = 64 * 1024;
        p.par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(
                m.exp_avg
                    .par_chunks_mut(CHUNK)
                    .zip(m.exp_avg_sq.par_chunks_mut(CHUNK)),
            )
            .for_each(|((p, g), (m1, m2))| {
                for i in 0..p.len() {
                    let g = g[i];
                    p[i] *= decay;
                    m1[i] = m1[i] * b1f + g * (1.0 - b1f);
                    m2[i] = m2[i] * b2f + g * g * (1.0 - b2f);
                    let denom = m2[i].sqrt() / bc2_sqrt + eps;
                    p[i] -= step_size * m1[i] / denom;
                }
            });
    }

    /// One step with learning rate `lr` over every trainable tensor of `model`, reading its
    /// gradient from `grads` (which must hold one for each, as `model.alloc_grads()` makes).
    ///
    /// `grads` is borrowed mutably so that on the `Cpu` the gradients are read where they lie
    /// instead of copied out (their values are left unchanged).
    pub fn update<M: TensorCollection<f32, D>, D: MaeDevice>(
        &mut self,
        model: &mut M,
        grads: &mut Gradients<f32, D>,
        lr: f64,
    ) -> Result<(), TrainError> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(TrainError::Config(format!(
                "learning rate {lr} is not valid"
            )));
        }
        self.step += 1;
        let mut visitor = Step {
            opt: self,
            grads,
            lr,
            param_buffer: Vec::new(),
        };
        M::iter_tensors(&mut RecursiveWalker {
            m: (model, String::new()),
            f: &mut visitor,
        })?;
        Ok(())
    }
}

struct Step<'a, D: Storage<f32>> {
    opt: &'a mut AdamW,
    grads: &'a mut Gradients<f32, D>,
    lr: f64,
    /// The host copy of the parameter being stepped, reused from one parameter to the next.
    param_buffer: Vec<f32>,
}

impl<D: MaeDevice> TensorVisitor<f32, D> for Step<'_, D> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = TrainError;
    type E2 = f32;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, f32, D>,
        (param, name): (&mut Tensor<S, f32, D>, String),
    ) -> Result<Option<Tensor<S, f32, D>>, Self::Err> {
        if !opts.do_gradient_update {
            return Ok(None);
        }
        // the parameter: one memcpy out of its storage and one back (dfdx keeps storage private)
        let n = param.shape().num_elements();
        if self.param_buffer.len() < n {
            self.param_buffer.resize(n, 0.0);
        }
        let p = &mut self.param_buffer[..n];
        host_copy_into(param, p)?;
        let grad = self.grads.get_or_alloc_mut(param).map_err(device_err)?;
        match D::host_slice_mut(grad) {
            // the gradient where it lies (Cpu)
            Some(grad) => self.opt.apply(&name, p, grad, self.lr),
            None => {
                let grad = host_vec(&self.grads.get(param))?;
                self.opt.apply(&name, p, &grad, self.lr)
            }
        }
        param.copy_from(p);
        Ok(None)
    }
}
