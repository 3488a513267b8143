#![doc = include_str!("../README.md")]
//!
//! It owns time (steps, epochs); models come from `mae-core`, batches from `mae-data`.

pub mod amp;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod dist;
pub mod error;
pub mod features;
pub mod finetune;
pub mod linprobe;
#[cfg(feature = "nccl")]
mod nccl;
pub mod optim;
pub mod plot;
pub mod pretrain;
pub mod reconstruct;
pub mod rundir;
pub mod runlog;
pub mod schedule;

pub use config::{PretrainConfig, PretrainOverrides};
pub use error::TrainError;
pub use pretrain::{pretrain, Outcome, Resume, RunSummary};
