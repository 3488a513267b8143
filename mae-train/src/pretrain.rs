//! The pretraining loop.
//!
//! PyTorch counterpart: `main_pretrain.py` + `engine_pretrain.train_one_epoch`: per micro-batch,
//! the learning rate is set at the start of each accumulation group from the fractional epoch,
//! the loss is divided by `accum_iter`, gradients accumulate, and every `accum_iter` micro-batches
//! the optimizer steps and gradients are zeroed. A non-finite loss stops the run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mae_core::dfdx::prelude::*;
use mae_core::weights::named_tensors;
use mae_core::{tape_from, Mae, MaePreset, Masking, PresetVisitor};
use mae_data::augment::{normalization, Augment, Transform};
use mae_data::loader::{Loader, LoaderConfig};
use mae_data::{Dataset, SplitName};
use rand::SeedableRng;
use serde::Serialize;

use crate::amp::{self, MixedPrecision, Precision};
use crate::checkpoint::{self, TrainState};
use crate::config::PretrainConfig;
use crate::device::{run_loop, RunDevice, TrainLoop};
use crate::dist::{check_in_sync, Comm, GradSync, StepScalars};
use crate::error::TrainError;
use crate::optim::AdamW;
use crate::rundir::RunKind;
use crate::runlog::RunLog;
use crate::schedule::{lr_at, StepPlan};
use mae_core::MaeDevice;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// All epochs done.
    Finished,
    /// `--max-steps` reached.
    MaxSteps,
    /// Asked to stop (SIGINT/SIGTERM); a checkpoint was written.
    Interrupted,
}

/// What [`pretrain`] reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// How it ended.
    pub outcome: Outcome,
    /// Optimizer steps done in total.
    pub step: u64,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// Checkpoint resumed from, if any, and the newer ones that failed to load.
    pub resumed_from: Option<(PathBuf, Vec<String>)>,
    /// Loss of the last optimizer step.
    pub last_loss: Option<f32>,
}

/// Where to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Start fresh.
    No,
    /// The newest loadable checkpoint of the run directory, if any.
    Auto,
    /// This checkpoint.
    Path(PathBuf),
}

pub use crate::runlog::MetricsLine;

/// Runs pretraining as configured, in one process. `stop` is polled after every optimizer step
/// (set it from a signal handler): the run then writes a checkpoint and returns
/// [`Outcome::Interrupted`].
pub fn pretrain(
    config: &PretrainConfig,
    resume: &Resume,
    stop: Arc<AtomicBool>,
) -> Result<RunSummary, TrainError> {
    pretrain_with(config, resume, stop, &Comm::single())
}

/// [`pretrain`] as one rank of a data-parallel run (`config.world_size` must be
/// `comm.world_size()`): each rank takes its slice of every global batch, gradients are averaged
/// over the ranks once per optimizer step, and every rank applies the same AdamW step. Rank 0
/// alone writes the configuration, metrics, progress and checkpoints; a stop asked on any rank
/// stops all of them after the same step.
pub fn pretrain_with(
    config: &PretrainConfig,
    resume: &Resume,
    stop: Arc<AtomicBool>,
    comm: &Comm,
) -> Result<RunSummary, TrainError> {
    comm.check_world_size(config.world_size)?;
    crate::rundir::check(&config.out, RunKind::Pretrain, resume, &config.data)?;
    config.model.preset.visit(Run {
        config,
        resume,
        stop,
        comm,
    })
}

struct Run<'a> {
    config: &'a PretrainConfig,
    resume: &'a Resume,
    stop: Arc<AtomicBool>,
    comm: &'a Comm,
}

/// The parameters that get weight decay: official shape of 2 or more dims, not a bias.
pub fn decayed_names<P: MaePreset, D: Device<f32>>(
    model: &Mae<P, f32, D>,
) -> Result<std::collections::BTreeSet<String>, TrainError> {
    Ok(named_tensors(model)?
        .into_iter()
        .filter(|t| t.trainable && t.shape.len() > 1 && !t.name.ends_with(".bias"))
        .map(|t| t.name)
        .collect())
}

/// An RNG that is a function of a seed and a position (epoch, micro-batch), so that resuming
/// needs no RNG state.
pub fn position_rng(seed: u64, epoch: u64, micro_step: usize) -> rand_chacha::ChaCha8Rng {
    let mut s = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    s.set_stream(epoch.wrapping_mul(1 << 32) ^ micro_step as u64);
    s
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
    let acc = crate::features::knn_classify(
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

/// Loads the checkpoint `resume` names into `model`, `opt` and `state`: nothing for
/// [`Resume::No`]; for `--resume auto` the newest one of `out` that loads (`None` when there is
/// none). Returns the checkpoint loaded with one line for each newer one that failed. Refuses
/// when `out` holds loadable checkpoints newer than the one loaded ([`crate::rundir`]).
pub(crate) fn resume<M: checkpoint::Checkpointable>(
    resume: &Resume,
    out: &std::path::Path,
    model: &mut M,
    opt: &mut AdamW,
    state: &mut TrainState,
) -> Result<Option<(PathBuf, Vec<String>)>, TrainError> {
    let (path, failures) = match resume {
        Resume::No => return Ok(None),
        Resume::Auto => match checkpoint::resume_latest(out, model, opt)? {
            None => return Ok(None),
            Some((path, s, failures)) => {
                *state = s;
                (path, failures)
            }
        },
        Resume::Path(path) => {
            *state = checkpoint::load(path, model, opt)?;
            (path.clone(), Vec::new())
        }
    };
    let failed: Vec<PathBuf> = failures.iter().map(|f| f.0.clone()).collect();
    crate::rundir::check_no_newer(out, state.step, &failed)?;
    Ok(Some((path, failures.into_iter().map(|f| f.1).collect())))
}

/// A resumed checkpoint must lie within the run's schedule: one past its end (a forged step of
/// 2^63 among them) would otherwise be "resumed" with nothing to do and win every later pruning.
pub(crate) fn check_within(
    resumed: &Option<(PathBuf, Vec<String>)>,
    state: &TrainState,
    plan: &crate::schedule::StepPlan,
) -> Result<(), TrainError> {
    match resumed {
        Some((path, _)) if state.step > plan.full_steps => Err(TrainError::checkpoint(
            path,
            format!(
                "step {} is past the end of this run's schedule ({} steps: {} an epoch); resume \
                 it with at least as many --epochs, or give a new --out",
                state.step, plan.full_steps, plan.steps_per_epoch
            ),
        )),
        _ => Ok(()),
    }
}

/// A resumed run must have the checkpoint's seed (masks and augmentation are keyed by it).
pub(crate) fn check_seed(state: &TrainState, seed: u64) -> Result<(), TrainError> {
    if state.seed != seed {
        return Err(TrainError::Config(format!(
            "the checkpoint was trained with seed {}, the configuration says {seed}",
            state.seed
        )));
    }
    Ok(())
}

/// The error that stops a run whose loss is not finite (as `main_pretrain.py` exits).
pub(crate) fn check_loss(loss: f32, step: u64, epoch: u64) -> Result<(), TrainError> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(TrainError::NonFiniteLoss { step, epoch, loss })
}

impl PresetVisitor for Run<'_> {
    type Output = Result<RunSummary, TrainError>;

    fn visit<P: MaePreset>(self) -> Self::Output {
        let cfg = self.config;
        let data = Arc::new(Dataset::open(&cfg.data)?);
        let m = data.manifest();
        if m.channels != P::IN_CHANS {
            return Err(TrainError::Config(format!(
                "{}: the data has {} channel(s), preset {} takes {} (prepare it with --channels {})",
                cfg.data.display(),
                m.channels,
                P::PRESET,
                P::IN_CHANS,
                P::IN_CHANS
            )));
        }
        if data.train().is_empty() {
            return Err(TrainError::Config(format!(
                "{}: the train split is empty",
                cfg.data.display()
            )));
        }
        run_loop::<_, P>(cfg.device, cfg.seed, &self, data, cfg)
    }
}

impl TrainLoop for Run<'_> {
    type Summary = RunSummary;

    /// The loop itself, on device `D`.
    fn train<P: MaePreset, D: RunDevice>(
        &self,
        dev: D,
        data: Arc<Dataset>,
        config_json: String,
    ) -> Result<RunSummary, TrainError> {
        let cfg = self.config;
        let m = data.manifest();
        let comm = self.comm;
        let main = comm.is_main();
        dev.enable_cache();
        let mut model = Mae::<P, f32, D>::new(&dev)?;
        let mut opt = AdamW::new(cfg.weight_decay, decayed_names(&model)?);
        let mut state = TrainState {
            step: 0,
            epoch: 0,
            micro_step: 0,
            seed: cfg.seed,
            global_micro_batch: cfg.batch_size * cfg.world_size,
            loss_scaler: None,
        };
        let resumed_from = resume(self.resume, &cfg.out, &mut model, &mut opt, &mut state)?;
        check_seed(&state, cfg.seed)?;

        let (mean, std) = normalization(m, false);
        let augment = Augment::new(Transform::pretrain(), P::IMG_SIZE, &mean, &std, cfg.seed)?;
        let loader = Loader::new(
            Arc::clone(&data),
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
        let plan = StepPlan::new(
            loader.steps_per_epoch(),
            cfg.accum_iter,
            cfg.epochs,
            cfg.max_steps,
            || {
                format!(
                    "{}: {} training images in batches of {} on each of {} rank(s)",
                    cfg.data.display(),
                    data.train().len(),
                    cfg.batch_size,
                    comm.world_size()
                )
            },
        )?;
        check_within(&resumed_from, &state, &plan)?;
        let total_steps = plan.total_steps;
        let global_micro_batch = cfg.batch_size * comm.world_size();
        let mut moved = None;
        if state.global_micro_batch != 0 && state.global_micro_batch != global_micro_batch {
            // resumed with another global batch (world size or batch size changed): the same
            // place in the epoch, in images, rounded down to a whole new micro-batch
            let images = state.micro_step.saturating_mul(state.global_micro_batch);
            let micro = images / global_micro_batch;
            state.micro_step = micro - micro % cfg.accum_iter;
            state.step = state
                .epoch
                .saturating_mul(plan.steps_per_epoch)
                .saturating_add((state.micro_step / cfg.accum_iter) as u64);
            moved = Some((state.global_micro_batch, images));
        }
        state.global_micro_batch = global_micro_batch;

        let run_dir = crate::rundir::begin(&cfg.out, state.step, &config_json, main)?;
        let mut log = RunLog::open(&cfg.out, total_steps, state.step, main)?;
        for note in &run_dir.notes {
            log.message(note);
        }
        if let Some((old, images)) = moved {
            log.message(&format!(
                "resumed with {global_micro_batch} images per micro-batch over all ranks \
                 (saved with {old}): epoch {} continues at image {} of its order (was {images}), \
                 step {}",
                state.epoch,
                state.micro_step * global_micro_batch,
                state.step
            ));
        }
        let mut amp = (cfg.precision == Precision::AmpF16).then(|| {
            MixedPrecision::<Mae<P, f32, D>, D>::new(state.loss_scaler.unwrap_or_default())
        });
        if amp.is_some() && <D as MaeDevice>::keeps_host_memory() {
            log.message(amp::ON_THE_CPU);
        }
        let mut sync = GradSync::default();
        let mut grads = model.alloc_grads();
        let mut last_checkpoint = None;
        let mut last_loss = None;
        let mut group_loss = 0.0f64;
        let mut lr = 0.0;
        let save = |model: &Mae<P, f32, D>, opt: &AdamW, state: &TrainState| {
            checkpoint::save(&cfg.out, model, opt, state, &config_json, cfg.keep_last)
        };

        let mut outcome = Outcome::Finished;
        'epochs: while (state.epoch as usize) < cfg.epochs {
            if state.step >= total_steps {
                outcome = plan.outcome(state.step);
                break;
            }
            let epoch = state.epoch;
            for batch in loader.epoch(epoch, state.micro_step) {
                let batch = batch?;
                let k = batch.step;
                if k >= plan.usable_micro {
                    break;
                }
                if k % cfg.accum_iter == 0 {
                    lr = lr_at(
                        plan.frac_epoch(epoch, k),
                        cfg.lr,
                        cfg.min_lr,
                        cfg.warmup_epochs,
                        cfg.epochs as f64,
                    );
                    group_loss = 0.0;
                }
                let masking = batch_masking(
                    cfg.seed,
                    epoch,
                    &batch.indices,
                    P::num_patches(),
                    cfg.model.mask_ratio,
                )?;
                let loss_value = match &mut amp {
                    None => {
                        let out = model.forward(
                            &batch.images,
                            &masking,
                            cfg.model.norm_pix_loss,
                            tape_from(&dev, grads),
                        )?;
                        // `as_vec` rather than `array`: the one read of the loss that every
                        // device has
                        let loss_value = out.loss.as_vec()[0];
                        check_loss(loss_value, state.step + 1, epoch)?;
                        grads = (out.loss / cfg.accum_iter as f32).backward();
                        loss_value
                    }
                    Some(amp) => {
                        let norm_pix_loss = cfg.model.norm_pix_loss;
                        let (loss_value, g) = amp.forward_backward(
                            &dev,
                            &model,
                            grads,
                            cfg.accum_iter,
                            |half, tape, scale| {
                                let imgs = &batch.images;
                                Ok(half.forward_scaled(
                                    imgs,
                                    &masking,
                                    norm_pix_loss,
                                    scale,
                                    tape,
                                )?)
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
                // one all-reduce per optimizer step: the gradients (averaged), the loss (for the
                // log, averaged as `misc.all_reduce_mean`) and the stop flag (any rank's)
                let asked = self.stop.load(Ordering::SeqCst);
                let reduced = sync.all_reduce(
                    comm,
                    &mut model,
                    &mut grads,
                    &mut [],
                    StepScalars {
                        loss: group_loss,
                        stop: if asked { 1.0 } else { 0.0 },
                        overflow: MixedPrecision::<Mae<P, f32, D>, D>::overflow_flag(amp.as_ref()),
                    },
                )?;
                group_loss = reduced.loss / comm.world_size() as f64;
                let stop = reduced.stop > 0.0;
                // mixed precision: gradients that overflowed on any rank skip the step everywhere
                let skip = reduced.overflow > 0.0;
                if !skip {
                    opt.update(&mut model, &mut grads, lr)?;
                }
                if let Some(amp) = &mut amp {
                    amp.end_step(skip);
                    state.loss_scaler = Some(amp.scaler);
                }
                model.zero_grads(&mut grads);
                state.step += 1;
                last_loss = Some(group_loss as f32);
                if let Some(every) = cfg.check_sync_every {
                    if state.step.is_multiple_of(every) {
                        check_in_sync(comm, &model, state.step)?;
                    }
                }
                if state.micro_step >= plan.usable_micro {
                    state.epoch += 1;
                    state.micro_step = 0;
                }
                let done = state.step >= total_steps;
                if state.step.is_multiple_of(cfg.log_every) || done {
                    log.line(state.step, plan.frac_epoch(epoch, k), group_loss, lr)?;
                }
                log.position(state.step);
                if main
                    && state.micro_step == 0
                    && cfg
                        .eval_every
                        .is_some_and(|n| state.epoch.is_multiple_of(n as u64))
                {
                    let line = knn_during_training(&model, &data, state.epoch, state.step)?;
                    log.message(&format!(
                        "epoch {}: kNN (k=20, cls) val top-1 {:.2}%, top-5 {:.2}%",
                        line.epoch, line.knn_top1, line.knn_top5
                    ));
                    log.append(&cfg.out.join("eval.jsonl"), &line);
                }
                if main && (state.step.is_multiple_of(cfg.save_every) || done || stop) {
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
                // the epoch ended without a full last group (cannot happen with usable_micro, but
                // keep the position consistent)
                state.epoch += 1;
                state.micro_step = 0;
            }
        }
        if comm.world_size() > 1 && sync.calls > 0 {
            log.message(&format!(
                "{} ranks: gradient all-reduce {:.1} s in {} calls, bucket copies {:.1} s",
                comm.world_size(),
                sync.reduce_time.as_secs_f64(),
                sync.calls,
                sync.copy_time.as_secs_f64()
            ));
        }
        if let Some(amp) = &amp {
            log.message(&amp.summary());
        }
        log.finish();
        if main && last_checkpoint.is_none() && state.step > 0 {
            last_checkpoint = Some(save(&model, &opt, &state)?);
        }
        Ok(RunSummary {
            outcome,
            step: state.step,
            checkpoint: last_checkpoint,
            resumed_from,
            last_loss,
        })
    }
}
