//! AdamW with the official parameter groups: weight decay on weights, none on biases and 1-D
//! parameters; in fine-tuning, layer-wise learning-rate decay (`util/lr_decay.py`).
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
//!
//! On the `Cpu` the step reads the gradients where they lie and runs on all cores. On a device
//! that keeps its buffers elsewhere (`Cuda`) the same step runs there as dfdx ops, with the
//! moments kept on the device between steps ([`AdamW::update_on_device`]); they come back to the
//! host only for a checkpoint ([`AdamW::moments`]).

use std::any::Any;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mae_core::dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorName,
};
use mae_core::dfdx::prelude::*;

use rayon::prelude::*;

use mae_core::device::MaeDevice;
use mae_core::host::{host_copy_into, host_tensor, host_vec};

use mae_core::weights::{named_tensors, NamedTensor};
use mae_core::{Mae, MaePreset};

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
    /// Moments by parameter name, on the host. While the steps run on a device
    /// ([`AdamW::update_on_device`]) the moments there are the current ones: read them with
    /// [`AdamW::moments`], replace them with [`AdamW::set_moments`].
    pub state: BTreeMap<String, Moments>,
    /// Learning-rate multipliers by parameter name (layer-wise decay in fine-tuning, as
    /// `param_group["lr_scale"]`); 1 for names not listed.
    pub lr_scale: BTreeMap<String, f64>,
    /// The factor every gradient is multiplied by as the step reads it (1, or the
    /// `clip_grad_norm_` coefficient of [`crate::clip`] for this step).
    pub grad_scale: f32,
    /// `--clip-grad`: the largest total L2 norm of the gradients; a task that sets it computes
    /// [`AdamW::grad_scale`] from it before each step.
    pub clip_grad: Option<f64>,
    /// The moments on the device, when the steps run there.
    on_device: Option<Box<dyn DeviceMoments>>,
}

impl fmt::Debug for AdamW {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdamW")
            .field("betas", &self.betas)
            .field("eps", &self.eps)
            .field("weight_decay", &self.weight_decay)
            .field("step", &self.step)
            .field("parameters with moments", &self.state.len())
            .field("moments on a device", &self.on_device.is_some())
            .finish()
    }
}

/// The moments of the parameters stepped on a device, by name.
trait DeviceMoments {
    /// Copies of the moments on the host.
    fn download(&self) -> Result<BTreeMap<String, Moments>, TrainError>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// `exp_avg` and `exp_avg_sq` of each parameter as flat device tensors.
struct MomentsOn<D: Storage<f32>> {
    by_name: BTreeMap<String, [Tensor<(usize,), f32, D>; 2]>,
}

impl<D: Device<f32>> DeviceMoments for MomentsOn<D> {
    fn download(&self) -> Result<BTreeMap<String, Moments>, TrainError> {
        self.by_name
            .iter()
            .map(|(name, [m, v])| {
                Ok((
                    name.clone(),
                    Moments {
                        exp_avg: host_vec(m)?,
                        exp_avg_sq: host_vec(v)?,
                    },
                ))
            })
            .collect()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The scalars of one parameter's step.
struct StepScalars {
    b1: f32,
    b2: f32,
    /// `lr / (1 − β₁ᵗ)`.
    step_size: f32,
    /// `sqrt(1 − β₂ᵗ)`.
    bc2_sqrt: f32,
    eps: f32,
    /// `1 − lr·wd` for the decayed group, else 1.
    decay: f32,
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
            grad_scale: 1.0,
            clip_grad: None,
            on_device: None,
        }
    }

    /// The current moments by parameter name, copied from the device where the steps run there.
    pub fn moments(&self) -> Result<Cow<'_, BTreeMap<String, Moments>>, TrainError> {
        match &self.on_device {
            None => Ok(Cow::Borrowed(&self.state)),
            Some(device) => {
                let mut all = self.state.clone();
                all.extend(device.download()?);
                Ok(Cow::Owned(all))
            }
        }
    }

    /// Replaces every moment (a loaded checkpoint's); a device takes them up at its next step.
    pub fn set_moments(&mut self, moments: BTreeMap<String, Moments>) {
        self.state = moments;
        self.on_device = None;
    }

    /// The step's scalars for parameter `name` at learning rate `lr`.
    fn scalars(&self, name: &str, lr: f64) -> StepScalars {
        let lr = lr * self.lr_scale.get(name).copied().unwrap_or(1.0);
        let (b1, b2) = self.betas;
        let t = self.step.max(1) as i32;
        StepScalars {
            b1: b1 as f32,
            b2: b2 as f32,
            step_size: (lr / (1.0 - b1.powi(t))) as f32,
            bc2_sqrt: (1.0 - b2.powi(t)).sqrt() as f32,
            eps: self.eps as f32,
            decay: if self.decayed.contains(name) {
                (1.0 - lr * self.weight_decay) as f32
            } else {
                1.0
            },
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
        let sc = self.scalars(name, lr);
        let (b1, b2, step_size, bc2_sqrt, eps, decay) =
            (sc.b1, sc.b2, sc.step_size, sc.bc2_sqrt, sc.eps, sc.decay);
        let gs = self.grad_scale;
        let m = self
            .state
            .entry(name.to_string())
            .or_insert_with(|| Moments {
                exp_avg: vec![0.0; p.len()],
                exp_avg_sq: vec![0.0; p.len()],
            });
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
                    let g = g[i] * gs;
                    p[i] *= decay;
                    m1[i] = m1[i] * b1 + g * (1.0 - b1);
                    m2[i] = m2[i] * b2 + g * g * (1.0 - b2);
                    let denom = m2[i].sqrt() / bc2_sqrt + eps;
                    p[i] -= step_size * m1[i] / denom;
                }
            });
    }

    /// The same step as [`AdamW::apply`] as dfdx ops on the parameter's own device, with the
    /// moments kept there.
    fn apply_on_device<S: Shape, D: Device<f32>>(
        &mut self,
        name: &str,
        param: &mut Tensor<S, f32, D>,
        grad: Tensor<S, f32, D>,
        lr: f64,
    ) -> Result<(), TrainError> {
        let sc = self.scalars(name, lr);
        let n = param.shape().num_elements();
        let dev = param.device().clone();
        let store = self
            .on_device
            .get_or_insert_with(|| {
                Box::new(MomentsOn::<D> {
                    by_name: BTreeMap::new(),
                })
            })
            .as_any_mut()
            .downcast_mut::<MomentsOn<D>>()
            .ok_or_else(|| {
                TrainError::Config("AdamW's moments are on another device than the model".into())
            })?;
        let [m, v] = match store.by_name.remove(name) {
            Some(moments) => moments,
            // first step here: the host's moments (a loaded checkpoint's) or zeros
            None => match self.state.get(name) {
                Some(host) if host.exp_avg.len() == n && host.exp_avg_sq.len() == n => [
                    host_tensor(&dev, &host.exp_avg, (n,))?,
                    host_tensor(&dev, &host.exp_avg_sq, (n,))?,
                ],
                _ => [
                    dev.try_zeros_like(&(n,)).map_err(device_err)?,
                    dev.try_zeros_like(&(n,)).map_err(device_err)?,
                ],
            },
        };
        let mut g = grad.try_reshape_like(&(n,)).map_err(device_err)?;
        if self.grad_scale != 1.0 {
            g = g.try_mul(self.grad_scale).map_err(device_err)?;
        }
        let m = m
            .try_mul(sc.b1)
            .and_then(|m| m.try_add(g.clone().try_mul(1.0 - sc.b1)?))
            .map_err(device_err)?;
        let v = v
            .try_mul(sc.b2)
            .and_then(|v| v.try_add(g.try_square()?.try_mul(1.0 - sc.b2)?))
            .map_err(device_err)?;
        let update = v
            .clone()
            .try_sqrt()
            .and_then(|d| d.try_div(sc.bc2_sqrt)?.try_add(sc.eps))
            .and_then(|denom| m.clone().try_div(denom))
            .and_then(|u| u.try_reshape_like(param.shape()))
            .map_err(device_err)?;
        // p ← decay·p − step_size·m/denom
        param
            .try_axpy(sc.decay, &update, -sc.step_size)
            .map_err(device_err)?;
        store.by_name.insert(name.to_string(), [m, v]);
        Ok(())
    }

    /// One step with learning rate `lr` over every trainable tensor of `model`, reading its
    /// gradient from `grads` (which must hold one for each, as `model.alloc_grads()` makes).
    ///
    /// `grads` is borrowed mutably so that on the `Cpu` the gradients are read where they lie
    /// instead of copied out (their values are left unchanged). Other devices run
    /// [`AdamW::update_on_device`].
    pub fn update<M: TensorCollection<f32, D>, D: MaeDevice>(
        &mut self,
        model: &mut M,
        grads: &mut Gradients<f32, D>,
        lr: f64,
    ) -> Result<(), TrainError> {
        self.walk(model, grads, lr, false)
    }

    /// [`AdamW::update`] as dfdx ops on the model's device, with the moments kept there (what a
    /// device without host buffers runs; on the `Cpu`, the tests' check of that path).
    pub fn update_on_device<M: TensorCollection<f32, D>, D: MaeDevice>(
        &mut self,
        model: &mut M,
        grads: &mut Gradients<f32, D>,
        lr: f64,
    ) -> Result<(), TrainError> {
        self.walk(model, grads, lr, true)
    }

    fn walk<M: TensorCollection<f32, D>, D: MaeDevice>(
        &mut self,
        model: &mut M,
        grads: &mut Gradients<f32, D>,
        lr: f64,
        on_device: bool,
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
            on_device,
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
    /// Step with dfdx ops on the device even where host slices are available.
    on_device: bool,
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
        if !self.on_device {
            let grad = self.grads.get_or_alloc_mut(param).map_err(device_err)?;
            if let Some(grad) = D::host_slice_mut(grad) {
                // the gradient and the parameter where they lie (Cpu, the patched dfdx's storage
                // access): no copy
                if let Some(p) = D::tensor_host_slice_mut(param) {
                    self.opt.apply(&name, p, grad, self.lr);
                    return Ok(None);
                }
                // a parameter not laid out row-major: one memcpy out and one back
                let n = param.shape().num_elements();
                if self.param_buffer.len() < n {
                    self.param_buffer.resize(n, 0.0);
                }
                let p = &mut self.param_buffer[..n];
                host_copy_into(param, p)?;
                self.opt.apply(&name, p, grad, self.lr);
                param.copy_from(p);
                return Ok(None);
            }
        }
        // a parameter the step did not reach has a zero gradient (`get` panics on a missing one)
        self.grads.try_alloc_for(param).map_err(device_err)?;
        let grad = self.grads.get(param);
        self.opt.apply_on_device(&name, param, grad, self.lr)?;
        Ok(None)
    }
}

/// The parameters that get weight decay in pretraining: official shape of 2 or more dims, not a
/// bias.
pub fn decayed_names<P: MaePreset, D: Device<f32>>(
    model: &Mae<P, f32, D>,
) -> Result<BTreeSet<String>, TrainError> {
    Ok(named_tensors(model)?
        .into_iter()
        .filter(|t| t.trainable && t.shape.len() > 1 && !t.name.ends_with(".bias"))
        .map(|t| t.name)
        .collect())
}

/// `util/lr_decay.get_layer_id_for_vit`: 0 for `cls_token`, `pos_embed` and `patch_embed`,
/// `i + 1` for `blocks.i`, `num_layers` (= depth + 1) for the rest (`fc_norm`, `head`).
pub fn layer_id_for_vit(name: &str, num_layers: usize) -> usize {
    if name == "cls_token" || name == "pos_embed" || name.starts_with("patch_embed") {
        0
    } else if let Some(rest) = name.strip_prefix("blocks.") {
        rest.split('.')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .map_or(num_layers, |i| i + 1)
    } else {
        num_layers
    }
}

/// `util/lr_decay.param_groups_lrd` for a ViT of `depth` blocks: the names that get weight decay
/// (official shape of 2+ dims, not `pos_embed` / `cls_token`, the model's `no_weight_decay`) and
/// each parameter's lr scale `layer_decay^(depth + 1 − layer_id)`.
pub fn param_groups_lrd(
    params: &[NamedTensor],
    depth: usize,
    layer_decay: f64,
) -> (BTreeSet<String>, BTreeMap<String, f64>) {
    let num_layers = depth + 1;
    let mut decayed = BTreeSet::new();
    let mut scales = BTreeMap::new();
    for p in params.iter().filter(|p| p.trainable) {
        let no_decay = p.shape.len() == 1 || p.name == "pos_embed" || p.name == "cls_token";
        if !no_decay {
            decayed.insert(p.name.clone());
        }
        let id = layer_id_for_vit(&p.name, num_layers);
        scales.insert(p.name.clone(), layer_decay.powi((num_layers - id) as i32));
    }
    (decayed, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_scale_steps_as_if_the_gradients_were_scaled() {
        // the clip coefficient is applied as the step reads each gradient: the same weights and
        // moments as stepping on gradients multiplied beforehand (host and device paths)
        let grad = [0.5f32, -2.0, 3.0, 0.25];
        let scaled: Vec<f32> = grad.iter().map(|g| g * 0.375).collect();
        let run = |g: &[f32], scale: f32| {
            let mut opt = AdamW::new(0.05, ["w".to_string()].into());
            opt.grad_scale = scale;
            let mut p = vec![1.0f32, 2.0, -1.0, 0.5];
            for _ in 0..3 {
                opt.step += 1;
                opt.update_named("w", &mut p, g, 1e-2).expect("fits");
            }
            (p, opt.state["w"].clone())
        };
        assert_eq!(run(&grad, 0.375), run(&scaled, 1.0));
        assert_ne!(run(&grad, 0.375), run(&grad, 1.0));

        let dev = Cpu::default();
        let on_device = |g: &[f32], scale: f32| {
            let mut opt = AdamW::new(0.05, ["w".to_string()].into());
            opt.grad_scale = scale;
            let mut p = dev.tensor_from_vec(vec![1.0f32, 2.0, -1.0, 0.5], (4,));
            let g = dev.tensor_from_vec(g.to_vec(), (4,));
            opt.step = 1;
            opt.apply_on_device("w", &mut p, g, 1e-2).expect("step");
            p.as_vec()
        };
        assert_eq!(on_device(&grad, 0.375), on_device(&scaled, 1.0));
    }

    fn t(name: &str, shape: &[usize]) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data: Vec::new(),
            trainable: true,
        }
    }

    #[test]
    fn layer_ids_follow_lr_decay_py() {
        // ViT with 12 blocks: num_layers 13
        assert_eq!(layer_id_for_vit("cls_token", 13), 0);
        assert_eq!(layer_id_for_vit("pos_embed", 13), 0);
        assert_eq!(layer_id_for_vit("patch_embed.proj.weight", 13), 0);
        assert_eq!(layer_id_for_vit("blocks.0.norm1.weight", 13), 1);
        assert_eq!(layer_id_for_vit("blocks.11.mlp.fc2.bias", 13), 12);
        assert_eq!(layer_id_for_vit("fc_norm.weight", 13), 13);
        assert_eq!(layer_id_for_vit("head.bias", 13), 13);
    }

    #[test]
    fn groups_scale_by_depth_and_skip_decay_on_vectors_and_embeddings() {
        let params = [
            t("cls_token", &[1, 1, 8]),
            t("pos_embed", &[1, 5, 8]),
            t("patch_embed.proj.weight", &[8, 3, 2, 2]),
            t("patch_embed.proj.bias", &[8]),
            t("blocks.0.attn.qkv.weight", &[24, 8]),
            t("blocks.1.norm1.weight", &[8]),
            t("fc_norm.bias", &[8]),
            t("head.weight", &[10, 8]),
        ];
        let (decayed, scales) = param_groups_lrd(&params, 2, 0.5);
        assert_eq!(
            decayed.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "blocks.0.attn.qkv.weight",
                "head.weight",
                "patch_embed.proj.weight"
            ]
        );
        // num_layers 3: scale = 0.5^(3 − id)
        assert_eq!(scales["cls_token"], 0.125);
        assert_eq!(scales["patch_embed.proj.bias"], 0.125);
        assert_eq!(scales["blocks.0.attn.qkv.weight"], 0.25);
        assert_eq!(scales["blocks.1.norm1.weight"], 0.5);
        assert_eq!(scales["fc_norm.bias"], 1.0);
        assert_eq!(scales["head.weight"], 1.0);
    }
}
