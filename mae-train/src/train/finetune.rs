//! The fine-tuning task: the pretrained encoder trained end to end as a classifier, on the engine.
//!
//! PyTorch counterpart: `main_finetune.py` + `engine_finetune.py`: the global-pool ViT of
//! `models_vit.py` started from the MAE checkpoint (position embedding interpolated to the
//! fine-tuning grid, fresh `fc_norm` and head), AdamW (β 0.9/0.999) over `param_groups_lrd`
//! ([`crate::optim::param_groups_lrd`]: layer-wise lr decay; no weight decay on 1-D parameters,
//! `pos_embed` and `cls_token`), per-iteration warmup + half-cycle cosine with `lr_scale` per
//! group, drop path linearly up to `--drop-path` over the blocks, RandomResizedCrop + flip +
//! RandAugment (`--aa`, [`mae_data::randaugment`]) + random erasing, mixup and cutmix with label smoothing folded into soft targets
//! (SoftTargetCrossEntropy), evaluation (top-1/top-5, [`crate::classify`]) on the validation split
//! after every epoch (on rank 0, or shared out over the ranks with `--dist-eval`), the best model
//! kept. The loop is the [`crate::engine`]'s.
//!
//! `--clip-grad` clips the total gradient norm before each step ([`crate::clip`]). Checkpoints and
//! resumption work as in pretraining (model + optimizer state, position in the epoch).

use crate::run::progress::Hooks;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use mae_core::device::MaeDevice;
use mae_core::dfdx::prelude::*;
use mae_core::layers::BranchScales;
use mae_core::weights::official_shape;
use mae_core::{
    soft_target_cross_entropy, soft_target_cross_entropy_scaled, AmpF16, Classifier, MaePreset,
    NamedTensor, Pooling, ScaledLoss, TensorFile, TransformerDims,
};
use mae_data::augment::{normalization, Augment, Transform};
use mae_data::loader::{Batch, Loader, LoaderConfig};
use mae_data::mixup::{mixup_targets, random_erase, Mixup};
use mae_data::{Dataset, SplitName};
use serde::{Deserialize, Serialize};

use crate::checkpoint::TrainState;
use crate::classify::{evaluate, evaluate_sharded};
use crate::clip::{clip_coef, grad_norm};
use crate::device::{dispatch, Job, RunDevice};
use crate::dist::{all_reduce_with_head, Comm, GradSync, StepScalars};
use crate::engine::{loop_settings, BatchChange, LoopSettings, RunConfig, RunInputs};
use crate::error::TrainError;
use crate::knn::Accuracy;
use crate::optim::{param_groups_lrd, AdamW};
use crate::run::{position_rng, Outcome, Resume, Resumed};
use crate::runlog::RunLog;
use crate::step::{Half, Loss, Task, TrainModel};

use crate::config::FinetuneConfig;

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

/// Runs fine-tuning as one rank of `comm` ([`Comm::single`] for one process), as
/// [`crate::pretrain::pretrain`]: each rank trains on its slice of every global batch (with its
/// own mixup/cutmix, erasing and drop path draws, as under DDP), gradients are averaged once per
/// step; rank 0 alone evaluates, keeps the best model and writes checkpoints, metrics and
/// `results.json`; progress goes to `hooks.observer`. `hooks.stop` is polled after every
/// optimizer step.
pub fn finetune(
    config: &FinetuneConfig,
    resume: &Resume,
    hooks: Hooks,
    comm: &Comm,
) -> Result<FinetuneSummary, TrainError> {
    config.validate()?;
    let inputs = RunInputs::open(config, resume, hooks, comm)?;
    let job = Run {
        cfg: config,
        inputs,
    };
    dispatch(config.preset, config.device, config.seed, job)
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

/// A fine-tuning run, as a [`Job`].
struct Run<'a> {
    cfg: &'a FinetuneConfig,
    inputs: RunInputs<'a>,
}

const BEST: &str = "best.safetensors";

fn best_so_far(path: &std::path::Path) -> Option<(f64, u64)> {
    let meta = TensorFile::open(path).ok()?.metadata().ok()?;
    Some((
        meta.get("top1")?.parse().ok()?,
        meta.get("epoch")?.parse().ok()?,
    ))
}

impl RunConfig for FinetuneConfig {
    const KIND: crate::rundir::RunKind = crate::rundir::RunKind::Finetune;
    crate::engine::run_config_fields!();
    fn loop_settings(&self) -> LoopSettings {
        loop_settings!(self, {
            check_sync_every: None,
            save_each_epoch: true,
            batch_change: BatchChange::Refuse,
        })
    }
}

impl<P: MaePreset, D: RunDevice> TrainModel<D> for Classifier<P, D> {
    type Optimizer = AdamW;
    fn alloc_gradients(&self) -> Result<Gradients<f32, D>, TrainError> {
        Ok(self.alloc_grads()?)
    }
    fn zero_gradients(&self, grads: &mut Gradients<f32, D>) -> Result<(), TrainError> {
        Ok(self.zero_grads(grads)?)
    }
    fn all_reduce_gradients(
        &mut self,
        sync: &mut GradSync,
        comm: &Comm,
        grads: &mut Gradients<f32, D>,
        scalars: StepScalars,
    ) -> Result<StepScalars, TrainError> {
        all_reduce_with_head(sync, comm, &mut self.vit, &self.head, grads, scalars)
    }
    fn update(
        &mut self,
        opt: &mut AdamW,
        grads: &mut Gradients<f32, D>,
        lr: f64,
    ) -> Result<(), TrainError> {
        if let Some(max_norm) = opt.clip_grad {
            let head = [
                grads.get(&self.head.weight).as_vec(),
                grads.get(&self.head.bias).as_vec(),
            ];
            let norm = grad_norm(&mut self.vit, grads, &[&head[0], &head[1]])?;
            opt.grad_scale = clip_coef(norm, max_norm);
        }
        opt.update(&mut self.vit, grads, lr)?;
        step_host_tensor(opt, "head.weight", &mut self.head.weight, grads, lr)?;
        step_host_tensor(opt, "head.bias", &mut self.head.bias, grads, lr)
    }
}

/// What one fine-tuning micro-batch feeds the classifier: the augmented (mixed, erased) images,
/// their soft targets, and each block's drop-path draws.
struct Mixed {
    images: Vec<f32>,
    targets: Vec<f32>,
    scales: Vec<Option<BranchScales>>,
}

/// Fine-tuning as a [`Task`]: random erasing, mixup/cutmix and drop path per micro-batch, the
/// soft-target cross-entropy, evaluation and the best model at each epoch's end.
struct Finetuning<'a, P> {
    cfg: &'a FinetuneConfig,
    data: &'a Dataset,
    comm: &'a Comm,
    /// This epoch's accuracy from the ranks' shared evaluation (`--dist-eval`).
    shared_eval: Option<Accuracy>,
    rank: usize,
    mixup: Mixup,
    /// timm: `dpr = linspace(0, drop_path_rate, depth)`.
    dpr: Vec<f64>,
    init: String,
    config_json: &'a str,
    best: Option<(f64, u64)>,
    last_eval: Option<Accuracy>,
    preset: std::marker::PhantomData<P>,
}

impl<P: MaePreset, D: RunDevice> Task<D> for Finetuning<'_, P> {
    type Model = Classifier<P, D>;
    type Input = Mixed;

    fn input(
        &mut self,
        _: &mut Self::Model,
        mut batch: Batch,
        epoch: u64,
    ) -> Result<Mixed, TrainError> {
        let cfg = self.cfg;
        let (c, s) = (P::IN_CHANS, P::IMG_SIZE);
        // each rank its own draws (mixup λ, erasing, drop path), as each DDP process has
        let rank_seed = (self.rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let seed = cfg.seed ^ 0x6669_6e65_7475_6e65 ^ rank_seed;
        let mut rng = position_rng(seed, epoch, batch.step);
        let mut images = std::mem::take(&mut batch.images);
        if cfg.reprob > 0.0 {
            for img in images.chunks_exact_mut(c * s * s) {
                random_erase(&mut rng, img, c, s, s, cfg.reprob);
            }
        }
        let targets = if self.mixup.active() {
            let labels = &batch.labels;
            self.mixup.apply(&mut rng, &mut images, labels, c, s, s)?.0
        } else {
            let classes = self.mixup.num_classes;
            mixup_targets(&batch.labels, classes, 1.0, cfg.smoothing)?
        };
        let scales = self
            .dpr
            .iter()
            .map(|&p| (p > 0.0).then(|| BranchScales::sample(&mut rng, batch.len(), p)))
            .collect();
        Ok(Mixed {
            images,
            targets,
            scales,
        })
    }

    fn loss(
        &self,
        model: &Self::Model,
        input: &Mixed,
        tape: OwnedTape<f32, D>,
    ) -> Result<Loss<D>, TrainError> {
        let logits = model.forward(&input.images, &input.scales, tape)?;
        Ok(soft_target_cross_entropy(logits, &input.targets)?)
    }

    fn scaled_loss(
        &self,
        half: &Half<Self::Model, D>,
        input: &Mixed,
        tape: OwnedTape<AmpF16, D>,
        scale: f64,
    ) -> Result<ScaledLoss<AmpF16, D, OwnedTape<AmpF16, D>>, TrainError> {
        let logits = half.forward(&input.images, &input.scales, tape)?;
        Ok(soft_target_cross_entropy_scaled(
            logits,
            &input.targets,
            scale,
        )?)
    }

    fn start_messages(&self, plan: &crate::schedule::StepPlan, resumed: &Resumed) -> Vec<String> {
        let mut lines = crate::run::resume_messages(resumed);
        lines.push(format!(
            "fine-tuning {} ({} classes) from {}; {} train / {} val images, {} steps, lr {:.3e}",
            P::PRESET,
            self.mixup.num_classes,
            self.init,
            self.data.train().len(),
            self.data.val().len(),
            plan.total_steps,
            self.cfg.lr
        ));
        lines
    }

    /// `--dist-eval` with several ranks: each classifies its share of the validation split.
    fn epoch_end_collective(
        &mut self,
        model: &Self::Model,
        _state: &TrainState,
    ) -> Result<(), TrainError> {
        if self.cfg.dist_eval && self.comm.world_size() > 1 {
            let m = self.data.manifest();
            let batch = self.cfg.eval_batch_size;
            self.shared_eval = Some(evaluate_sharded(
                model,
                self.data.val(),
                m,
                batch,
                self.comm,
            )?);
        }
        Ok(())
    }

    fn epoch_end(
        &mut self,
        model: &Self::Model,
        state: &TrainState,
        log: &mut RunLog,
    ) -> Result<(), TrainError> {
        let cfg = self.cfg;
        let m = self.data.manifest();
        let acc = match self.shared_eval.take() {
            Some(acc) => acc,
            None => evaluate(model, self.data.val(), m, cfg.eval_batch_size)?,
        };
        if self.best.is_none_or(|(b, _)| acc.top1 > b) {
            self.best = Some((acc.top1, state.epoch));
            let meta = BTreeMap::from([
                ("top1".to_string(), acc.top1.to_string()),
                ("top5".to_string(), acc.top5.to_string()),
                ("epoch".to_string(), state.epoch.to_string()),
                ("step".to_string(), state.step.to_string()),
                ("config".to_string(), self.config_json.to_string()),
                (
                    mae_core::weights::WRITTEN_BY_KEY.to_string(),
                    "mae finetune".to_string(),
                ),
            ]);
            model.save_safetensors(cfg.out.join(BEST), &meta)?;
        }
        let line = EvalLine {
            epoch: state.epoch,
            step: state.step,
            top1: acc.top1,
            top5: acc.top5,
            best_top1: self.best.map_or(acc.top1, |b| b.0),
        };
        log.append(&cfg.out.join("eval.jsonl"), &line);
        // main_finetune.py's tags
        let top = [("perf/test_acc1", acc.top1), ("perf/test_acc5", acc.top5)];
        log.eval(state.epoch, state.step, &top);
        log.message(&format!(
            "epoch {}: val top-1 {:.2}%, top-5 {:.2}% (best {:.2}%)",
            state.epoch, acc.top1, acc.top5, line.best_top1
        ));
        self.last_eval = Some(acc);
        Ok(())
    }
}

/// The classifier of preset `P` on `dev`, from the pretrained checkpoint when there is one, and
/// what its load did.
fn init_model<P: MaePreset, D: RunDevice>(
    dev: &D,
    classes: usize,
    pooling: Pooling,
    checkpoint: Option<&std::path::Path>,
) -> Result<(Classifier<P, D>, String), TrainError> {
    let mut model = Classifier::<P, D>::with_pooling(dev, classes, pooling)?;
    let Some(path) = checkpoint else {
        return Ok((model, "random init".to_string()));
    };
    let r = model.load_pretrained(&mae_core::model_files::open_weights(path)?.0)?;
    let mut text = format!(
        "{}: loaded {} tensors; fresh: {}",
        path.display(),
        r.loaded.len(),
        r.fresh.join(", ")
    );
    if let Some((old, new)) = r.interpolated {
        text += &format!("; pos_embed interpolated {old}×{old} → {new}×{new}");
    }
    Ok((model, text))
}

/// AdamW (β 0.9/0.999) over the layer-decayed parameter groups of `model`.
fn optimizer<P: MaePreset, D: RunDevice>(
    model: &Classifier<P, D>,
    cfg: &FinetuneConfig,
) -> Result<AdamW, TrainError> {
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
    opt.clip_grad = cfg.clip_grad;
    Ok(opt)
}

/// The training batches: RandomResizedCrop from `--min-crop-scale` + flip, then RandAugment
/// (`--aa`), whole batches only.
fn train_loader<P: MaePreset>(
    cfg: &FinetuneConfig,
    data: &Arc<Dataset>,
    comm: &Comm,
) -> Result<Loader, TrainError> {
    let (mean, std) = normalization(data.manifest(), false);
    let transform = match Transform::finetune() {
        Transform::Pretrain { ratio, hflip, .. } => Transform::Pretrain {
            scale: (cfg.min_crop_scale, 1.0),
            ratio,
            hflip,
        },
        other => other,
    };
    let mut augment = Augment::new(transform, P::IMG_SIZE, &mean, &std, cfg.seed)?;
    if let Some(aa) = &cfg.aa {
        augment = augment.with_rand_augment(aa.parse()?)?;
    }
    Ok(Loader::new(
        Arc::clone(data),
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
    )?)
}

impl Job for Run<'_> {
    type Output = FinetuneSummary;

    /// The data against the preset, before the device opens.
    fn check<P: MaePreset>(&self) -> Result<(), TrainError> {
        self.inputs
            .check_data::<P>(&self.cfg.data, Some("fine-tuning"))?;
        let classes = self.inputs.data.manifest().classes.len();
        match self.cfg.nb_classes {
            Some(n) if n != classes => Err(TrainError::Config(format!(
                "--nb-classes {n}: {} has {classes} classes",
                self.cfg.data.display()
            ))),
            _ => Ok(()),
        }
    }

    /// The run on device `D`: the classifier, its optimizer and its batches, then the engine;
    /// `results.json` at the end.
    fn run<P: MaePreset, D: RunDevice>(self, dev: D) -> Result<FinetuneSummary, TrainError> {
        let (cfg, data) = (self.cfg, &self.inputs.data);
        let config_json = self.inputs.config_json.as_str();
        let m = data.manifest();
        let classes = m.classes.len();
        let comm = self.inputs.comm;
        let main = comm.is_main();
        dev.enable_cache();
        let (mut model, init) =
            init_model::<P, D>(&dev, classes, cfg.pooling(), cfg.checkpoint.as_deref())?;
        let mut opt = optimizer(&model, cfg)?;
        let engine = self.inputs.engine(cfg);
        let (state, resumed) = engine.start(&mut model, &mut opt)?;
        let best_path = cfg.out.join(BEST);
        let best = if state.step > 0 {
            best_so_far(&best_path)
        } else {
            None
        };
        let loader = train_loader::<P>(cfg, data, comm)?;
        let depth = <P::Encoder as TransformerDims>::DEPTH;
        let dpr = (0..depth)
            .map(|i| match depth {
                0 | 1 => 0.0,
                _ => cfg.drop_path * i as f64 / (depth - 1) as f64,
            })
            .collect();
        let mut task = Finetuning::<P> {
            cfg,
            data,
            comm,
            shared_eval: None,
            rank: comm.rank(),
            mixup: Mixup {
                mixup_alpha: cfg.mixup,
                cutmix_alpha: cfg.cutmix,
                prob: cfg.mixup_prob,
                switch_prob: cfg.mixup_switch_prob,
                label_smoothing: cfg.smoothing,
                num_classes: classes,
            },
            dpr,
            init,
            config_json,
            best,
            last_eval: None,
            preset: std::marker::PhantomData,
        };
        let what = || {
            format!(
                "{}: {} training images in full batches of {}",
                cfg.data.display(),
                data.train().len(),
                cfg.batch_size
            )
        };
        let run = engine.run(
            &dev, &mut task, &mut model, &mut opt, &loader, state, resumed, what,
        )?;
        let mut last = task.last_eval;
        if main && last.is_none() && run.outcome != Outcome::Interrupted {
            // a run stopped by --max-steps mid-epoch still reports where it stands
            last = Some(evaluate(&model, data.val(), m, cfg.eval_batch_size)?);
        }
        let summary = FinetuneSummary {
            outcome: format!("{:?}", run.outcome),
            step: run.step,
            best_top1: task.best.map(|b| b.0),
            best_epoch: task.best.map(|b| b.1),
            last,
            checkpoint: run.checkpoint,
            best: best_path.exists().then_some(best_path.clone()),
            init: task.init,
            train_images: data.train().len(),
            val_images: data.val().len(),
        };
        if main {
            crate::rundir::write_results(&cfg.out, &summary)?;
        }
        Ok(summary)
    }
}
