//! The one error type of `mae-core`. Every variant names what a person needs to fix the problem:
//! the file, the key, both shapes.

use std::path::PathBuf;

use crate::preset::Preset;

/// Errors from building, running, loading or saving MAE models.
#[derive(Debug, thiserror::Error)]
pub enum MaeError {
    /// A preset name that is not defined.
    #[error("unknown preset `{name}` (known presets: {known})")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// A mask ratio outside `[0, 1)`.
    #[error("mask ratio {0} is outside [0, 1)")]
    MaskRatio(f64),
    /// A mask ratio that leaves no visible or no masked patch.
    #[error("mask ratio {mask_ratio} keeps {len_keep} of {num_patches} patches visible; it must leave at least one visible and one masked patch (ratios above 0 and at most {:.4})", 1.0 - 1.0 / (*num_patches).max(1) as f64)]
    MaskRatioLeaves {
        /// The ratio.
        mask_ratio: f64,
        /// Patches per image.
        num_patches: usize,
        /// `floor(L·(1 − mask_ratio))`.
        len_keep: usize,
    },
    /// An image size that the preset's fixed position embeddings do not cover.
    #[error("preset {preset} takes {expected}×{expected} images, not {got}×{got}")]
    ImageSize {
        /// The preset.
        preset: Preset,
        /// Its image side.
        expected: usize,
        /// The side asked for.
        got: usize,
    },
    /// An input buffer whose size or shape does not fit.
    #[error("{what}: expected {expected}, got {got}")]
    InputShape {
        /// Which input.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was given.
        got: String,
    },
    /// Masking noise that is not a number.
    #[error("masking noise has a non-finite value at sample {sample}, patch {patch}")]
    NonFiniteNoise {
        /// Sample index.
        sample: usize,
        /// Patch index.
        patch: usize,
    },
    /// The loss was asked for with no masked patch (mask ratio 0 leaves nothing to reconstruct).
    #[error("no patch is masked (mask ratio 0): the reconstruction loss is undefined; use the encoder-only forward for features")]
    NothingMasked,
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that is not a valid safetensors file, or whose metadata is unreadable.
    #[error("{}: not a valid weights file: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file whose content checksum does not match its contents.
    #[error("{}: checksum mismatch (metadata {expected}, contents {actual}): the file is corrupt", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum in its metadata.
        expected: String,
        /// The checksum of its contents.
        actual: String,
    },
    /// A weights file lacks a tensor the model needs.
    #[error("{}: missing tensor `{key}` (expected shape {expected:?})", path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The missing key.
        key: String,
        /// Its shape in this preset.
        expected: Vec<usize>,
    },
    /// A weights file has a tensor the model does not know.
    #[error("{}: unexpected tensor `{key}` with shape {shape:?} (not part of preset {preset})", path.display())]
    UnexpectedKey {
        /// The file.
        path: PathBuf,
        /// The extra key.
        key: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The preset being loaded.
        preset: Preset,
    },
    /// A tensor whose shape does not fit the preset.
    #[error("{}: tensor `{key}` has shape {got:?}, but preset {preset} needs {expected:?}", path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Shape the preset needs.
        expected: Vec<usize>,
        /// Shape in the file.
        got: Vec<usize>,
        /// The preset being loaded.
        preset: Preset,
    },
    /// A tensor read as integers (labels) that holds fractions or values past f32's exact range.
    #[error("{}: tensor `{key}` ({dtype}) does not hold whole numbers; integer labels expected", path.display())]
    NotIntegers {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor of an element type we cannot read.
    #[error("{}: tensor `{key}` has dtype {dtype}; F32, F16, BF16 or F64 expected", path.display())]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor holding NaN or infinity.
    #[error("{}: tensor `{key}` holds a non-finite value", path.display())]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// An error of the compute device (allocation, kernel launch).
    #[error("device error: {0}")]
    Device(String),
}

impl MaeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MaeError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn device(e: impl std::fmt::Debug) -> Self {
        MaeError::Device(format!("{e:?}"))
    }
}
