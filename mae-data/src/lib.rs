#![doc = include_str!("../README.md")]
//!
//! Modules: [`format`] (the on-disk layout, also in `FORMAT.md`), [`dataset`] (reading),
//! [`writer`] (writing), [`prepare`] (image folders, idx, CIFAR-10 → shards), [`resize`],
//! [`augment`] (the paper's transforms), [`mixup`] (mixup, cutmix, random erasing for fine-tuning),
//! [`loader`] (batches), [`preview`] (a grid of samples).

pub mod augment;
pub mod dataset;
pub mod error;
pub mod format;
pub mod loader;
pub mod mixup;
pub mod prepare;
pub mod preview;
pub mod resize;
pub mod writer;

pub use dataset::{Dataset, Sample, Split, SplitName, Verify};
pub use error::DataError;
pub use format::Manifest;
pub use prepare::{prepare, PrepareOptions, PrepareSummary, SourceKind};
