//! # mae-train
//!
//! Pretraining, fine-tuning and linear-probe loops for MAE: optimizers, schedules, checkpoints.
//!
//! Not built yet: this crate is filled in by the training issue. Today it only fixes its place in
//! the workspace.
