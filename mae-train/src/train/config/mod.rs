//! The settings of the training runs, each defined once: as given (`*Overrides`: every field
//! optional, read from a TOML file and, with the `clap` feature, parsed from the flags
//! themselves), then resolved and checked (`*Config`, written to the run folder). Pretraining in
//! [`pretrain`], fine-tuning in [`finetune`]; here the checks and the TOML reading they share.
//!
//! PyTorch counterpart: the `argparse` options of `main_pretrain.py` and `main_finetune.py`.

/// `from_toml_file` and `merged` of a settings struct whose fields are `Option`s but for the `bool`
/// flags named after `;`. Fields listed after `=> Config {` are also the resolved `Config`'s
/// fields of the same names: `fill` sets those that are given.
macro_rules! overrides {
    ($ty:ident { $($f:ident),* $(,)? } => $cfg:ident { $($plain:ident),* $(,)? } $(; $flag:ident)*) => {
        overrides!($ty { $($f,)* $($plain),* } $(; $flag)*);
        impl $ty {
            /// Sets each field of `cfg` that is given here (a `Copy` value) and resolves as is.
            fn fill(&self, cfg: &mut $cfg) {
                $(if let Some(v) = self.$plain { cfg.$plain = v; })*
            }
        }
    };
    ($ty:ident { $($f:ident),* $(,)? } $(; $flag:ident)*) => {
        impl $ty {
            /// Reads a TOML file of these settings ([`super::read_toml_file`]).
            pub fn from_toml_file(path: &std::path::Path) -> Result<Self, crate::TrainError> {
                super::read_toml_file(path)
            }

            /// `self` with every field that `over` sets replaced (a flag: set in either).
            pub fn merged(self, over: $ty) -> Self {
                $ty {
                    $($f: over.$f.or(self.$f),)*
                    $($flag: over.$flag || self.$flag,)*
                }
            }
        }
    };
}

mod finetune;
mod pretrain;

use std::path::Path;

use crate::error::TrainError;

pub use finetune::{FinetuneConfig, FinetuneOverrides};
pub use pretrain::{PretrainConfig, PretrainOverrides};

/// The largest batch a flag may ask for (images per micro-batch or per encoder pass; probe
/// batches over cached features too): sizes from user numbers stay sane.
pub const MAX_BATCH: usize = 1 << 16;

/// The most epochs a run may ask for.
pub const MAX_EPOCHS: usize = 1_000_000;

/// `--{flag} {v}` must be in `lo..=hi`.
pub fn check_count(flag: &str, v: usize, lo: usize, hi: usize) -> Result<(), TrainError> {
    if (lo..=hi).contains(&v) {
        return Ok(());
    }
    Err(TrainError::Config(if hi == usize::MAX {
        format!("--{flag} {v} must be at least {lo}")
    } else {
        format!("--{flag} {v} is outside {lo}..={hi}")
    }))
}

/// `--{flag} {v}` must be a finite number, at least 0 (above 0 when `positive`).
pub fn check_float(flag: &str, v: f64, positive: bool) -> Result<(), TrainError> {
    if v.is_finite() && (v > 0.0 || (!positive && v == 0.0)) {
        return Ok(());
    }
    Err(TrainError::Config(format!(
        "--{flag} {v} must be a finite number {}",
        if positive { "above 0" } else { "of at least 0" }
    )))
}

/// Reads settings from a TOML file, which must be a regular file of at most 1 MiB
/// (`--config /dev/zero` would be read until memory runs out); the error names the file and what
/// is wrong in it (an unknown key, a wrong type).
pub fn read_toml_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let bad = |message: String| TrainError::ConfigFile {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| TrainError::io(path, e))?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return Err(bad("not a regular file of at most 1 MiB".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    toml::from_str(&text).map_err(|e| bad(e.to_string()))
}

/// serde's default of a flag that is on unless said otherwise.
pub(crate) fn yes() -> bool {
    true
}

/// serde's default of a world size: one process.
fn one() -> usize {
    1
}

/// A TOML file of `text` in a fresh temporary folder (kept alive by the returned guard).
#[cfg(test)]
fn toml_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("run.toml");
    std::fs::write(&path, text).expect("write");
    (dir, path)
}
