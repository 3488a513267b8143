#![doc = include_str!("../README.md")]
//!
//! It owns time (steps, epochs); models come from `mae-core`, batches from `mae-data`.
//!
//! The folders: [`train`] (the engine and the tasks it runs, with their optimizer, schedule,
//! precision, checkpoints and settings), [`run`] (what every run shares: device, run folder,
//! log, resume), [`eval`] (features, kNN, linear probe, classifier evaluation), [`viz`] (plots,
//! reconstructions), [`dist`] (MPI, NCCL). The modules are also reachable at the crate's root
//! (`mae_train::pretrain`, `mae_train::checkpoint`, ...).

pub mod dist;
pub mod error;
pub mod eval;
pub mod run;
pub mod train;
pub mod viz;

pub use eval::{classify, feature_set, features, knn, linprobe, probe};
pub use run::{device, rundir, runlog};
pub use train::{
    amp, bench, checkpoint, clip, config, engine, finetune, lars, optim, optimizer, pretrain,
    probing, schedule, step,
};
pub use viz::{plot, reconstruct};

pub use config::{FinetuneConfig, FinetuneOverrides, PretrainConfig, PretrainOverrides};
pub use error::TrainError;
pub use pretrain::pretrain;
pub use run::{Outcome, Resume, RunSummary};
