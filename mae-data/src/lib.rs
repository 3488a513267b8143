//! # mae-data
//!
//! Image datasets for MAE: memory-mapped, checksummed shards, the paper's augmentation and the
//! batch loader. It knows images and batches, never models.
//!
//! Not built yet: this crate is filled in by the data issue. Today it only fixes its place in the
//! workspace.
