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
pub use run::{device, progress, rundir, runlog, tensorboard};
pub use train::{
    amp, bench, checkpoint, clip, config, engine, finetune, lars, optim, optimizer, pretrain,
    probing, schedule, step,
};
pub use viz::{plot, reconstruct};

pub use config::{FinetuneConfig, FinetuneOverrides, PretrainConfig, PretrainOverrides};
pub use error::TrainError;
pub use pretrain::pretrain;
pub use run::{Outcome, Resume, RunSummary};

/// The mae-rs build: the crates' version and the git commit they were built from (recorded in
/// every run's `config.json` and `results.json`, in checkpoints' `config`, and by
/// `mae --version`).
pub mod build {
    /// The crates' version (`Cargo.toml`).
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// The git commit the crate was built from (12 hex digits; `unknown` outside a git
    /// checkout; a build with uncommitted changes says the commit it started from).
    pub const COMMIT: &str = env!("MAE_GIT_COMMIT");

    /// `0.1.0 (commit 566ae2d7c1a0)`.
    pub fn describe() -> String {
        format!("{VERSION} (commit {COMMIT})")
    }
}
