#![doc = include_str!("../README.md")]
//!
//! Modules: [`format`] (the on-disk layout, also in `FORMAT.md`), [`dataset`] (reading),
//! [`writer`] (writing), [`prepare`] (image folders, idx, CIFAR-10 → shards), [`resize`],
//! [`augment`] (the paper's transforms), [`randaugment`] (timm's RandAugment), [`mixup`] (mixup,
//! cutmix, random erasing for fine-tuning),
//! [`loader`] (batches), [`preview`] (a grid of samples), [`png`] (pictures that name their
//! writer), [`integrity`] (is an image file whole?); [`outdir`] (where `prepare` may write;
//! path resolution for such checks); `walk` holds the rules of what `prepare` reads.

pub mod augment;
pub mod dataset;
pub mod error;
pub mod format;
pub mod integrity;
pub mod loader;
pub mod mixup;
pub mod outdir;
pub mod png;
pub mod prepare;
pub mod preview;
pub mod randaugment;
pub mod resize;
mod verify;
mod walk;
pub mod writer;

pub use dataset::{Dataset, Sample, Split, SplitName, Verify};
pub use error::DataError;
pub use format::Manifest;
pub use prepare::{
    prepare, prepare_with, PrepareOptions, PrepareProgress, PrepareSummary, SourceKind,
};
