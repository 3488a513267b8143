//! End-to-end fine-tuning of the pretrained encoder as a classifier.
//!
//! PyTorch counterpart: `main_finetune.py` + `engine_finetune.py` + `util/lr_decay.py`: the
//! global-pool ViT of `models_vit.py` started from the MAE checkpoint (position embedding
//! interpolated to the fine-tuning grid, fresh `fc_norm` and head), AdamW (β 0.9/0.999) over
//! `param_groups_lrd` (layer-wise lr decay; no weight decay on 1-D parameters, `pos_embed` and
//! `cls_token`), per-iteration warmup + half-cycle cosine with `lr_scale` per group, drop path
//! linearly up to `--drop-path` over the blocks, RandomResizedCrop + flip + random erasing, mixup
//! and cutmix with label smoothing folded into soft targets (SoftTargetCrossEntropy), evaluation
//! (top-1/top-5) on the validation split after every epoch, the best model kept.
//!
//! Not here: RandAugment (`--aa rand-m9-mstd0.5-inc1`), and `dist_eval`. Checkpoints and
//! resumption work as in pretraining (model + optimizer state, position in the epoch).

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mae_core::device::MaeDevice;
use mae_core::dfdx::prelude::*;
use mae_core::layers::BranchScales;
use mae_core::weights::official_shape;
use mae_core::{
    soft_target_cross_entropy, soft_target_cross_entropy_scaled, tape_from, Classifier, MaePreset,
    NamedTensor, Preset, PresetVisitor, TensorFile, TransformerDims,
};
use mae_data::augment::{normalization, Augment, Transform};
use mae_data::loader::{Loader, LoaderConfig};
use mae_data::mixup::{mixup_targets, random_erase, Mixup};
use mae_data::{Dataset, Split, SplitName};
use serde::{Deserialize, Serialize};

use crate::amp::{MixedPrecision, Precision};
use crate::checkpoint::{self, TrainState};
use crate::device::{run_loop, DeviceVisitor, RunDevice, TrainLoop};
use crate::dist::{set_grad, Comm, GradSync, StepScalars};
use crate::error::{device_err, TrainError};
use crate::features::{check_channels, for_each_eval_batch, topk_hits, Accuracy};
use crate::optim::AdamW;
use crate::pretrain::{
    check_loss, check_seed, check_within, position_rng, resume, Outcome, Resume,
};
use crate::runlog::RunLog;
use crate::schedule::{absolute_lr, lr_at, StepPlan};

/// Fine-tuning settings; the defaults are `main_finetune.py`'s with the recipe's mixup 0.8 /
/// cutmix 1.0 (`FINETUNE.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// Prepared dataset (trains on train, evaluates on val).
    pub data: PathBuf,
    /// Run directory: checkpoints, `best.safetensors`, metrics.jsonl, eval.jsonl, results.json.
    pub out: PathBuf,
    /// Pretrained MAE checkpoint (full or encoder-only); `None` trains from random init.
    pub checkpoint: Option<PathBuf>,
    /// Preset of the classifier (default: the checkpoint's); a preset with the same encoder but
    /// another image size interpolates the position embedding.
    pub preset: Preset,
    /// Epochs.
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<u64>,
    /// Images per micro-batch (even: mixup pairs the batch with its mirror).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accum_iter: usize,
    /// Peak learning rate (`blr · batch · accum / 256` unless given).
    pub lr: f64,
    /// Base learning rate it came from (recorded).
    pub blr: f64,
    /// Floor of the cosine schedule.
    pub min_lr: f64,
    /// Linear warmup, in epochs.
    pub warmup_epochs: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Layer-wise lr decay.
    pub layer_decay: f64,
    /// Drop path rate of the last block (linear from 0).
    pub drop_path: f64,
    /// Label smoothing.
    pub smoothing: f64,
    /// Mixup α (0 = off).
    pub mixup: f64,
    /// Cutmix α (0 = off).
    pub cutmix: f64,
    /// Probability of mixing a batch.
    pub mixup_prob: f64,
    /// Probability of cutmix rather than mixup when both are on.
    pub mixup_switch_prob: f64,
    /// Random erasing probability.
    pub reprob: f64,
    /// Smallest RandomResizedCrop area fraction.
    pub min_crop_scale: f64,
    /// Seed of the head, data order, augmentation, mixup and drop path.
    pub seed: u64,
    /// Loader threads.
    pub workers: usize,
    /// Also checkpoint every this many optimizer steps (always at the end of each epoch).
    pub save_every: u64,
    /// Keep only the newest K step checkpoints (`best.safetensors` is kept apart).
    pub keep_last: usize,
    /// Metrics line every this many steps.
    pub log_every: u64,
    /// Images per evaluation forward.
    pub eval_batch_size: usize,
    /// Ranks of a data-parallel run (`mpirun -np N`); `lr` is for the global batch
    /// `batch_size · accum_iter · world_size`.
    #[serde(default = "one")]
    pub world_size: usize,
    /// Where the model trains (`--device cpu|cuda`).
    #[serde(default)]
    pub device: crate::device::DeviceKind,
    /// Element type of the forward and backward passes (`--precision f32|amp-f16`).
    #[serde(default)]
    pub precision: Precision,
}

fn one() -> usize {
    1
}

impl FinetuneConfig {
    /// The recipe's settings for `data`, `out` and `preset`, `lr` from `blr` 1e-3 at batch 64.
    pub fn new(data: PathBuf, out: PathBuf, preset: Preset) -> Self {
        let (batch_size, blr) = (64, 1e-3);
        FinetuneConfig {
            data,
            out,
            checkpoint: None,
            preset,
            epochs: 50,
            max_steps: None,
            batch_size,
            accum_iter: 1,
            lr: absolute_lr(blr, batch_size, 1, 1),
            blr,
            min_lr: 1e-6,
            warmup_epochs: 5.0,
            weight_decay: 0.05,
            layer_decay: 0.75,
            drop_path: 0.1,
            smoothing: 0.1,
            mixup: 0.8,
            cutmix: 1.0,
            mixup_prob: 1.0,
            mixup_switch_prob: 0.5,
            reprob: 0.25,
            min_crop_scale: 0.08,
            seed: 0,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            save_every: u64::MAX,
            keep_last: 1,
            log_every: 20,
            eval_batch_size: 256,
            world_size: 1,
            device: crate::device::DeviceKind::Cpu,
            precision: Precision::F32,
        }
    }

    /// Checks the settings: counts in range, every rate a finite number in its interval (NaN is
    /// refused everywhere).
    pub fn validate(&self) -> Result<(), TrainError> {
        use crate::config::{check_count, check_float, MAX_BATCH, MAX_EPOCHS};
        let bad = |m: String| Err(TrainError::Config(m));
        check_count("batch-size", self.batch_size, 1, MAX_BATCH)?;
        check_count("accum-iter", self.accum_iter, 1, MAX_BATCH)?;
        check_count("epochs", self.epochs, 1, MAX_EPOCHS)?;
        check_count("eval-batch-size", self.eval_batch_size, 1, MAX_BATCH)?;
        check_count("keep-last", self.keep_last, 1, usize::MAX)?;
        check_count("workers", self.workers, 1, 1024)?;
        for (flag, v) in [
            ("save-every", Some(self.save_every)),
            ("log-every", Some(self.log_every)),
            ("max-steps", self.max_steps),
        ] {
            if v == Some(0) {
                return bad(format!("--{flag} must be at least 1"));
            }
        }
        if (self.mixup > 0.0 || self.cutmix > 0.0) && !self.batch_size.is_multiple_of(2) {
            return bad(format!(
                "--batch-size {} must be even with mixup/cutmix (each image is mixed with its mirror in the batch)",
                self.batch_size
            ));
        }
        for (flag, v) in [
            ("drop-path", self.drop_path),
            ("smoothing", self.smoothing),
            ("reprob", self.reprob),
            ("mixup-prob", self.mixup_prob),
            ("mixup-switch-prob", self.mixup_switch_prob),
        ] {
            let upper_ok = if flag == "drop-path" {
                v < 1.0
            } else {
                v <= 1.0
            };
            if !(v >= 0.0 && upper_ok) {
                let range = if flag == "drop-path" {
                    "[0, 1)"
                } else {
                    "[0, 1]"
                };
                return bad(format!("--{flag} {v} is outside {range}"));
            }
        }
        if !(self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            return bad(format!(
                "--layer-decay {} must be in (0, 1]",
                self.layer_decay
            ));
        }
        if !(self.min_crop_scale > 0.0 && self.min_crop_scale <= 1.0) {
            return bad(format!(
                "--min-crop-scale {} must be in (0, 1]",
                self.min_crop_scale
            ));
        }
        check_float("lr", self.lr, true)?;
        for (flag, v) in [
            ("blr", self.blr),
            ("min-lr", self.min_lr),
            ("warmup-epochs", self.warmup_epochs),
            ("weight-decay", self.weight_decay),
            ("mixup", self.mixup),
            ("cutmix", self.cutmix),
        ] {
            check_float(flag, v, false)?;
        }
        Ok(())
    }
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

/// Top-1/top-5 of a classifier on a split (evaluation transform, no randomness).
pub fn evaluate<P: MaePreset, D: MaeDevice>(
    model: &Classifier<P, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    batch: usize,
) -> Result<Accuracy, TrainError> {
    check_channels::<P>(manifest)?;
    let classes = model.num_classes();
    let (mut top1, mut top5, mut n) = (0usize, 0usize, 0usize);
    for_each_eval_batch(split, manifest, P::IMG_SIZE, batch, |images, labels| {
        let logits = model.forward(images, &[], NoneTape)?.as_vec();
        let (a, b) = topk_hits(&logits, labels, classes);
        top1 += a;
        top5 += b;
        n += labels.len();
        Ok(())
    })?;
    let n = n.max(1) as f64;
    Ok(Accuracy {
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
    })
}

struct EvaluateFile<'a> {
    checkpoint: &'a std::path::Path,
    data: &'a std::path::Path,
    batch: usize,
    device: crate::device::DeviceKind,
}

impl PresetVisitor for EvaluateFile<'_> {
    type Output = Result<Accuracy, TrainError>;
    fn visit<P: MaePreset>(self) -> Self::Output {
        self.device.run(0, EvaluateOn::<P>(self, PhantomData))
    }
}

struct EvaluateOn<'a, P>(EvaluateFile<'a>, PhantomData<P>);

impl<P: MaePreset> DeviceVisitor for EvaluateOn<'_, P> {
    type Output = Accuracy;
    fn visit<D: RunDevice>(self, dev: D) -> Result<Accuracy, TrainError> {
        let this = self.0;
        let file = TensorFile::open(this.checkpoint)?;
        let classes = file
            .shape("head.bias")?
            .and_then(|s| s.first().copied())
            .ok_or_else(|| {
                TrainError::checkpoint(
                    this.checkpoint,
                    "no `head.bias`: not a fine-tuned classifier (use mae knn / linprobe for an MAE checkpoint)",
                )
            })?;
        let mut model = Classifier::<P, D>::new(&dev, classes)?;
        model.load_from(&file, "")?;
        let data = Dataset::open(this.data)?;
        if data.manifest().classes.len() != classes {
            return Err(TrainError::Config(format!(
                "{} has {classes} classes, {} has {}",
                this.checkpoint.display(),
                this.data.display(),
                data.manifest().classes.len()
            )));
        }
        evaluate(&model, data.val(), data.manifest(), this.batch)
    }
}

/// `main_finetune.py --eval`: top-1/top-5 of a fine-tuned classifier file (ours, or official /
/// timm fine-tuned weights in safetensors under the same names) on a dataset's val split. The
/// preset comes from the file's metadata unless given.
pub fn evaluate_file(
    checkpoint: &std::path::Path,
    preset: Option<Preset>,
    data: &std::path::Path,
    batch: usize,
    device: crate::device::DeviceKind,
) -> Result<Accuracy, TrainError> {
    let preset = match preset {
        Some(p) => p,
        None => checkpoint::preset_of(checkpoint)?,
    };
    preset.visit(EvaluateFile {
        checkpoint,
        data,
        batch: batch.max(1),
        device,
    })
}

/// One line of `eval.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalLine {
    /// Epochs completed.
    pub epoch: u64,
    /// Optimizer steps done.
    pub step: u64,
    /// Top-1 on the validation split, %.
    pub top1: f64,
    /// Top-5, %.
    pub top5: f64,
    /// Best top-1 so far, %.
    pub best_top1: f64,
}

/// What [`finetune`] reports (also written to `results.json` in the run directory).
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneSummary {
    /// How it ended (`Finished`, `MaxSteps`, `Interrupted`).
    pub outcome: String,
    /// Optimizer steps done.
    pub step: u64,
    /// Best top-1 over the evaluations, %.
    pub best_top1: Option<f64>,
    /// Epoch (1-based count of completed epochs) of the best top-1.
    pub best_epoch: Option<u64>,
    /// The last evaluation.
    pub last: Option<Accuracy>,
    /// The newest checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// `best.safetensors`, when written.
    pub best: Option<PathBuf>,
    /// What the pretrained load did (`loaded N tensors; fresh: ...; pos_embed 7→8`).
    pub init: String,
    /// Training and validation images.
    pub train_images: usize,
    /// Validation images.
    pub val_images: usize,
}

/// Runs fine-tuning. `stop` is polled after every optimizer step, as in [`crate::pretrain`].
pub fn finetune(
    config: &FinetuneConfig,
    resume: &Resume,
    stop: Arc<AtomicBool>,
) -> Result<FinetuneSummary, TrainError> {
    finetune_with(config, resume, stop, &Comm::single())
}

/// [`finetune`] as one rank of a data-parallel run, as [`crate::pretrain::pretrain_with`]: each
/// rank trains on its slice of every global batch (with its own mixup/cutmix, erasing and drop
/// path draws, as under DDP), gradients are averaged once per step; rank 0 alone evaluates,
/// keeps the best model and writes checkpoints, metrics and `results.json`.
pub fn finetune_with(
    config: &FinetuneConfig,
    resume: &Resume,
    stop: Arc<AtomicBool>,
    comm: &Comm,
) -> Result<FinetuneSummary, TrainError> {
    config.validate()?;
    comm.check_world_size(config.world_size)?;
    crate::rundir::check(
        &config.out,
        crate::rundir::RunKind::Finetune,
        resume,
        &config.data,
    )?;
    config.preset.visit(Run {
        cfg: config,
        resume,
        stop,
        comm,
    })
}

/// The AdamW step of a tensor outside the module walk (the head), after `opt.update` of the step.
fn step_host_tensor<S: Shape, D: MaeDevice>(
    opt: &mut AdamW,
    name: &str,
    t: &mut Tensor<S, f32, D>,
    grads: &Gradients<f32, D>,
    lr: f64,
) -> Result<(), TrainError> {
    let mut p = t.as_vec();
    opt.update_named(name, &mut p, &grads.get(&*t).as_vec(), lr)?;
    t.copy_from(&p);
    Ok(())
}

/// [`GradSync::all_reduce`] of the classifier's gradients: the head lies outside the module walk,
/// so its two gradients ride along as extras. One rank returns at once.
fn all_reduce_with_head<P: MaePreset, D: MaeDevice>(
    sync: &mut GradSync,
    comm: &Comm,
    model: &mut Classifier<P, D>,
    grads: &mut Gradients<f32, D>,
    scalars: StepScalars,
) -> Result<StepScalars, TrainError> {
    if comm.world_size() == 1 {
        return Ok(scalars);
    }
    grads
        .try_alloc_for(&model.head.weight)
        .map_err(device_err)?;
    grads.try_alloc_for(&model.head.bias).map_err(device_err)?;
    let mut head_w = grads.get(&model.head.weight).as_vec();
    let mut head_b = grads.get(&model.head.bias).as_vec();
    let reduced = sync.all_reduce(
        comm,
        &mut model.vit,
        grads,
        &mut [&mut head_w[..], &mut head_b[..]],
        scalars,
    )?;
    set_grad(grads, &model.head.weight, &head_w)?;
    set_grad(grads, &model.head.bias, &head_b)?;
    Ok(reduced)
}

struct Run<'a> {
    cfg: &'a FinetuneConfig,
    resume: &'a Resume,
    stop: Arc<AtomicBool>,
    comm: &'a Comm,
}

const BEST: &str = "best.safetensors";

fn best_so_far(path: &std::path::Path) -> Option<(f64, u64)> {
    let meta = TensorFile::open(path).ok()?.metadata().ok()?;
    Some((
        meta.get("top1")?.parse().ok()?,
        meta.get("epoch")?.parse().ok()?,
    ))
}

impl PresetVisitor for Run<'_> {
    type Output = Result<FinetuneSummary, TrainError>;

    fn visit<P: MaePreset>(self) -> Self::Output {
        let cfg = self.cfg;
        let data = Arc::new(Dataset::open(&cfg.data)?);
        let m = data.manifest();
        check_channels::<P>(m)
            .map_err(|e| TrainError::Config(format!("{}: {e}", cfg.data.display())))?;
        if data.train().is_empty() || data.val().is_empty() {
            return Err(TrainError::Config(format!(
                "{}: fine-tuning needs a train and a validation split ({} / {} images)",
                cfg.data.display(),
                data.train().len(),
                data.val().len()
            )));
        }
        let classes = m.classes.len();
        if classes < 2 {
            return Err(TrainError::Config(format!(
                "{}: {classes} class(es); fine-tuning needs labeled data with 2 or more",
                cfg.data.display()
            )));
        }
        run_loop::<_, P>(cfg.device, cfg.seed, &self, data, cfg)
    }
}

impl TrainLoop for Run<'_> {
    type Summary = FinetuneSummary;

    /// The loop itself, on device `D`.
    fn train<P: MaePreset, D: RunDevice>(
        &self,
        dev: D,
        data: Arc<Dataset>,
        config_json: String,
    ) -> Result<FinetuneSummary, TrainError> {
        let cfg = self.cfg;
        let m = data.manifest();
        let classes = m.classes.len();
        let comm = self.comm;
        let main = comm.is_main();
        dev.enable_cache();
        let mut model = Classifier::<P, D>::new(&dev, classes)?;
        let init = match &cfg.checkpoint {
            None => "random init".to_string(),
            Some(path) => {
                let r = model.load_pretrained(&TensorFile::open(path)?)?;
                let mut text = format!(
                    "{}: loaded {} tensors; fresh: {}",
                    path.display(),
                    r.loaded.len(),
                    r.fresh.join(", ")
                );
                if let Some((old, new)) = r.interpolated {
                    text += &format!("; pos_embed interpolated {old}×{old} → {new}×{new}");
                }
                text
            }
        };
        let geometry = mae_core::PatchGeometry::of::<P>();
        let params: Vec<NamedTensor> = model
            .named_tensors()?
            .into_iter()
            .map(|mut t| {
                t.shape = official_shape(&t.name, &t.shape, &geometry);
                t
            })
            .collect();
        let depth = <P::Encoder as TransformerDims>::DEPTH;
        let (decayed, lr_scale) = param_groups_lrd(&params, depth, cfg.layer_decay);
        let mut opt = AdamW::new(cfg.weight_decay, decayed);
        opt.betas = (0.9, 0.999);
        opt.lr_scale = lr_scale;

        let mut state = TrainState {
            step: 0,
            epoch: 0,
            micro_step: 0,
            seed: cfg.seed,
            global_micro_batch: cfg.batch_size * comm.world_size(),
            loss_scaler: None,
        };
        let resumed_from = resume(self.resume, &cfg.out, &mut model, &mut opt, &mut state)?;
        check_seed(&state, cfg.seed)?;
        let best_path = cfg.out.join(BEST);
        let mut best = if state.step > 0 {
            best_so_far(&best_path)
        } else {
            None
        };

        let (mean, std) = normalization(m, false);
        let transform = match Transform::finetune() {
            Transform::Pretrain { ratio, hflip, .. } => Transform::Pretrain {
                scale: (cfg.min_crop_scale, 1.0),
                ratio,
                hflip,
            },
            other => other,
        };
        let augment = Augment::new(transform, P::IMG_SIZE, &mean, &std, cfg.seed)?;
        let loader = Loader::new(
            Arc::clone(&data),
            SplitName::Train,
            augment,
            LoaderConfig {
                batch_size: cfg.batch_size,
                seed: cfg.seed,
                workers: cfg.workers.max(1),
                drop_last: true,
                rank: comm.rank(),
                world_size: comm.world_size(),
                ..LoaderConfig::default()
            },
        )?;
        let plan = StepPlan::new(
            loader.steps_per_epoch(),
            cfg.accum_iter,
            cfg.epochs,
            cfg.max_steps,
            || {
                format!(
                    "{}: {} training images in full batches of {}",
                    cfg.data.display(),
                    data.train().len(),
                    cfg.batch_size
                )
            },
        )?;
        check_within(&resumed_from, &state, &plan)?;
        let total_steps = plan.total_steps;
        let mixup = Mixup {
            mixup_alpha: cfg.mixup,
            cutmix_alpha: cfg.cutmix,
            prob: cfg.mixup_prob,
            switch_prob: cfg.mixup_switch_prob,
            label_smoothing: cfg.smoothing,
            num_classes: classes,
        };
        // timm: dpr = linspace(0, drop_path_rate, depth)
        let dpr: Vec<f64> = (0..depth)
            .map(|i| {
                if depth > 1 {
                    cfg.drop_path * i as f64 / (depth - 1) as f64
                } else {
                    0.0
                }
            })
            .collect();
        let (c, s) = (P::IN_CHANS, P::IMG_SIZE);

        if state.global_micro_batch != 0
            && state.global_micro_batch != cfg.batch_size * comm.world_size()
        {
            return Err(TrainError::Config(format!(
                "the checkpoint was trained with {} images per micro-batch over all ranks, this \
                 run has {} ({} × {} ranks): keep batch × ranks to resume a fine-tuning",
                state.global_micro_batch,
                cfg.batch_size * comm.world_size(),
                cfg.batch_size,
                comm.world_size()
            )));
        }
        let run_dir = crate::rundir::begin(&cfg.out, state.step, &config_json, main)?;
        let mut log = RunLog::open(&cfg.out, total_steps, state.step, main)?;
        for note in &run_dir.notes {
            log.message(note);
        }
        if let Some((path, failures)) = &resumed_from {
            for f in failures {
                log.message(&format!("skipped checkpoint: {f}"));
            }
            log.message(&format!("resumed from {}", path.display()));
        }
        let mut sync = GradSync::default();
        log.message(&format!(
            "fine-tuning {} ({classes} classes) from {init}; {} train / {} val images, {total_steps} steps, lr {:.3e}",
            P::PRESET,
            data.train().len(),
            data.val().len(),
            cfg.lr
        ));
        let eval_path = cfg.out.join("eval.jsonl");
        let mut amp = (cfg.precision == Precision::AmpF16).then(|| {
            MixedPrecision::<Classifier<P, D>, D>::new(state.loss_scaler.unwrap_or_default())
        });
        if amp.is_some() && <D as MaeDevice>::keeps_host_memory() {
            log.message(crate::amp::ON_THE_CPU);
        }
        let mut grads = model.alloc_grads()?;
        let mut last_checkpoint = None;
        let mut last_eval = None;
        let mut group_loss = 0.0f64;
        let mut lr = 0.0;
        let mut outcome = Outcome::Finished;
        let save = |model: &Classifier<P, D>, opt: &AdamW, state: &TrainState| {
            checkpoint::save(&cfg.out, model, opt, state, &config_json, cfg.keep_last)
        };
        'epochs: while (state.epoch as usize) < cfg.epochs && state.step < total_steps {
            let epoch = state.epoch;
            for batch in loader.epoch(epoch, state.micro_step) {
                let mut batch = batch?;
                let k = batch.step;
                if k >= plan.usable_micro {
                    break;
                }
                if k % cfg.accum_iter == 0 {
                    let frac = plan.frac_epoch(epoch, k);
                    lr = lr_at(
                        frac,
                        cfg.lr,
                        cfg.min_lr,
                        cfg.warmup_epochs,
                        cfg.epochs as f64,
                    );
                    group_loss = 0.0;
                }
                // each rank its own draws (mixup λ, erasing, drop path), as each DDP process has
                let rank_seed = (comm.rank() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut rng = position_rng(cfg.seed ^ 0x6669_6e65_7475_6e65 ^ rank_seed, epoch, k);
                let mut images = std::mem::take(&mut batch.images);
                let per = c * s * s;
                if cfg.reprob > 0.0 {
                    for img in images.chunks_exact_mut(per) {
                        random_erase(&mut rng, img, c, s, s, cfg.reprob);
                    }
                }
                let targets = if mixup.active() {
                    mixup
                        .apply(&mut rng, &mut images, &batch.labels, c, s, s)?
                        .0
                } else {
                    mixup_targets(&batch.labels, classes, 1.0, cfg.smoothing)?
                };
                let scales: Vec<Option<BranchScales>> = dpr
                    .iter()
                    .map(|&p| (p > 0.0).then(|| BranchScales::sample(&mut rng, batch.len(), p)))
                    .collect();
                let loss_value = match &mut amp {
                    None => {
                        let logits = model.forward(&images, &scales, tape_from(&dev, grads))?;
                        let loss = soft_target_cross_entropy(logits, &targets)?;
                        let loss_value = loss.as_vec()[0];
                        check_loss(loss_value, state.step + 1, epoch)?;
                        grads = (loss / cfg.accum_iter as f32).backward();
                        loss_value
                    }
                    Some(amp) => {
                        let (loss_value, g) = amp.forward_backward(
                            &dev,
                            &model,
                            grads,
                            cfg.accum_iter,
                            |half, tape, scale| {
                                let logits = half.forward(&images, &scales, tape)?;
                                Ok(soft_target_cross_entropy_scaled(logits, &targets, scale)?)
                            },
                        )?;
                        grads = g;
                        check_loss(loss_value, state.step + 1, epoch)?;
                        loss_value
                    }
                };
                group_loss += loss_value as f64 / cfg.accum_iter as f64;
                log.images(batch.len() * comm.world_size());
                state.micro_step = k + 1;
                if (k + 1) % cfg.accum_iter != 0 {
                    continue;
                }
                let asked = self.stop.load(Ordering::SeqCst);
                let scalars = StepScalars {
                    loss: group_loss,
                    stop: if asked { 1.0 } else { 0.0 },
                    overflow: MixedPrecision::<Classifier<P, D>, D>::overflow_flag(amp.as_ref()),
                };
                let reduced =
                    all_reduce_with_head(&mut sync, comm, &mut model, &mut grads, scalars)?;
                group_loss = reduced.loss / comm.world_size() as f64;
                let stop = reduced.stop > 0.0;
                // mixed precision: gradients that overflowed on any rank skip the step everywhere
                let skip = reduced.overflow > 0.0;
                if !skip {
                    opt.update(&mut model.vit, &mut grads, lr)?;
                    step_host_tensor(&mut opt, "head.weight", &mut model.head.weight, &grads, lr)?;
                    step_host_tensor(&mut opt, "head.bias", &mut model.head.bias, &grads, lr)?;
                }
                if let Some(amp) = &mut amp {
                    amp.end_step(skip);
                    state.loss_scaler = Some(amp.scaler);
                }
                model.zero_grads(&mut grads)?;
                state.step += 1;
                let epoch_done = state.micro_step >= plan.usable_micro;
                if epoch_done {
                    state.epoch += 1;
                    state.micro_step = 0;
                }
                let done = state.step >= total_steps;
                if state.step.is_multiple_of(cfg.log_every) || done {
                    log.line(state.step, plan.frac_epoch(epoch, k), group_loss, lr)?;
                }
                log.position(state.step);
                if epoch_done && main {
                    let acc = evaluate(&model, data.val(), m, cfg.eval_batch_size)?;
                    if best.is_none_or(|(b, _)| acc.top1 > b) {
                        best = Some((acc.top1, state.epoch));
                        let meta = BTreeMap::from([
                            ("top1".to_string(), acc.top1.to_string()),
                            ("top5".to_string(), acc.top5.to_string()),
                            ("epoch".to_string(), state.epoch.to_string()),
                            ("step".to_string(), state.step.to_string()),
                            ("config".to_string(), config_json.clone()),
                            (
                                mae_core::weights::WRITTEN_BY_KEY.to_string(),
                                "mae finetune".to_string(),
                            ),
                        ]);
                        model.save_safetensors(&best_path, &meta)?;
                    }
                    let line = EvalLine {
                        epoch: state.epoch,
                        step: state.step,
                        top1: acc.top1,
                        top5: acc.top5,
                        best_top1: best.map_or(acc.top1, |b| b.0),
                    };
                    log.append(&eval_path, &line);
                    log.message(&format!(
                        "epoch {}: val top-1 {:.2}%, top-5 {:.2}% (best {:.2}%)",
                        state.epoch, acc.top1, acc.top5, line.best_top1
                    ));
                    last_eval = Some(acc);
                }
                if main && (state.step.is_multiple_of(cfg.save_every) || epoch_done || done || stop)
                {
                    last_checkpoint = Some(save(&model, &opt, &state)?);
                }
                if stop {
                    outcome = Outcome::Interrupted;
                    break 'epochs;
                }
                if done {
                    outcome = plan.outcome(state.step);
                    break 'epochs;
                }
            }
            if state.epoch == epoch {
                state.epoch += 1;
                state.micro_step = 0;
            }
        }
        if let Some(amp) = &amp {
            log.message(&amp.summary());
        }
        log.finish();
        if main && last_eval.is_none() && outcome != Outcome::Interrupted {
            // a run stopped by --max-steps mid-epoch still reports where it stands
            last_eval = Some(evaluate(&model, data.val(), m, cfg.eval_batch_size)?);
        }
        if main && last_checkpoint.is_none() && state.step > 0 {
            last_checkpoint = Some(save(&model, &opt, &state)?);
        }
        let summary = FinetuneSummary {
            outcome: format!("{outcome:?}"),
            step: state.step,
            best_top1: best.map(|b| b.0),
            best_epoch: best.map(|b| b.1),
            last: last_eval,
            checkpoint: last_checkpoint,
            best: best_path.exists().then_some(best_path.clone()),
            init,
            train_images: data.train().len(),
            val_images: data.val().len(),
        };
        if main {
            let text = serde_json::to_string_pretty(&summary)
                .map_err(|e| TrainError::Config(e.to_string()))?;
            mae_core::weights::write_atomic(&cfg.out.join("results.json"), text.as_bytes())?;
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn settings_are_checked() {
        let base = FinetuneConfig::new("d".into(), "o".into(), Preset::Tiny);
        assert!(base.validate().is_ok());
        for broken in [
            FinetuneConfig {
                batch_size: 7,
                ..base.clone()
            },
            FinetuneConfig {
                drop_path: 1.0,
                ..base.clone()
            },
            FinetuneConfig {
                layer_decay: 0.0,
                ..base.clone()
            },
            FinetuneConfig {
                smoothing: -0.1,
                ..base.clone()
            },
            FinetuneConfig {
                lr: 0.0,
                ..base.clone()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
        // an odd batch is fine without mixup
        let plain = FinetuneConfig {
            batch_size: 7,
            mixup: 0.0,
            cutmix: 0.0,
            ..base
        };
        assert!(plain.validate().is_ok());
    }
}
