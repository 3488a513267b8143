//! Timing of one MAE pretraining step (forward, backward, AdamW update) on the CPU or a GPU.
//!
//! PyTorch counterpart: `bench` in `tools/reference/torch_mae.py`, which times the same step with
//! `torch.optim.AdamW(lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)`, `norm_pix_loss=True`,
//! fixed random images and fresh masking noise per step, and reports the median of `steps` timed
//! steps after one warm-up step. [`time_train_step`] does the same, so the two print comparable
//! JSON lines.
//!
//! The step is the engine's own ([`crate::step::forward_backward`], [`crate::step::reduce`],
//! [`crate::step::apply`]), the update the training loop's own [`AdamW`] (β 0.9/0.95, weight
//! decay 0.05 on the weights, not on biases and norms): the step timed is the step `mae pretrain`
//! takes.

use std::marker::PhantomData;
use std::time::Instant;

use mae_core::dfdx::prelude::*;
use mae_core::{AmpF16, Mae, MaeError, MaePreset, Masking, Preset, ScaledLoss};
use mae_data::loader::Batch;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::Serialize;

use crate::amp::{LossScaler, MixedPrecision, Precision};
use crate::device::{dispatch, DeviceKind, Job, RunDevice};
use crate::dist::{Comm, GradSync};
use crate::optim::{decayed_names, AdamW};
use crate::step::{apply, forward_backward, reduce, Half, Loss, Task, TrainModel};
use mae_core::MaeDevice;

/// What to time.
#[derive(Debug, Clone, Copy)]
pub struct StepBench {
    /// Model preset.
    pub preset: Preset,
    /// Images per step.
    pub batch: usize,
    /// Timed steps (after one warm-up step).
    pub steps: usize,
    /// Mask ratio.
    pub mask_ratio: f64,
    /// Reuse freed buffers between steps (`Cpu::enable_cache`).
    pub cache: bool,
    /// Our fused CPU kernels (`true`) or dfdx's own ops (`false`); see `mae_core::kernels`.
    pub fused: bool,
    /// The paper's "encoder w/ [M]" ablation: the encoder runs over every patch.
    pub mask_tokens_in_encoder: bool,
    /// Where the step runs.
    pub device: DeviceKind,
    /// `f32`, or `amp-f16` (half-precision forward and backward on a half copy of the f32
    /// weights, loss scaling, the f32 update: the step `mae pretrain --precision amp-f16` takes).
    pub precision: Precision,
}

impl Default for StepBench {
    fn default() -> Self {
        StepBench {
            preset: Preset::Tiny,
            batch: 64,
            steps: 5,
            mask_ratio: mae_core::masking::DEFAULT_MASK_RATIO,
            cache: true,
            fused: true,
            mask_tokens_in_encoder: false,
            device: DeviceKind::Cpu,
            precision: Precision::F32,
        }
    }
}

/// The result, in the same keys as the PyTorch reference's JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    /// Always `"mae-rs"`.
    pub r#impl: &'static str,
    /// Preset name.
    pub config: String,
    /// Images per step.
    pub batch: usize,
    /// Mask ratio.
    pub mask_ratio: f64,
    /// Median seconds per step.
    pub step_s: f64,
    /// Images per second at the median, over all ranks.
    pub img_per_s: f64,
    /// Every timed step, seconds.
    pub all_s: Vec<f64>,
    /// Median seconds of the optimizer's part of a step (AdamW update and zeroing the gradients).
    pub update_s: f64,
    /// Peak resident memory of the process (`VmHWM`), MiB; `None` where the OS does not say.
    pub peak_rss_mb: Option<f64>,
    /// On a GPU: device memory in use after the timed steps, MiB
    /// ([`crate::device::gpu_memory_used_mb`]: the steps' high-water mark with the allocation
    /// cache on, plus the CUDA context); `None` on the CPU.
    pub peak_gpu_mb: Option<f64>,
    /// `"fused"` or `"dfdx"`.
    pub kernels: &'static str,
    /// Whether the encoder ran over every patch (the Table 1c ablation).
    pub mask_tokens_in_encoder: bool,
    /// `cpu` or `cuda`.
    pub device: DeviceKind,
    /// `f32` or `amp-f16` (the PyTorch reference's key).
    pub precision: Precision,
    /// Data-parallel ranks (`mpirun -np N mae bench`); `batch` is per rank.
    pub ranks: usize,
    /// Median seconds of the gradient all-reduce in a step (the MPI calls; 0 with one rank).
    pub allreduce_s: f64,
    /// Median seconds spent copying gradients into and out of the all-reduce buckets.
    pub allreduce_copy_s: f64,
    /// f32 values all-reduced per step (0 with one rank).
    pub allreduce_values: usize,
}

/// The median (the upper one of an even count); NaN when empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The process's peak resident set size in MiB, from `/proc/self/status` (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The timed steps, as a [`Job`].
struct Timing<'a>(StepBench, &'a Comm);

impl Job for Timing<'_> {
    type Output = StepTiming;
    fn run<P: MaePreset, D: RunDevice>(self, dev: D) -> Result<StepTiming, crate::TrainError> {
        Ok(time_on::<P, D>(dev, &self.0, self.1)?)
    }
}

fn train_err(e: crate::TrainError) -> MaeError {
    match e {
        // the timed loop's own errors come back as they were
        crate::TrainError::Model(e) => e,
        crate::TrainError::Device(message) => MaeError::Device(message),
        other => MaeError::Device(other.to_string()),
    }
}

/// The step timed: pretraining's reconstruction loss on fixed images with fresh masks (or, for
/// the ablation, the encoder over every patch), through the engine's own step.
struct Timed<P> {
    imgs: Vec<f32>,
    mask_tokens_in_encoder: bool,
    preset: PhantomData<P>,
}

impl<P: MaePreset, D: RunDevice> Task<D> for Timed<P> {
    type Model = Mae<P, f32, D>;
    type Input = Masking;

    fn input(
        &mut self,
        _: &mut Self::Model,
        _: Batch,
        _: u64,
    ) -> Result<Masking, crate::TrainError> {
        Err(crate::TrainError::Config(
            "the benchmark makes its own masks, not from batches".into(),
        ))
    }

    fn loss(
        &self,
        model: &Self::Model,
        masking: &Masking,
        tape: OwnedTape<f32, D>,
    ) -> Result<Loss<D>, crate::TrainError> {
        let out = if self.mask_tokens_in_encoder {
            model.forward_mask_tokens_in_encoder(&self.imgs, masking, true, tape)?
        } else {
            model.forward(&self.imgs, masking, true, tape)?
        };
        Ok(out.loss)
    }

    fn scaled_loss(
        &self,
        half: &Half<Self::Model, D>,
        masking: &Masking,
        tape: OwnedTape<AmpF16, D>,
        scale: f64,
    ) -> Result<ScaledLoss<AmpF16, D, OwnedTape<AmpF16, D>>, crate::TrainError> {
        Ok(half.forward_scaled(&self.imgs, masking, true, scale, tape)?)
    }
}

/// The timed loop on device `D`.
fn time_on<P: MaePreset, D: RunDevice>(
    dev: D,
    cfg: &StepBench,
    comm: &Comm,
) -> Result<StepTiming, MaeError> {
    if cfg.cache {
        dev.enable_cache();
    }
    let mut model = Mae::<P, f32, D>::new(&dev)?;
    let mut opt = AdamW::new(0.05, decayed_names(&model).map_err(train_err)?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let task = Timed::<P> {
        imgs: (0..cfg.batch * P::image_numel())
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect(),
        mask_tokens_in_encoder: cfg.mask_tokens_in_encoder,
        preset: PhantomData,
    };
    let mut times = Vec::with_capacity(cfg.steps);
    let mut update_times = Vec::with_capacity(cfg.steps);
    let mut reduce_times = Vec::with_capacity(cfg.steps);
    let mut copy_times = Vec::with_capacity(cfg.steps);
    let mut sync = GradSync::default();
    // the gradient buffers are allocated once and zeroed after each step, as in training
    let mut grads = model.alloc_gradients().map_err(train_err)?;
    let mut amp = match cfg.precision {
        Precision::F32 => None,
        Precision::AmpF16 if cfg.mask_tokens_in_encoder => {
            return Err(MaeError::Device(
                "--mask-tokens-in-encoder is timed in f32 only".into(),
            ))
        }
        Precision::AmpF16 => Some(MixedPrecision::<Mae<P, f32, D>, D>::new(
            LossScaler::default(),
        )),
    };
    for step in 0..=cfg.steps {
        let masking = Masking::random(&mut rng, cfg.batch, P::num_patches(), cfg.mask_ratio)?;
        let start = Instant::now();
        grads = forward_backward(&task, &dev, &model, amp.as_mut(), grads, &masking, 1)
            .map_err(train_err)?
            .1;
        let (reduce_before, copy_before) = (sync.reduce_time, sync.copy_time);
        let reduced = reduce(
            &mut model,
            &mut sync,
            comm,
            &mut grads,
            amp.as_ref(),
            0.0,
            false,
        )
        .map_err(train_err)?;
        let update_start = Instant::now();
        let skip = reduced.overflow > 0.0;
        apply(&mut model, &mut opt, &mut grads, amp.as_mut(), skip, 1.5e-4).map_err(train_err)?;
        // the host waits for the device's queue to drain (a no-op on the Cpu), so the time is the
        // step's and not its launch's
        dev.try_synchronize()
            .map_err(|e| MaeError::Device(format!("{e:?}")))?;
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
            update_times.push(update_start.elapsed().as_secs_f64());
            reduce_times.push((sync.reduce_time - reduce_before).as_secs_f64());
            copy_times.push((sync.copy_time - copy_before).as_secs_f64());
        }
    }
    let step_s = median(&times);
    Ok(StepTiming {
        r#impl: "mae-rs",
        config: P::PRESET.to_string(),
        batch: cfg.batch,
        mask_ratio: cfg.mask_ratio,
        step_s,
        img_per_s: (cfg.batch * comm.world_size()) as f64 / step_s,
        all_s: times,
        update_s: median(&update_times),
        peak_rss_mb: peak_rss_mb(),
        peak_gpu_mb: if <D as MaeDevice>::keeps_host_memory() {
            None
        } else {
            crate::device::gpu_memory_used_mb()
        },
        kernels: match (cfg.device, cfg.fused) {
            (DeviceKind::Cpu, true) => "fused",
            (DeviceKind::Cpu, false) => "dfdx",
            (DeviceKind::Cuda, _) => "dfdx-cuda",
        },
        mask_tokens_in_encoder: cfg.mask_tokens_in_encoder,
        device: cfg.device,
        precision: cfg.precision,
        ranks: comm.world_size(),
        allreduce_s: median(&reduce_times),
        allreduce_copy_s: median(&copy_times),
        allreduce_values: sync.values,
    })
}

/// Times `steps` training steps of `preset` at `batch` images (after one warm-up step) and
/// returns the median, as one rank of `comm` ([`Comm::single`] for one process): with several
/// ranks each step also averages the gradients over them (the all-reduce of training, timed
/// apart as `allreduce_s`).
pub fn time_train_step(cfg: &StepBench, comm: &Comm) -> Result<StepTiming, MaeError> {
    let bad = !(1..=crate::config::MAX_BATCH).contains(&cfg.batch)
        || !(1..=1_000_000).contains(&cfg.steps);
    if bad {
        return Err(MaeError::InputShape {
            what: "benchmark",
            expected: format!(
                "--batch-size in 1..={} and --steps in 1..=1000000",
                crate::config::MAX_BATCH
            ),
            got: format!("batch {}, steps {}", cfg.batch, cfg.steps),
        });
    }
    let d = cfg.preset.dims();
    let side = d.img_size / d.patch_size.max(1);
    mae_core::masking::check_len_keep(side * side, cfg.mask_ratio)?;
    if cfg.device == DeviceKind::Cpu {
        mae_core::kernels::set_fused(cfg.fused);
    }
    dispatch(cfg.preset, cfg.device, 0, Timing(*cfg, comm)).map_err(train_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_steps_or_batch_is_an_error() {
        let bad = StepBench {
            steps: 0,
            ..StepBench::default()
        };
        assert!(time_train_step(&bad, &Comm::single()).is_err());
    }
}
