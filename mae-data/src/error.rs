//! The one error type of `mae-data`. Every variant names the file and the problem.

use std::path::PathBuf;

/// Errors from preparing, opening, verifying or loading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The manifest is missing, unreadable or inconsistent.
    #[error("{}: bad manifest: {message}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A shard whose header, size or contents do not match its manifest entry.
    #[error("{}: bad shard: {message}", path.display())]
    Shard {
        /// The shard file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A shard whose checksum differs from the manifest's.
    #[error("{}: checksum mismatch (manifest {expected}, file {actual}): the shard is corrupt", path.display())]
    Checksum {
        /// The shard file.
        path: PathBuf,
        /// Checksum in the manifest.
        expected: String,
        /// Checksum of the file.
        actual: String,
    },
    /// A source that cannot be prepared (wrong layout, missing files, malformed idx/CIFAR data).
    #[error("{}: {message}", path.display())]
    Source {
        /// The source file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The output directory exists and `--force` was not given.
    #[error("{}: already exists (use --force to replace it)", path.display())]
    OutputExists {
        /// The output directory.
        path: PathBuf,
    },
    /// `--force` was given for an output that is not a prepared dataset.
    #[error("{}: --force replaces only a dataset written by `mae data prepare`, and {reason}; choose another --out or move it away", path.display())]
    NotADataset {
        /// The output.
        path: PathBuf,
        /// Why it is not one.
        reason: String,
    },
    /// No image of the source could be read.
    #[error("{}: no image could be read ({skipped} skipped{first})", path.display())]
    NothingRead {
        /// The source.
        path: PathBuf,
        /// How many files were skipped.
        skipped: usize,
        /// `; the first: NAME: REASON`, when something was skipped.
        first: String,
    },
    /// `--strict` was given and some files were skipped.
    #[error("{}: {skipped} file(s) skipped and --strict given; first: {first}", path.display())]
    Strict {
        /// The source.
        path: PathBuf,
        /// How many were skipped.
        skipped: usize,
        /// The first skipped file and its reason.
        first: String,
    },
    /// An option out of range (size, channels, fraction, batch size...).
    #[error("invalid option: {0}")]
    Option(String),
    /// A loader worker died.
    #[error("loader worker failed: {0}")]
    Worker(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn shard(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Shard {
            path: path.into(),
            message: message.into(),
        }
    }
    pub(crate) fn source(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Source {
            path: path.into(),
            message: message.into(),
        }
    }
}
