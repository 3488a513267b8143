//! The augmented linear probe as a training task on the engine: the frozen encoder's features of
//! freshly cropped and flipped images every micro-batch, `BatchNorm1d(affine=False)` + Linear
//! trained on them with LARS (or AdamW), checkpoints of the head and `--resume`.
//!
//! PyTorch counterpart: `main_linprobe.py` + `engine_finetune.train_one_epoch`: the encoder
//! frozen (`requires_grad = False` on everything but the head), `model.head =
//! Sequential(BatchNorm1d(D, affine=False, eps=1e-6), Linear(D, classes))`, RandomResizedCrop
//! (scale 0.08–1) + flip, `CrossEntropyLoss`, `lr = blr · batch · ranks / 256`, per-iteration
//! warmup + half-cycle cosine to 0, a checkpoint every epoch. The head and its optimizers are
//! [`crate::probe`]; the loop is the [`crate::engine`]'s. Checkpoints hold the head only
//! (`head.0.running_mean`, `head.0.running_var`, `head.1.weight`, `head.1.bias`), not the frozen
//! encoder the configuration names. The BatchNorm's running statistics are each rank's own (the
//! official DDP broadcasts rank 0's): rank 0's are saved and evaluated.

use crate::run::progress::Hooks;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mae_core::dfdx::prelude::*;
use mae_core::host::host_tensor;
use mae_core::model::EncDim;
use mae_core::weights::write_safetensors;
use mae_core::{
    soft_target_cross_entropy, soft_target_cross_entropy_scaled, AmpF16, Encoder, Head, MaeDevice,
    MaeDtype, MaePreset, NamedTensor, ScaledLoss, TensorFile, TransformerDims,
};
use mae_data::augment::{normalization, Augment, Transform};
use mae_data::loader::{Batch, Loader, LoaderConfig};
use mae_data::mixup::mixup_targets;
use mae_data::{Dataset, SplitName};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::amp::{flat_head, flat_head_grads, AmpModel, Flat, Precision};
use crate::checkpoint::Checkpointable;
use crate::device::{dispatch, DeviceKind, Job, RunDevice};
use crate::dist::{all_reduce_with_head, Comm, GradSync, StepScalars};
use crate::engine::{BatchChange, LoopSettings, RunConfig, RunInputs};
use crate::error::{device_err, TrainError};
use crate::feature_set::{FeatureKind, Features};
use crate::probe::{
    BatchNorm, LinearProbe, ProbeConfig, ProbeOpt, BIAS, RUNNING_MEAN, RUNNING_VAR, WEIGHT,
};
use crate::run::{Resume, Resumed, RunSummary};
use crate::step::{Half, Loss, Task, TrainModel};

/// A metrics line every this many steps.
const LOG_EVERY: u64 = 20;
/// Epoch checkpoints kept (each is the head alone: kilobytes).
const KEEP_LAST: usize = 2;

/// The settings of an augmented probe run (its run folder's `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinprobeConfig {
    /// The frozen encoder's checkpoint (full or encoder-only).
    pub checkpoint: PathBuf,
    /// The prepared dataset (labeled, with a validation split).
    pub data: PathBuf,
    /// The run folder.
    pub out: PathBuf,
    /// `cls` or `avg`.
    pub feature: FeatureKind,
    /// The probe's settings (`augment` is true here).
    pub probe: ProbeConfig,
    /// Images per encoder pass of the evaluation.
    pub eval_batch_size: usize,
    /// Where the encoder and the head run.
    pub device: DeviceKind,
    /// `amp-f16`: the encoder's passes and the head in half precision, as under `autocast`.
    pub precision: Precision,
    /// The ranks it was resolved for.
    pub world_size: usize,
    /// TensorBoard event files in the run folder.
    #[serde(default = "crate::config::yes")]
    pub tensorboard: bool,
}

impl RunConfig for LinprobeConfig {
    const KIND: crate::rundir::RunKind = crate::rundir::RunKind::Linprobe;
    crate::engine::run_config_fields!();
    fn loop_settings(&self) -> LoopSettings {
        let p = &self.probe;
        LoopSettings {
            epochs: p.epochs,
            max_steps: None,
            batch_size: p.batch_size,
            accum_iter: p.accum_iter,
            // main_linprobe.py: eff_batch_size = batch_size · accum_iter · world_size
            lr: p.peak_lr(self.world_size),
            min_lr: 0.0,
            warmup_epochs: p.warmup_epochs,
            seed: p.seed,
            log_every: LOG_EVERY,
            save_every: u64::MAX,
            keep_last: KEEP_LAST,
            precision: self.precision,
            check_sync_every: None,
            save_each_epoch: true,
            batch_change: BatchChange::Rescale,
            tensorboard: self.tensorboard,
        }
    }
}

/// The probe the engine trains: the linear head on the device, the BatchNorm on the host.
pub struct ProbeModel<P: MaePreset, D: MaeDevice> {
    /// `head.1`.
    pub head: Head<P, D>,
    /// `head.0`.
    pub bn: BatchNorm,
}

impl<P: MaePreset, D: MaeDevice> ProbeModel<P, D> {
    /// A fresh probe for `classes` on `dev` ([`LinearProbe::fresh`], drawn from `seed`).
    pub fn new(dev: &D, classes: usize, seed: u64) -> Result<Self, TrainError> {
        let dim = <P::Encoder as TransformerDims>::DIM;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let fresh = LinearProbe::fresh(dim, classes, &mut rng)?;
        let shape = (classes, EncDim::<P>::default());
        Ok(ProbeModel {
            head: Head {
                weight: host_tensor(dev, &fresh.weight, shape)?,
                bias: host_tensor(dev, &fresh.bias, (classes,))?,
            },
            bn: fresh.bn,
        })
    }

    /// A host copy, to evaluate.
    pub fn probe(&self) -> LinearProbe {
        LinearProbe {
            bn: self.bn.clone(),
            weight: self.head.weight.as_vec(),
            bias: self.head.bias.as_vec(),
            dim: <P::Encoder as TransformerDims>::DIM,
            classes: self.head.bias.shape().0,
        }
    }
}

impl<P: MaePreset, D: MaeDevice> Checkpointable for ProbeModel<P, D> {
    const WRITER: &'static str = "mae linprobe";
    fn tensors(&self) -> Result<Vec<NamedTensor>, TrainError> {
        let dim = <P::Encoder as TransformerDims>::DIM;
        let classes = self.head.bias.shape().0;
        let t = |name: &str, shape: Vec<usize>, data: Vec<f32>, trainable| NamedTensor {
            name: name.into(),
            shape,
            data,
            trainable,
        };
        Ok(vec![
            t(RUNNING_MEAN, vec![dim], self.bn.running_mean.clone(), false),
            t(RUNNING_VAR, vec![dim], self.bn.running_var.clone(), false),
            t(WEIGHT, vec![classes, dim], self.head.weight.as_vec(), true),
            t(BIAS, vec![classes], self.head.bias.as_vec(), true),
        ])
    }
    fn save_model(
        &self,
        path: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), TrainError> {
        let mut meta = metadata.clone();
        meta.insert("preset".into(), P::PRESET.to_string());
        meta.insert("kind".into(), "linprobe".into());
        Ok(write_safetensors(path, &self.tensors()?, &meta)?)
    }
    /// Every tensor of [`Checkpointable::tensors`], of its shape and finite, or nothing changes.
    fn load_model(&mut self, file: &TensorFile) -> Result<(), TrainError> {
        let mut values = BTreeMap::new();
        for t in self.tensors()? {
            let bad = |what: String| TrainError::checkpoint(file.path(), what);
            let read = file
                .read(&t.name)?
                .ok_or_else(|| bad(format!("no tensor `{}` (not a linear probe's?)", t.name)))?;
            if read.shape != t.shape || read.data.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "`{}` is {:?} (or holds non-finite values), this probe's is {:?}",
                    t.name, read.shape, t.shape
                )));
            }
            values.insert(t.name, read.data);
        }
        self.head.weight.copy_from(&values[WEIGHT]);
        self.head.bias.copy_from(&values[BIAS]);
        self.bn.running_mean = values.remove(RUNNING_MEAN).unwrap_or_default();
        self.bn.running_var = values.remove(RUNNING_VAR).unwrap_or_default();
        Ok(())
    }
}

impl<P: MaePreset, D: RunDevice> AmpModel<D> for ProbeModel<P, D> {
    type Half = Head<P, D, AmpF16>;
    fn to_half(&self) -> Result<Self::Half, TrainError> {
        Ok(Head {
            weight: self
                .head
                .weight
                .clone()
                .try_to_dtype()
                .map_err(device_err)?,
            bias: self.head.bias.clone().try_to_dtype().map_err(device_err)?,
        })
    }
    fn alloc_half_grads(half: &Self::Half) -> Result<Gradients<AmpF16, D>, TrainError> {
        let mut grads = Gradients::leaky();
        half.alloc_grads_in(&mut grads)?;
        Ok(grads)
    }
    fn zero_half_grads(
        half: &Self::Half,
        grads: &mut Gradients<AmpF16, D>,
    ) -> Result<(), TrainError> {
        Ok(half.zero_grads(grads)?)
    }
    fn flat_params(&self) -> Result<Vec<Flat<f32, D>>, TrainError> {
        Ok(flat_head(&self.head)?.into())
    }
    fn flat_half_grads(
        half: &Self::Half,
        grads: &mut Gradients<AmpF16, D>,
    ) -> Result<Vec<Flat<AmpF16, D>>, TrainError> {
        Ok(flat_head_grads(half, grads)?.into())
    }
}

impl<P: MaePreset, D: RunDevice> TrainModel<D> for ProbeModel<P, D> {
    type Optimizer = ProbeOpt;
    fn alloc_gradients(&self) -> Result<Gradients<f32, D>, TrainError> {
        let mut grads = Gradients::leaky();
        self.head.alloc_grads_in(&mut grads)?;
        Ok(grads)
    }
    fn zero_gradients(&self, grads: &mut Gradients<f32, D>) -> Result<(), TrainError> {
        Ok(self.head.zero_grads(grads)?)
    }
    fn all_reduce_gradients(
        &mut self,
        sync: &mut GradSync,
        comm: &Comm,
        grads: &mut Gradients<f32, D>,
        scalars: StepScalars,
    ) -> Result<StepScalars, TrainError> {
        all_reduce_with_head(sync, comm, &mut (), &self.head, grads, scalars)
    }
    fn update(
        &mut self,
        opt: &mut ProbeOpt,
        grads: &mut Gradients<f32, D>,
        lr: f64,
    ) -> Result<(), TrainError> {
        let (mut w, mut b) = (self.head.weight.as_vec(), self.head.bias.as_vec());
        let gw = grads.get(&self.head.weight).as_vec();
        let gb = grads.get(&self.head.bias).as_vec();
        opt.step((&mut w, &gw), (&mut b, &gb), lr)?;
        self.head.weight.copy_from(&w);
        self.head.bias.copy_from(&b);
        Ok(())
    }
}

/// What one micro-batch feeds the head: the normalized features and one-hot targets.
pub struct ProbeBatch {
    features: Vec<f32>,
    targets: Vec<f32>,
}

/// The probe as a [`Task`]: the frozen `encoder` (in its precision `E`) turns each micro-batch
/// into features, the BatchNorm normalizes them with the batch's statistics and updates its
/// running ones, the head's cross-entropy is the loss.
struct Probing<'a, P: MaePreset, E: MaeDtype, D: MaeDevice<E>> {
    cfg: &'a LinprobeConfig,
    encoder: &'a Encoder<P, E, D>,
    classes: usize,
    train_images: usize,
}

impl<P: MaePreset, E: MaeDtype, D: RunDevice + MaeDevice<E>> Task<D> for Probing<'_, P, E, D> {
    type Model = ProbeModel<P, D>;
    type Input = ProbeBatch;

    fn input(
        &mut self,
        model: &mut Self::Model,
        batch: Batch,
        _: u64,
    ) -> Result<ProbeBatch, TrainError> {
        let n = batch.len();
        let mut pooled = Features::with_capacity(<P::Encoder as TransformerDims>::DIM, n);
        crate::features::push_encoded(self.encoder, &batch.images, n, &mut pooled)?;
        let mut features = match self.cfg.feature {
            FeatureKind::Cls => pooled.cls,
            FeatureKind::Avg => pooled.avg,
        };
        model.bn.forward(&mut features, true);
        let targets = mixup_targets(&batch.labels, self.classes, 1.0, 0.0)?;
        Ok(ProbeBatch { features, targets })
    }

    fn loss(
        &self,
        model: &Self::Model,
        input: &ProbeBatch,
        tape: OwnedTape<f32, D>,
    ) -> Result<Loss<D>, TrainError> {
        let dev = model.head.bias.device();
        let shape = (input.targets.len() / self.classes, EncDim::<P>::default());
        let x = host_tensor(dev, &input.features, shape)?.put_tape(tape);
        let logits = model.head.forward(x)?;
        Ok(soft_target_cross_entropy(logits, &input.targets)?)
    }

    fn scaled_loss(
        &self,
        half: &Half<Self::Model, D>,
        input: &ProbeBatch,
        tape: OwnedTape<AmpF16, D>,
        scale: f64,
    ) -> Result<ScaledLoss<AmpF16, D, OwnedTape<AmpF16, D>>, TrainError> {
        let dev = half.bias.device();
        let shape = (input.targets.len() / self.classes, EncDim::<P>::default());
        let features = AmpF16::from_f32_slice(&input.features);
        let x = host_tensor(dev, &features, shape)?.put_tape(tape);
        let logits = half.forward(x)?;
        Ok(soft_target_cross_entropy_scaled(
            logits,
            &input.targets,
            scale,
        )?)
    }

    fn start_messages(&self, plan: &crate::schedule::StepPlan, resumed: &Resumed) -> Vec<String> {
        let mut lines = crate::run::resume_messages(resumed);
        let (cfg, p) = (self.cfg, &self.cfg.probe);
        lines.push(format!(
            "linear probe of {} ({}, {}) from {}; {} train images, {} classes, {} steps, lr {:.3e}",
            P::PRESET,
            cfg.feature.name(),
            p.optimizer.name(),
            cfg.checkpoint.display(),
            self.train_images,
            self.classes,
            plan.total_steps,
            cfg.loop_settings().lr
        ));
        lines
    }
}

/// What an augmented probe run gives back: the trained probe, the validation features (every
/// rank has them) and the run's summary.
pub struct ProbeRun {
    /// The trained head and statistics (rank 0's are the checkpoint's).
    pub probe: LinearProbe,
    /// The validation split's features through the frozen encoder.
    pub val: Features,
    /// Training images.
    pub train_images: usize,
    /// How the run ended, its step and last checkpoint.
    pub summary: RunSummary,
}

/// Trains the augmented probe of `cfg` as one rank of `comm` ([`Comm::single`] for one process):
/// each rank crops its slice of every global batch and runs the encoder over it, the head's
/// gradients are averaged once per step; rank 0 writes the checkpoints and the metrics. Then the
/// validation features, on every rank (their extraction is shared out over the ranks).
pub fn train_linprobe(
    cfg: &LinprobeConfig,
    resume: &Resume,
    hooks: Hooks,
    comm: &Comm,
) -> Result<ProbeRun, TrainError> {
    cfg.probe.validate()?;
    crate::config::check_count(
        "eval-batch-size",
        cfg.eval_batch_size,
        1,
        crate::config::MAX_BATCH,
    )?;
    let preset = crate::checkpoint::preset_of(&cfg.checkpoint)?;
    let inputs = RunInputs::open(cfg, resume, hooks, comm)?;
    dispatch(preset, cfg.device, cfg.probe.seed, Run { cfg, inputs })
}

/// A probe run, as a [`Job`].
struct Run<'a> {
    cfg: &'a LinprobeConfig,
    inputs: RunInputs<'a>,
}

impl Job for Run<'_> {
    type Output = ProbeRun;

    fn check<P: MaePreset>(&self) -> Result<(), TrainError> {
        self.inputs
            .check_data::<P>(&self.cfg.data, Some("the linear probe"))
    }

    fn run<P: MaePreset, D: RunDevice>(self, dev: D) -> Result<ProbeRun, TrainError> {
        let (file, _) = mae_core::model_files::open_weights(&self.cfg.checkpoint)?;
        let encoder = crate::features::load_encoder::<P, D>(&file, &dev)?;
        dev.enable_cache();
        match self.cfg.precision {
            Precision::F32 => self.train(&dev, &encoder),
            Precision::AmpF16 => self.train(&dev, &crate::amp::to_half(&encoder)?),
        }
    }
}

impl Run<'_> {
    /// The probe, its optimizer and its batches, the engine, then the validation features.
    fn train<P: MaePreset, E: MaeDtype, D: RunDevice + MaeDevice<E>>(
        self,
        dev: &D,
        encoder: &Encoder<P, E, D>,
    ) -> Result<ProbeRun, TrainError> {
        let (cfg, data, comm) = (self.cfg, &self.inputs.data, self.inputs.comm);
        let m = data.manifest();
        let classes = m.classes.len();
        let mut model = ProbeModel::<P, D>::new(dev, classes, cfg.probe.seed)?;
        let mut opt = ProbeOpt::new(&cfg.probe);
        let engine = self.inputs.engine(cfg);
        let (state, resumed) = engine.start(&mut model, &mut opt)?;
        let loader = train_loader::<P>(cfg, data, comm)?;
        let train_images = data.train().len();
        let mut task = Probing {
            cfg,
            encoder,
            classes,
            train_images,
        };
        let what = || {
            format!(
                "{}: {train_images} training images in full batches of {}",
                cfg.data.display(),
                cfg.probe.batch_size
            )
        };
        let summary = engine.run(
            dev, &mut task, &mut model, &mut opt, &loader, state, resumed, what,
        )?;
        let batch = cfg.eval_batch_size;
        let report = Some((self.inputs.hooks.observer.as_ref(), "features val"));
        let val = crate::features::extract_sharded(encoder, data.val(), m, batch, (comm, report))?;
        Ok(ProbeRun {
            probe: model.probe(),
            val,
            train_images,
            summary,
        })
    }
}

/// The training batches: `main_linprobe.py`'s RandomResizedCrop (scale 0.08–1, ratio 3/4–4/3) +
/// flip, whole batches only.
fn train_loader<P: MaePreset>(
    cfg: &LinprobeConfig,
    data: &Arc<Dataset>,
    comm: &Comm,
) -> Result<Loader, TrainError> {
    let (mean, std) = normalization(data.manifest(), false);
    let crop = Transform::Pretrain {
        scale: (0.08, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        hflip: true,
    };
    let seed = cfg.probe.seed;
    let augment = Augment::new(crop, P::IMG_SIZE, &mean, &std, seed)?;
    Ok(Loader::new(
        Arc::clone(data),
        SplitName::Train,
        augment,
        LoaderConfig {
            batch_size: cfg.probe.batch_size,
            seed,
            drop_last: true,
            rank: comm.rank(),
            world_size: comm.world_size(),
            ..LoaderConfig::default()
        },
    )?)
}
