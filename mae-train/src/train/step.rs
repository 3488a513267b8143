//! One training step, the part every task shares and `mae bench` times: what a task supplies
//! ([`Task`], [`TrainModel`]), the forward and backward of a micro-batch ([`forward_backward`]),
//! the all-reduce of an optimizer step ([`reduce`]) and the update ([`apply`]).
//!
//! PyTorch counterpart: the body of `engine_pretrain.train_one_epoch` / `engine_finetune.
//! train_one_epoch`: `loss = model(...)`, `loss_scaler(loss / accum_iter, optimizer, ...)` (the
//! backward, DDP's gradient all-reduce, `optimizer.step()` unless the gradients overflowed) and
//! `optimizer.zero_grad()`.

use mae_core::dfdx::prelude::*;
use mae_core::{tape_from, AmpF16, ScaledLoss};
use mae_data::loader::Batch;

use crate::amp::{AmpModel, MixedPrecision};
use crate::checkpoint::{Checkpointable, TrainState};
use crate::device::RunDevice;
use crate::dist::{Comm, GradSync, StepScalars};
use crate::error::TrainError;
use crate::optimizer::Optimizer;
use crate::run::Resumed;
use crate::runlog::RunLog;
use crate::schedule::StepPlan;

/// A model the engine trains: its optimizer, its gradients, their all-reduce and the optimizer
/// step.
pub trait TrainModel<D: RunDevice>: Checkpointable + AmpModel<D> {
    /// Its optimizer (AdamW in pretraining and fine-tuning, LARS or AdamW in the linear probe).
    type Optimizer: Optimizer;
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
    /// The optimizer step of every trainable tensor at `lr`.
    fn update(
        &mut self,
        opt: &mut Self::Optimizer,
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
    /// The inputs of `batch` (micro-batch `batch.step` of `epoch`); `model` for what changes
    /// outside the gradient (the probe's BatchNorm statistics).
    fn input(
        &mut self,
        model: &mut Self::Model,
        batch: Batch,
        epoch: u64,
    ) -> Result<Self::Input, TrainError>;
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
    /// After the last step of an epoch, on every rank, before [`Task::epoch_end`]: where
    /// the ranks work together at the epoch's end (the sharded evaluation of `--dist-eval`).
    fn epoch_end_collective(
        &mut self,
        _model: &Self::Model,
        _state: &TrainState,
    ) -> Result<(), TrainError> {
        Ok(())
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
    opt: &mut M::Optimizer,
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
