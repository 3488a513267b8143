//! The one error type of `mae-train`.

use std::path::PathBuf;

use mae_core::MaeError;
use mae_data::DataError;

/// Errors from training, checkpoints and the tools around them.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting that is missing, out of range or inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// A configuration file that does not parse.
    #[error("{}: {message}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// From the model.
    #[error(transparent)]
    Model(#[from] MaeError),
    /// From the data.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint that cannot be used.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `--resume` found nothing usable.
    #[error("{}: no checkpoint could be loaded{}", dir.display(), if tried.is_empty() { String::new() } else { format!(" (tried: {})", tried.join("; ")) })]
    NoCheckpoint {
        /// The run directory.
        dir: PathBuf,
        /// Each checkpoint tried and why it failed.
        tried: Vec<String>,
    },
    /// The loss became NaN or infinite.
    #[error(
        "loss is {loss} at step {step} (epoch {epoch}); stopping, the last good checkpoint is kept"
    )]
    NonFiniteLoss {
        /// Optimizer step being computed.
        step: u64,
        /// Epoch.
        epoch: u64,
        /// The value.
        loss: f32,
    },
    /// A distributed-run problem (launch, collectives, ranks out of step).
    #[error("distributed run: {0}")]
    Dist(String),
    /// A device error.
    #[error("device error: {0}")]
    Device(String),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A dfdx device error (which only implements `Debug`) as a [`TrainError::Device`].
pub(crate) fn device_err<E: std::fmt::Debug>(e: E) -> TrainError {
    TrainError::Device(format!("{e:?}"))
}
