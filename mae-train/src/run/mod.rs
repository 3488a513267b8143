//! What every run shares: where it computes ([`device`]), its folder ([`rundir`]), its log
//! ([`runlog`]), how it ended ([`Outcome`], [`RunSummary`]), where it resumes from ([`Resume`])
//! and the checks a resumed run passes.
//!
//! PyTorch counterpart: `util/misc.py` (`auto_load_model`, the resume logic of
//! `main_pretrain.py` / `main_finetune.py`) and the `--device` / `--output_dir` handling.

pub mod device;
pub mod progress;
pub mod rundir;
pub mod runlog;
pub mod tensorboard;

use std::path::{Path, PathBuf};

use rand::SeedableRng;

use crate::checkpoint::{self, Checkpointable, TrainState};
use crate::error::TrainError;
use crate::optimizer::Optimizer;
use crate::schedule::StepPlan;

pub use runlog::MetricsLine;

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

/// What a training run reports.
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
    /// Weights a fresh run started from (`--init`) and what was loaded from them.
    pub initialized_from: Option<(PathBuf, String)>,
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

/// The checkpoint a run resumed from, and one line for each newer one that failed to load.
pub type Resumed = Option<(PathBuf, Vec<String>)>;

/// The lines a resumed run logs at its start: each checkpoint skipped, then the one loaded.
pub fn resume_messages(resumed: &Resumed) -> Vec<String> {
    let Some((path, failures)) = resumed else {
        return Vec::new();
    };
    let mut lines: Vec<String> = failures
        .iter()
        .map(|f| format!("skipped checkpoint: {f}"))
        .collect();
    lines.push(format!("resumed from {}", path.display()));
    lines
}

/// An RNG that is a function of a seed and a position (epoch, micro-batch), so that resuming
/// needs no RNG state.
pub fn position_rng(seed: u64, epoch: u64, micro_step: usize) -> rand_chacha::ChaCha8Rng {
    let mut s = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    s.set_stream(epoch.wrapping_mul(1 << 32) ^ micro_step as u64);
    s
}

/// Loads the checkpoint `resume` names into `model`, `opt` and `state`: nothing for
/// [`Resume::No`]; for `--resume auto` the newest one of `out` that loads (`None` when there is
/// none). Returns the checkpoint loaded with one line for each newer one that failed. Refuses
/// when `out` holds loadable checkpoints newer than the one loaded ([`rundir`]).
pub(crate) fn resume<M: Checkpointable, O: Optimizer>(
    resume: &Resume,
    out: &Path,
    model: &mut M,
    opt: &mut O,
    state: &mut TrainState,
) -> Result<Resumed, TrainError> {
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
    rundir::check_no_newer(out, state.step, &failed)?;
    Ok(Some((path, failures.into_iter().map(|f| f.1).collect())))
}

/// A resumed checkpoint must lie within the run's schedule: one past its end (a forged step of
/// 2^63 among them) would otherwise be "resumed" with nothing to do and win every later pruning.
pub(crate) fn check_within(
    resumed: &Resumed,
    state: &TrainState,
    plan: &StepPlan,
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
