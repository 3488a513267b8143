//! The pretraining task: the MAE's masked reconstruction on the engine.
//!
//! PyTorch counterpart: `main_pretrain.py` + `engine_pretrain.train_one_epoch`: the MAE of
//! `models_mae.py` trained with AdamW (β 0.9/0.95, weight decay on weights, not biases and
//! norms), RandomResizedCrop + flip, a fresh mask per image and step; the loop itself is the
//! [`crate::engine`]'s. With `--eval-every N`, a kNN evaluation of the encoder every N epochs.

use crate::run::progress::Hooks;
use std::sync::Arc;

use mae_core::dfdx::prelude::*;
use mae_core::{AmpF16, Mae, MaeDevice, MaePreset, Masking, ScaledLoss};
use mae_data::augment::{normalization, Augment, Transform};
use mae_data::loader::{Batch, Loader, LoaderConfig};
use mae_data::{Dataset, SplitName};
use serde::Serialize;

use crate::config::PretrainConfig;
use crate::device::{dispatch, Job, RunDevice};
use crate::dist::{Comm, GradSync, StepScalars};
use crate::engine::{loop_settings, BatchChange, LoopSettings, RunConfig, RunInputs};
use crate::error::{device_err, TrainError};
use crate::optim::{decayed_names, AdamW};
use crate::run::{position_rng, Resume, RunSummary};
use crate::rundir::RunKind;
use crate::runlog::RunLog;
use crate::step::{Half, Loss, Task, TrainModel};

/// Runs pretraining as configured, as one rank of `comm` ([`Comm::single`] for one process;
/// `config.world_size` must be `comm.world_size()`): each rank takes its slice of every global
/// batch, gradients are averaged over the ranks once per optimizer step, and every rank applies
/// the same AdamW step. Rank 0 alone writes the configuration, metrics, progress and
/// checkpoints, and reports its progress to `hooks.observer`. `hooks.stop` is polled after every
/// optimizer step (set it from a signal handler): a stop asked on any rank stops all of them
/// after the same step, with a checkpoint, and the run returns [`crate::Outcome::Interrupted`].
pub fn pretrain(
    config: &PretrainConfig,
    resume: &Resume,
    hooks: Hooks,
    comm: &Comm,
) -> Result<RunSummary, TrainError> {
    let inputs = RunInputs::open(config, resume, hooks, comm)?;
    let job = Run { config, inputs };
    dispatch(config.model.preset, config.device, config.seed, job)
}

/// A pretraining run, as a [`Job`].
struct Run<'a> {
    config: &'a PretrainConfig,
    inputs: RunInputs<'a>,
}

/// The masks of a batch: each sample's noise is drawn from an RNG keyed by the seed, the epoch
/// and the sample's index in the dataset, so a sample is masked the same way whichever rank and
/// micro-batch it lands in (1 rank at batch B and 2 ranks at B/2 see the same masks), and
/// resuming needs no RNG state.
pub fn batch_masking(
    seed: u64,
    epoch: u64,
    indices: &[usize],
    num_patches: usize,
    mask_ratio: f64,
) -> Result<Masking, TrainError> {
    use rand::Rng;
    let mut noise = Vec::with_capacity(indices.len() * num_patches);
    for &index in indices {
        let mut rng = position_rng(seed ^ 0x6d61_652d_6d61_736b, epoch, index);
        noise.extend((0..num_patches).map(|_| rng.gen::<f32>()));
    }
    Ok(Masking::from_noise(
        &noise,
        indices.len(),
        num_patches,
        mask_ratio,
    )?)
}

/// One line of a pretraining run's `eval.jsonl` (`--eval-every`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct KnnLine {
    /// Epochs completed.
    pub epoch: u64,
    /// Optimizer steps done.
    pub step: u64,
    /// kNN top-1 on the val split, %.
    pub knn_top1: f64,
    /// kNN top-5, %.
    pub knn_top5: f64,
}

fn knn_during_training<P: MaePreset, D: MaeDevice>(
    model: &Mae<P, f32, D>,
    data: &Dataset,
    epoch: u64,
    step: u64,
) -> Result<KnnLine, TrainError> {
    let m = data.manifest();
    let train = crate::features::extract(&model.encoder, data.train(), m, 256)?;
    let val = crate::features::extract(&model.encoder, data.val(), m, 256)?;
    let acc = crate::knn::knn_classify(
        &train.cls,
        &train.labels,
        &val.cls,
        &val.labels,
        train.dim,
        20,
        0.07,
        m.classes.len(),
    )?;
    Ok(KnnLine {
        epoch,
        step,
        knn_top1: acc.top1,
        knn_top5: acc.top5,
    })
}

impl RunConfig for PretrainConfig {
    const KIND: RunKind = RunKind::Pretrain;
    crate::engine::run_config_fields!();
    fn loop_settings(&self) -> LoopSettings {
        loop_settings!(self, {
            check_sync_every: self.check_sync_every,
            save_each_epoch: false,
            batch_change: BatchChange::Rescale,
        })
    }
}

impl<P: MaePreset, D: RunDevice> TrainModel<D> for Mae<P, f32, D> {
    type Optimizer = AdamW;
    fn alloc_gradients(&self) -> Result<Gradients<f32, D>, TrainError> {
        self.try_alloc_grads().map_err(device_err)
    }
    fn zero_gradients(&self, grads: &mut Gradients<f32, D>) -> Result<(), TrainError> {
        self.try_zero_grads(grads).map_err(device_err)
    }
    fn all_reduce_gradients(
        &mut self,
        sync: &mut GradSync,
        comm: &Comm,
        grads: &mut Gradients<f32, D>,
        scalars: StepScalars,
    ) -> Result<StepScalars, TrainError> {
        sync.all_reduce(comm, self, grads, &mut [], scalars)
    }
    fn update(
        &mut self,
        opt: &mut AdamW,
        grads: &mut Gradients<f32, D>,
        lr: f64,
    ) -> Result<(), TrainError> {
        opt.update(self, grads, lr)
    }
}

/// Pretraining as a [`Task`]: the masks of each micro-batch, the reconstruction loss, the kNN
/// evaluation every `eval_every` epochs.
struct Pretraining<'a, P> {
    config: &'a PretrainConfig,
    data: &'a Dataset,
    preset: std::marker::PhantomData<P>,
}

impl<P: MaePreset, D: RunDevice> Task<D> for Pretraining<'_, P> {
    type Model = Mae<P, f32, D>;
    type Input = (Batch, Masking);

    fn input(
        &mut self,
        _: &mut Self::Model,
        batch: Batch,
        epoch: u64,
    ) -> Result<Self::Input, TrainError> {
        let cfg = self.config;
        let n = P::num_patches();
        let masking = batch_masking(cfg.seed, epoch, &batch.indices, n, cfg.model.mask_ratio)?;
        Ok((batch, masking))
    }

    fn loss(
        &self,
        model: &Self::Model,
        (batch, masking): &Self::Input,
        tape: OwnedTape<f32, D>,
    ) -> Result<Loss<D>, TrainError> {
        let norm_pix_loss = self.config.model.norm_pix_loss;
        Ok(model
            .forward(&batch.images, masking, norm_pix_loss, tape)?
            .loss)
    }

    fn scaled_loss(
        &self,
        half: &Half<Self::Model, D>,
        (batch, masking): &Self::Input,
        tape: OwnedTape<AmpF16, D>,
        scale: f64,
    ) -> Result<ScaledLoss<AmpF16, D, OwnedTape<AmpF16, D>>, TrainError> {
        let norm_pix_loss = self.config.model.norm_pix_loss;
        Ok(half.forward_scaled(&batch.images, masking, norm_pix_loss, scale, tape)?)
    }

    fn epoch_end(
        &mut self,
        model: &Self::Model,
        state: &crate::checkpoint::TrainState,
        log: &mut RunLog,
    ) -> Result<(), TrainError> {
        let due = |n: usize| state.epoch.is_multiple_of(n as u64);
        if !self.config.eval_every.is_some_and(due) {
            return Ok(());
        }
        let line = knn_during_training(model, self.data, state.epoch, state.step)?;
        log.message(&format!(
            "epoch {}: kNN (k=20, cls) val top-1 {:.2}%, top-5 {:.2}%",
            line.epoch, line.knn_top1, line.knn_top5
        ));
        log.append(&self.config.out.join("eval.jsonl"), &line);
        let top = [("knn/top1", line.knn_top1), ("knn/top5", line.knn_top5)];
        log.eval(state.epoch, state.step, &top);
        Ok(())
    }
}

impl Job for Run<'_> {
    type Output = RunSummary;

    /// The data against the preset, before the device opens.
    fn check<P: MaePreset>(&self) -> Result<(), TrainError> {
        self.inputs.check_data::<P>(&self.config.data, None)
    }

    /// The run on device `D`: the model, its optimizer and its batches, then the engine.
    fn run<P: MaePreset, D: RunDevice>(self, dev: D) -> Result<RunSummary, TrainError> {
        let (cfg, data) = (self.config, &self.inputs.data);
        let m = data.manifest();
        let comm = self.inputs.comm;
        dev.enable_cache();
        let mut model = Mae::<P, f32, D>::new(&dev)?;
        let mut opt = AdamW::new(cfg.weight_decay, decayed_names(&model)?);
        let engine = self.inputs.engine(cfg);
        let (state, resumed) = engine.start(&mut model, &mut opt)?;
        // --init: a fresh run starts from the weights; a resumed one has its checkpoint's
        let initialized_from = match (&cfg.init, &resumed) {
            (Some(path), None) => {
                let (file, naming) = mae_core::model_files::open_weights(path)?;
                let how = mae_core::model_files::load_mae_weights(&mut model, &file)?;
                Some((path.clone(), format!("{how}, {naming}")))
            }
            _ => None,
        };

        let (mean, std) = normalization(m, false);
        let augment = Augment::new(Transform::pretrain(), P::IMG_SIZE, &mean, &std, cfg.seed)?;
        let loader = Loader::new(
            Arc::clone(data),
            SplitName::Train,
            augment,
            LoaderConfig {
                batch_size: cfg.batch_size,
                seed: cfg.seed,
                workers: cfg.workers,
                rank: comm.rank(),
                world_size: comm.world_size(),
                ..LoaderConfig::default()
            },
        )?;
        if cfg.eval_every.is_some() && (data.val().is_empty() || m.classes.len() < 2) {
            return Err(TrainError::Config(format!(
                "{}: --eval-every needs labeled data with a validation split ({} classes, {} val images)",
                cfg.data.display(),
                m.classes.len(),
                data.val().len()
            )));
        }
        let what = || {
            format!(
                "{}: {} training images in batches of {} on each of {} rank(s)",
                cfg.data.display(),
                data.train().len(),
                cfg.batch_size,
                comm.world_size()
            )
        };
        let mut task = Pretraining::<P> {
            config: cfg,
            data,
            preset: std::marker::PhantomData,
        };
        let mut summary = engine.run(
            &dev, &mut task, &mut model, &mut opt, &loader, state, resumed, what,
        )?;
        summary.initialized_from = initialized_from;
        Ok(summary)
    }
}
