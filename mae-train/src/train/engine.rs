//! The training engine: the loop every training task runs, written once.
//!
//! PyTorch counterpart: what `engine_pretrain.train_one_epoch` and
//! `engine_finetune.train_one_epoch` share, with the epoch loop of `main_pretrain.py` /
//! `main_finetune.py` around it: per micro-batch the learning rate is set at the start of each
//! accumulation group from the fractional epoch, the loss is divided by `accum_iter`, gradients
//! accumulate, and every `accum_iter` micro-batches the gradients are averaged over the ranks,
//! the optimizer steps and the gradients are zeroed. A non-finite loss stops the run.
//!
//! The engine owns resume, the step plan, precision (f32 or mixed), the gradient all-reduce
//! (which also carries the loss, the stop request and the overflow flag), the schedule, logging
//! and the save policy. A [`Task`] supplies what differs: its model ([`TrainModel`]), the inputs
//! and the loss of one micro-batch, and what happens at an epoch's end (evaluation, the best
//! model); the step itself is [`crate::step`], which `mae bench` times.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mae_core::MaeDevice;
use mae_data::loader::Loader;
use mae_data::Dataset;

use crate::amp::{self, MixedPrecision, Precision};
use crate::checkpoint::{self, Checkpointable, TrainState};
use crate::device::RunDevice;
use crate::dist::{check_in_sync, Comm, GradSync};
use crate::error::TrainError;
use crate::optimizer::Optimizer;
use crate::run::progress::{Hooks, Observer};
use crate::run::{self, Outcome, Resume, Resumed, RunSummary};
use crate::runlog::RunLog;
use crate::schedule::{lr_at, StepPlan};
use crate::step::{apply, forward_backward, reduce, Task, TrainModel};

/// A resumed run whose global micro-batch (batch × ranks) changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchChange {
    /// Continue at the same image of the epoch's order, rounded down to a whole step.
    Rescale,
    /// Refuse to resume.
    Refuse,
}

/// The loop's settings, the same for every task.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// Epochs of the schedule.
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<u64>,
    /// Images per micro-batch on each rank.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accum_iter: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Floor of the cosine.
    pub min_lr: f64,
    /// Linear warmup, epochs.
    pub warmup_epochs: f64,
    /// The run's seed.
    pub seed: u64,
    /// Metrics line every this many steps.
    pub log_every: u64,
    /// Checkpoint every this many steps.
    pub save_every: u64,
    /// Step checkpoints kept.
    pub keep_last: usize,
    /// f32 or mixed precision.
    pub precision: Precision,
    /// Compare the weights across ranks every this many steps.
    pub check_sync_every: Option<u64>,
    /// Also checkpoint at every epoch's end.
    pub save_each_epoch: bool,
    /// What a resume with another global micro-batch does.
    pub batch_change: BatchChange,
    /// TensorBoard event files in the run folder.
    pub tensorboard: bool,
}

/// The [`LoopSettings`] of a task's configuration `$cfg`, whose fields of the same names give the
/// schedule, the batch, the seed, logging and saving, and precision; the task's own choices follow
/// in braces.
macro_rules! loop_settings {
    ($cfg:expr, { $($field:ident: $value:expr),* $(,)? }) => {
        $crate::engine::LoopSettings {
            epochs: $cfg.epochs,
            max_steps: $cfg.max_steps,
            batch_size: $cfg.batch_size,
            accum_iter: $cfg.accum_iter,
            lr: $cfg.lr,
            min_lr: $cfg.min_lr,
            warmup_epochs: $cfg.warmup_epochs,
            seed: $cfg.seed,
            log_every: $cfg.log_every,
            save_every: $cfg.save_every,
            keep_last: $cfg.keep_last,
            precision: $cfg.precision,
            tensorboard: $cfg.tensorboard,
            $($field: $value),*
        }
    };
}
pub(crate) use loop_settings;

/// [`RunConfig`]'s `data`, `out` and `world_size` of a configuration with fields of those names.
macro_rules! run_config_fields {
    () => {
        fn data(&self) -> &std::path::Path {
            &self.data
        }
        fn out(&self) -> &std::path::Path {
            &self.out
        }
        fn world_size(&self) -> usize {
            self.world_size
        }
    };
}
pub(crate) use run_config_fields;

/// A task's configuration as the engine sees it.
pub trait RunConfig: serde::Serialize {
    /// The kind of run its folder holds.
    const KIND: crate::rundir::RunKind;
    /// The prepared dataset.
    fn data(&self) -> &Path;
    /// The run folder.
    fn out(&self) -> &Path;
    /// The ranks it was resolved for.
    fn world_size(&self) -> usize;
    /// The loop's settings.
    fn loop_settings(&self) -> LoopSettings;
}

/// What a training run is given from outside, the same for every task: where to resume from, the
/// stop flag and the observer ([`Hooks`]), the ranks, the dataset and the configuration as JSON.
pub struct RunInputs<'a> {
    /// Where to resume from.
    pub resume: &'a Resume,
    /// The stop flag (set from a signal handler to save and stop) and the observer.
    pub hooks: Hooks,
    /// The ranks.
    pub comm: &'a Comm,
    /// The dataset, open.
    pub data: Arc<Dataset>,
    /// What the run folder's `config.json` and the checkpoints hold.
    pub config_json: String,
}

impl<'a> RunInputs<'a> {
    /// Checks the world size and the run folder against `config` (nothing is written yet) and
    /// opens the dataset.
    pub fn open<C: RunConfig>(
        config: &C,
        resume: &'a Resume,
        hooks: Hooks,
        comm: &'a Comm,
    ) -> Result<Self, TrainError> {
        comm.check_world_size(config.world_size())?;
        crate::rundir::check(config.out(), C::KIND, resume, config.data())?;
        Ok(RunInputs {
            resume,
            hooks,
            comm,
            data: Arc::new(Dataset::open(config.data())?),
            config_json: crate::rundir::config_json(config)?,
        })
    }

    /// The dataset (at `path`) against preset `P`: its channels and a train split; for a task
    /// that needs labels (`labeled`, the task's name: fine-tuning, the probe) also a validation
    /// split and two or more classes.
    pub fn check_data<P: mae_core::MaePreset>(
        &self,
        path: &Path,
        labeled: Option<&str>,
    ) -> Result<(), TrainError> {
        let (data, m) = (&self.data, self.data.manifest());
        let bad = |m: String| Err(TrainError::Config(format!("{}: {m}", path.display())));
        if let Err(e) = crate::features::check_channels::<P>(m) {
            return bad(e.to_string());
        }
        let Some(task) = labeled else {
            return match data.train().is_empty() {
                true => bad("the train split is empty".into()),
                false => Ok(()),
            };
        };
        if data.train().is_empty() || data.val().is_empty() {
            return bad(format!(
                "{task} needs a train and a validation split ({} / {} images)",
                data.train().len(),
                data.val().len()
            ));
        }
        match m.classes.len() {
            classes @ 0..=1 => bad(format!(
                "{classes} class(es); {task} needs labeled data with 2 or more"
            )),
            _ => Ok(()),
        }
    }

    /// The engine of this run under `config`'s settings.
    pub fn engine<'b, C: RunConfig>(&'b self, config: &'b C) -> Engine<'b> {
        Engine {
            settings: config.loop_settings(),
            out: config.out(),
            resume: self.resume,
            stop: &self.hooks.stop,
            observer: &self.hooks.observer,
            what: C::KIND.name(),
            comm: self.comm,
            config_json: &self.config_json,
        }
    }
}

/// One run of the engine: its settings and what it is given from outside.
pub struct Engine<'a> {
    /// The loop's settings.
    pub settings: LoopSettings,
    /// The run folder.
    pub out: &'a Path,
    /// Where to resume from.
    pub resume: &'a Resume,
    /// Polled after every optimizer step (set from a signal handler).
    pub stop: &'a AtomicBool,
    /// Receives the run's events.
    pub observer: &'a Arc<dyn Observer>,
    /// What runs (the [`Event`](crate::run::progress::Event)'s name).
    pub what: &'static str,
    /// The ranks.
    pub comm: &'a Comm,
    /// The configuration written to the run folder and into checkpoints.
    pub config_json: &'a str,
}

/// The optimizer of task `T`'s model.
type Opt<T, D> = <<T as Task<D>>::Model as TrainModel<D>>::Optimizer;

/// How a run that stopped at `step` (not interrupted) ended.
fn outcome_at(plan: &StepPlan, step: u64) -> Outcome {
    if step < plan.full_steps {
        Outcome::MaxSteps
    } else {
        Outcome::Finished
    }
}

/// Where an epoch's loop stands between steps.
struct Looping<M: TrainModel<D>, D: RunDevice> {
    amp: Option<MixedPrecision<M, D>>,
    sync: GradSync,
    log: RunLog,
    last_checkpoint: Option<std::path::PathBuf>,
    last_loss: Option<f32>,
}

/// What the end of an optimizer step decided.
enum After {
    Continue,
    Stop(Outcome),
}

impl Engine<'_> {
    /// The state of a fresh run, then the resumed one where `resume` asks: the model and the
    /// optimizer loaded from the checkpoint, its seed checked.
    pub fn start<M: Checkpointable, O: Optimizer>(
        &self,
        model: &mut M,
        opt: &mut O,
    ) -> Result<(TrainState, Resumed), TrainError> {
        let s = &self.settings;
        let mut state = TrainState {
            step: 0,
            epoch: 0,
            micro_step: 0,
            seed: s.seed,
            global_micro_batch: s.batch_size * self.comm.world_size(),
            loss_scaler: None,
        };
        let resumed = run::resume(self.resume, self.out, model, opt, &mut state)?;
        run::check_seed(&state, s.seed)?;
        Ok((state, resumed))
    }

    /// Trains `model` with `task` on `loader`'s batches from `state` on: the whole loop, to the
    /// end of the schedule, `--max-steps` or a stop request. `what` names the data in the error
    /// of an epoch too short for a step.
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: Task<D>, D: RunDevice>(
        &self,
        dev: &D,
        task: &mut T,
        model: &mut T::Model,
        opt: &mut Opt<T, D>,
        loader: &Loader,
        mut state: TrainState,
        resumed: Resumed,
        what: impl FnOnce() -> String,
    ) -> Result<RunSummary, TrainError> {
        let s = &self.settings;
        let plan = StepPlan::new(
            loader.steps_per_epoch(),
            s.accum_iter,
            s.epochs,
            s.max_steps,
            what,
        )?;
        run::check_within(&resumed, &state, &plan)?;
        let moved = self.place(&mut state, &plan)?;
        let main = self.comm.is_main();
        let run_dir = crate::rundir::begin(self.out, state.step, self.config_json, main)?;
        let place = crate::runlog::LogPlace {
            main,
            tensorboard: s.tensorboard,
            what: self.what,
        };
        let observer = Arc::clone(self.observer);
        let log = RunLog::open(self.out, (plan.total_steps, state.step), place, observer)?;
        for note in &run_dir.notes {
            log.message(note);
        }
        if let Some(text) = moved {
            log.message(&text);
        }
        for text in task.start_messages(&plan, &resumed) {
            log.message(&text);
        }
        let amp = (s.precision == Precision::AmpF16)
            .then(|| MixedPrecision::new(state.loss_scaler.unwrap_or_default()));
        if amp.is_some() && <D as MaeDevice>::keeps_host_memory() {
            log.message(amp::ON_THE_CPU);
        }
        let mut looping = Looping {
            amp,
            sync: GradSync::default(),
            log,
            last_checkpoint: None,
            last_loss: None,
        };
        let outcome = self.epochs(
            dev,
            task,
            model,
            opt,
            loader,
            &plan,
            &mut state,
            &mut looping,
        )?;
        // a finished run has read every shard: it ends only once their checksums passed
        // (verified in the background since the dataset was opened)
        match outcome {
            Outcome::Finished => loader.dataset().wait_verified()?,
            _ => loader.dataset().integrity()?,
        }
        self.finish(model, opt, &state, looping, outcome, resumed)
    }

    /// A resumed run with another global micro-batch: its place in the epoch, rescaled or
    /// refused as the settings say. Returns the line to log.
    fn place(&self, state: &mut TrainState, plan: &StepPlan) -> Result<Option<String>, TrainError> {
        let s = &self.settings;
        let global = s.batch_size * self.comm.world_size();
        let old = state.global_micro_batch;
        if old == 0 || old == global {
            state.global_micro_batch = global;
            return Ok(None);
        }
        if s.batch_change == BatchChange::Refuse {
            return Err(TrainError::Config(format!(
                "the checkpoint was trained with {old} images per micro-batch over all ranks, \
                 this run has {global} ({} × {} ranks): keep batch × ranks to resume a \
                 fine-tuning",
                s.batch_size,
                self.comm.world_size()
            )));
        }
        // the same place in the epoch, in images, rounded down to a whole new micro-batch
        let images = state.micro_step.saturating_mul(old);
        let micro = images / global;
        state.micro_step = micro - micro % s.accum_iter;
        state.step = state
            .epoch
            .saturating_mul(plan.steps_per_epoch)
            .saturating_add((state.micro_step / s.accum_iter) as u64);
        state.global_micro_batch = global;
        Ok(Some(format!(
            "resumed with {global} images per micro-batch over all ranks (saved with {old}): \
             epoch {} continues at image {} of its order (was {images}), step {}",
            state.epoch,
            state.micro_step * global,
            state.step
        )))
    }

    /// The epochs from `state` on; returns how the run ended.
    #[allow(clippy::too_many_arguments)]
    fn epochs<T: Task<D>, D: RunDevice>(
        &self,
        dev: &D,
        task: &mut T,
        model: &mut T::Model,
        opt: &mut Opt<T, D>,
        loader: &Loader,
        plan: &StepPlan,
        state: &mut TrainState,
        looping: &mut Looping<T::Model, D>,
    ) -> Result<Outcome, TrainError> {
        let s = &self.settings;
        let world = self.comm.world_size();
        let mut grads = model.alloc_gradients()?;
        let (mut lr, mut group_loss) = (0.0, 0.0f64);
        while (state.epoch as usize) < s.epochs {
            if state.step >= plan.total_steps {
                return Ok(outcome_at(plan, state.step));
            }
            let epoch = state.epoch;
            for batch in loader.epoch(epoch, state.micro_step) {
                let batch = batch?;
                let (k, images) = (batch.step, batch.len());
                if k >= plan.usable_micro {
                    break;
                }
                if k.is_multiple_of(s.accum_iter) {
                    let frac = plan.frac_epoch(epoch, k);
                    lr = lr_at(frac, s.lr, s.min_lr, s.warmup_epochs, s.epochs as f64);
                    group_loss = 0.0;
                }
                let input = task.input(model, batch, epoch)?;
                let amp = looping.amp.as_mut();
                let (loss, g) =
                    forward_backward(task, dev, model, amp, grads, &input, s.accum_iter)?;
                grads = g;
                run::check_loss(loss, state.step + 1, epoch)?;
                group_loss += loss as f64 / s.accum_iter as f64;
                looping.log.images(images * world);
                state.micro_step = k + 1;
                if !(k + 1).is_multiple_of(s.accum_iter) {
                    continue;
                }
                let asked = self.stop.load(Ordering::SeqCst);
                let amp = looping.amp.as_ref();
                let sync = &mut looping.sync;
                let reduced = reduce(model, sync, self.comm, &mut grads, amp, group_loss, asked)?;
                group_loss = reduced.loss / world as f64;
                // mixed precision: gradients that overflowed on any rank skip the step everywhere
                let skip = reduced.overflow > 0.0;
                apply(model, opt, &mut grads, looping.amp.as_mut(), skip, lr)?;
                let frac = plan.frac_epoch(epoch, k);
                let step = (reduced.stop > 0.0, frac, group_loss, lr);
                if let After::Stop(outcome) =
                    self.after_step(task, model, opt, plan, state, looping, step)?
                {
                    return Ok(outcome);
                }
            }
            if state.epoch == epoch {
                // the epoch ended without a full last group (cannot happen with usable_micro, but
                // keep the position consistent)
                state.epoch += 1;
                state.micro_step = 0;
            }
        }
        Ok(Outcome::Finished)
    }

    /// After an optimizer step: the position, the sync check, the metrics line, the epoch's end,
    /// the save policy and the stop. `step` is (stop asked on a rank, fractional epoch, loss, lr).
    #[allow(clippy::too_many_arguments)]
    fn after_step<T: Task<D>, D: RunDevice>(
        &self,
        task: &mut T,
        model: &T::Model,
        opt: &Opt<T, D>,
        plan: &StepPlan,
        state: &mut TrainState,
        looping: &mut Looping<T::Model, D>,
        (stop, frac, loss, lr): (bool, f64, f64, f64),
    ) -> Result<After, TrainError> {
        let s = &self.settings;
        let main = self.comm.is_main();
        if let Some(amp) = &looping.amp {
            state.loss_scaler = Some(amp.scaler);
        }
        state.step += 1;
        looping.last_loss = Some(loss as f32);
        if let Some(every) = s.check_sync_every {
            if state.step.is_multiple_of(every) {
                check_in_sync(self.comm, model, state.step)?;
            }
        }
        let epoch_done = state.micro_step >= plan.usable_micro;
        if epoch_done {
            state.epoch += 1;
            state.micro_step = 0;
        }
        let done = state.step >= plan.total_steps;
        if state.step.is_multiple_of(s.log_every) || done {
            looping.log.line(state.step, frac, loss, lr)?;
        }
        looping.log.position(state.step);
        if epoch_done {
            task.epoch_end_collective(model, state)?;
        }
        if epoch_done && main {
            task.epoch_end(model, state, &mut looping.log)?;
        }
        let save_now = state.step.is_multiple_of(s.save_every)
            || (epoch_done && s.save_each_epoch)
            || done
            || stop;
        if main && save_now {
            let path = self.save(model, opt, state)?;
            looping.log.checkpoint(&path);
            looping.last_checkpoint = Some(path);
        }
        Ok(if stop {
            After::Stop(Outcome::Interrupted)
        } else if done {
            After::Stop(outcome_at(plan, state.step))
        } else {
            After::Continue
        })
    }

    /// A checkpoint of the run at `state`.
    fn save<M: Checkpointable, O: Optimizer>(
        &self,
        model: &M,
        opt: &O,
        state: &TrainState,
    ) -> Result<std::path::PathBuf, TrainError> {
        let keep = self.settings.keep_last;
        checkpoint::save(self.out, model, opt, state, self.config_json, keep)
    }

    /// The end of a run: the all-reduce and mixed-precision summaries, the log closed, a last
    /// checkpoint where none was written.
    fn finish<M: TrainModel<D>, D: RunDevice>(
        &self,
        model: &M,
        opt: &M::Optimizer,
        state: &TrainState,
        looping: Looping<M, D>,
        outcome: Outcome,
        resumed: Resumed,
    ) -> Result<RunSummary, TrainError> {
        let Looping {
            amp,
            sync,
            log,
            mut last_checkpoint,
            last_loss,
        } = looping;
        let world = self.comm.world_size();
        if world > 1 && sync.calls > 0 {
            log.message(&format!(
                "{world} ranks: gradient all-reduce {:.1} s in {} calls, bucket copies {:.1} s",
                sync.reduce_time.as_secs_f64(),
                sync.calls,
                sync.copy_time.as_secs_f64()
            ));
        }
        if let Some(amp) = &amp {
            log.message(&amp.summary());
        }
        log.finish();
        if self.comm.is_main() && last_checkpoint.is_none() && state.step > 0 {
            last_checkpoint = Some(self.save(model, opt, state)?);
        }
        Ok(RunSummary {
            outcome,
            step: state.step,
            checkpoint: last_checkpoint,
            resumed_from: resumed,
            initialized_from: None,
            last_loss,
        })
    }
}
