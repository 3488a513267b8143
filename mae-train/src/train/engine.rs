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
//! model). `mae bench` times the engine's own step ([`forward_backward`], [`reduce`], [`apply`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use mae_core::dfdx::prelude::*;
use mae_core::{tape_from, AmpF16, MaeDevice, ScaledLoss};
use mae_data::loader::{Batch, Loader};

use crate::amp::{self, AmpModel, MixedPrecision, Precision};
use crate::checkpoint::{self, Checkpointable, TrainState};
use crate::device::RunDevice;
use crate::dist::{check_in_sync, Comm, GradSync, StepScalars};
use crate::error::TrainError;
use crate::optim::AdamW;
use crate::run::{self, Outcome, Resume, Resumed, RunSummary};
use crate::runlog::RunLog;
use crate::schedule::{lr_at, StepPlan};

/// A model the engine trains: its gradients, their all-reduce and its optimizer step.
pub trait TrainModel<D: RunDevice>: Checkpointable + AmpModel<D> {
    /// A gradient set for every trainable tensor.
    fn alloc_gradients(&self) -> Result<Gradients<f32, D>, TrainError>;
    /// Zeroes it.
    fn zero_gradients(&self, grads: &mut Gradients<f32, D>) -> Result<(), TrainError>;
    /// Averages the gradients over the ranks, `scalars` summed with them
    /// ([`GradSync::all_reduce`]).
    fn all_reduce_gradients(
        &mut self,
        sync: &mut GradSync,
        comm: &Comm,
        grads: &mut Gradients<f32, D>,
        scalars: StepScalars,
    ) -> Result<StepScalars, TrainError>;
    /// The AdamW step of every trainable tensor at `lr`.
    fn update(
        &mut self,
        opt: &mut AdamW,
        grads: &mut Gradients<f32, D>,
        lr: f64,
    ) -> Result<(), TrainError>;
}

/// The loss of a micro-batch, on the tape.
pub type Loss<D> = Tensor<Rank0, f32, D, OwnedTape<f32, D>>;

/// The half copy of a task's model.
pub type Half<M, D> = <M as AmpModel<D>>::Half;

/// What a training task supplies to the engine.
pub trait Task<D: RunDevice> {
    /// The model trained.
    type Model: TrainModel<D>;
    /// What one micro-batch feeds the model (images with their masks, mixed images and targets).
    type Input;
    /// The inputs of `batch` (micro-batch `batch.step` of `epoch`).
    fn input(&mut self, batch: Batch, epoch: u64) -> Result<Self::Input, TrainError>;
    /// The f32 forward pass and loss.
    fn loss(
        &self,
        model: &Self::Model,
        input: &Self::Input,
        tape: OwnedTape<f32, D>,
    ) -> Result<Loss<D>, TrainError>;
    /// The mixed-precision forward pass on the half copy, its loss scaled by `scale`.
    fn scaled_loss(
        &self,
        half: &Half<Self::Model, D>,
        input: &Self::Input,
        tape: OwnedTape<AmpF16, D>,
        scale: f64,
    ) -> Result<ScaledLoss<AmpF16, D, OwnedTape<AmpF16, D>>, TrainError>;
    /// Lines logged once the run folder is set up.
    fn start_messages(&self, _plan: &StepPlan, _resumed: &Resumed) -> Vec<String> {
        Vec::new()
    }
    /// After the last step of an epoch (`state.epoch` epochs done), on rank 0.
    fn epoch_end(
        &mut self,
        _model: &Self::Model,
        _state: &TrainState,
        _log: &mut RunLog,
    ) -> Result<(), TrainError> {
        Ok(())
    }
}

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
            $($field: $value),*
        }
    };
}
pub(crate) use loop_settings;

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
    /// The ranks.
    pub comm: &'a Comm,
    /// The configuration written to the run folder and into checkpoints.
    pub config_json: &'a str,
}

/// How a run that stopped at `step` (not interrupted) ended.
fn outcome_at(plan: &StepPlan, step: u64) -> Outcome {
    if step < plan.full_steps {
        Outcome::MaxSteps
    } else {
        Outcome::Finished
    }
}

/// One micro-batch of `accum_iter`: forward and backward of `task`'s loss, in f32 or (with
/// `amp`) on the half copy; the gradients add up in `grads`. Returns the loss and the gradients.
pub fn forward_backward<T: Task<D>, D: RunDevice>(
    task: &T,
    dev: &D,
    model: &T::Model,
    amp: Option<&mut MixedPrecision<T::Model, D>>,
    grads: Gradients<f32, D>,
    input: &T::Input,
    accum_iter: usize,
) -> Result<(f32, Gradients<f32, D>), TrainError> {
    match amp {
        None => {
            let loss = task.loss(model, input, tape_from(dev, grads))?;
            // `as_vec` rather than `array`: the one read of the loss that every device has
            let value = loss.as_vec()[0];
            Ok((value, (loss / accum_iter as f32).backward()))
        }
        Some(amp) => amp.forward_backward(dev, model, grads, accum_iter, |half, tape, scale| {
            task.scaled_loss(half, input, tape, scale)
        }),
    }
}

/// The all-reduce of an optimizer step: the gradients (averaged), the step's loss, this rank's
/// stop request and (mixed precision) its overflow flag, summed over the ranks.
pub fn reduce<M: TrainModel<D>, D: RunDevice>(
    model: &mut M,
    sync: &mut GradSync,
    comm: &Comm,
    grads: &mut Gradients<f32, D>,
    amp: Option<&MixedPrecision<M, D>>,
    loss: f64,
    stop: bool,
) -> Result<StepScalars, TrainError> {
    let scalars = StepScalars {
        loss,
        stop: if stop { 1.0 } else { 0.0 },
        overflow: MixedPrecision::<M, D>::overflow_flag(amp),
    };
    model.all_reduce_gradients(sync, comm, grads, scalars)
}

/// The optimizer step at `lr` (skipped where the gradients overflowed on any rank), the loss
/// scale's update, and the gradients zeroed.
pub fn apply<M: TrainModel<D>, D: RunDevice>(
    model: &mut M,
    opt: &mut AdamW,
    grads: &mut Gradients<f32, D>,
    amp: Option<&mut MixedPrecision<M, D>>,
    skip: bool,
    lr: f64,
) -> Result<(), TrainError> {
    if !skip {
        model.update(opt, grads, lr)?;
    }
    if let Some(amp) = amp {
        amp.end_step(skip);
    }
    model.zero_gradients(grads)
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
    pub fn start<M: Checkpointable>(
        &self,
        model: &mut M,
        opt: &mut AdamW,
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
        opt: &mut AdamW,
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
        let log = RunLog::open(self.out, plan.total_steps, state.step, main)?;
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
        opt: &mut AdamW,
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
                let input = task.input(batch, epoch)?;
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
        opt: &AdamW,
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
        if epoch_done && main {
            task.epoch_end(model, state, &mut looping.log)?;
        }
        let save_now = state.step.is_multiple_of(s.save_every)
            || (epoch_done && s.save_each_epoch)
            || done
            || stop;
        if main && save_now {
            looping.last_checkpoint = Some(self.save(model, opt, state)?);
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
    fn save<M: Checkpointable>(
        &self,
        model: &M,
        opt: &AdamW,
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
        opt: &AdamW,
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
            last_loss,
        })
    }
}
