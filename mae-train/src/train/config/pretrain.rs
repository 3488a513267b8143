//! The pretraining settings: defaults, a TOML file, and command-line flags over it.
//!
//! PyTorch counterpart: the `argparse` options of `main_pretrain.py` (`--epochs`, `--batch_size`,
//! `--accum_iter`, `--blr`, `--lr`, `--min_lr`, `--warmup_epochs`, `--weight_decay`,
//! `--mask_ratio`, `--norm_pix_loss`, `--seed`, `--resume`), with the paper's values as
//! defaults where the two differ (blr 1.5e-4).

use std::path::PathBuf;

use mae_core::{MaeConfig, Preset};
use serde::{Deserialize, Serialize};

use super::{check_count, check_float, one, MAX_BATCH, MAX_EPOCHS};
use crate::error::TrainError;

/// Settings as given (a TOML file or flags): every field optional. With the `clap` feature it is
/// also the `mae pretrain` argument list.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct PretrainOverrides {
    /// Prepared dataset directory (trains on its train split).
    #[cfg_attr(feature = "clap", arg(long))]
    pub data: Option<PathBuf>,
    /// Model preset (`tiny`, `vit-b16`, ...; default with --init: the one whose shapes the
    /// weights have).
    #[cfg_attr(feature = "clap", arg(long))]
    pub preset: Option<Preset>,
    /// Start from these weights: any file `mae import` reads (the released `.pth`, a timm or
    /// Hugging Face file, safetensors; full MAE, or encoder only with the decoder initialized as
    /// the official code does). A fresh run: step 0, a new optimizer, the recipe's schedule.
    /// (--resume continues a run of ours exactly.)
    #[cfg_attr(feature = "clap", arg(long))]
    pub init: Option<PathBuf>,
    /// Run directory: checkpoints, metrics.jsonl, config.json.
    #[cfg_attr(feature = "clap", arg(long))]
    pub out: Option<PathBuf>,
    /// Epochs (the schedule's length).
    #[cfg_attr(feature = "clap", arg(long))]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps.
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_steps: Option<u64>,
    /// Images per micro-batch.
    #[cfg_attr(feature = "clap", arg(long))]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[cfg_attr(feature = "clap", arg(long))]
    pub accum_iter: Option<usize>,
    /// Base learning rate: lr = blr · batch · accum / 256.
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "lr"))]
    pub blr: Option<f64>,
    /// Absolute learning rate (overrides --blr).
    #[cfg_attr(feature = "clap", arg(long))]
    pub lr: Option<f64>,
    /// Floor of the cosine schedule.
    #[cfg_attr(feature = "clap", arg(long))]
    pub min_lr: Option<f64>,
    /// Linear warmup, in epochs.
    #[cfg_attr(feature = "clap", arg(long))]
    pub warmup_epochs: Option<f64>,
    /// AdamW weight decay (weights only).
    #[cfg_attr(feature = "clap", arg(long))]
    pub weight_decay: Option<f64>,
    /// Fraction of patches removed.
    #[cfg_attr(feature = "clap", arg(long))]
    pub mask_ratio: Option<f64>,
    /// Reconstruct per-patch normalized pixels.
    #[cfg_attr(feature = "clap", arg(long, num_args = 0..=1, default_missing_value = "true"))]
    pub norm_pix_loss: Option<bool>,
    /// Seed of initialization, data order, augmentation and masking.
    #[cfg_attr(feature = "clap", arg(long))]
    pub seed: Option<u64>,
    /// Write a checkpoint every this many optimizer steps.
    #[cfg_attr(feature = "clap", arg(long))]
    pub save_every: Option<u64>,
    /// Keep only the newest K checkpoints.
    #[cfg_attr(feature = "clap", arg(long))]
    pub keep_last: Option<usize>,
    /// Loader worker threads (default: the number of cores).
    #[cfg_attr(feature = "clap", arg(long))]
    pub workers: Option<usize>,
    /// Write a metrics line every this many optimizer steps.
    #[cfg_attr(feature = "clap", arg(long))]
    pub log_every: Option<u64>,
    /// TensorBoard event files in the run folder (`tensorboard --logdir RUN`): on unless
    /// `--tensorboard false`.
    #[cfg_attr(feature = "clap", arg(long, num_args = 0..=1, default_missing_value = "true"))]
    pub tensorboard: Option<bool>,
    /// Image side; must be the preset's.
    #[cfg_attr(feature = "clap", arg(long))]
    pub input_size: Option<usize>,
    /// Every this many epochs, weighted kNN (k=20, cls) of the encoder on the dataset's
    /// val split against its train split, logged to eval.jsonl.
    #[cfg_attr(feature = "clap", arg(long))]
    pub eval_every: Option<usize>,
    /// Debug (data-parallel runs): compare a checksum of the weights across ranks every this many
    /// optimizer steps; the run stops with an error naming the ranks that drifted.
    #[cfg_attr(feature = "clap", arg(long))]
    pub check_sync_every: Option<u64>,
    /// `cpu` or `cuda` (the first NVIDIA GPU; needs a build with the `cuda` feature).
    #[cfg_attr(feature = "clap", arg(long))]
    pub device: Option<crate::device::DeviceKind>,
    /// `f32` or `amp-f16`: forward and backward in half precision with f32 master
    /// weights and dynamic loss scaling (the official code's `autocast` + `GradScaler`).
    #[cfg_attr(feature = "clap", arg(long))]
    pub precision: Option<crate::amp::Precision>,
}

impl PretrainOverrides {
    /// Parses these settings from TOML text; the error says what is wrong (an unknown key, a
    /// wrong type).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

overrides!(PretrainOverrides {
    data,
    preset,
    init,
    out,
    epochs,
    max_steps,
    batch_size,
    accum_iter,
    blr,
    lr,
    min_lr,
    warmup_epochs,
    weight_decay,
    mask_ratio,
    norm_pix_loss,
    seed,
    save_every,
    keep_last,
    workers,
    log_every,
    tensorboard,
    input_size,
    eval_every,
    check_sync_every,
    device,
    precision
});

/// The effective configuration of a run (written to `RUN_DIR/config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// Dataset directory.
    pub data: PathBuf,
    /// Run directory.
    pub out: PathBuf,
    /// The model.
    pub model: MaeConfig,
    /// Weights the run started from (`--init`), if any.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Epochs.
    pub epochs: usize,
    /// Optional cap on optimizer steps.
    pub max_steps: Option<u64>,
    /// Micro-batch size (per rank).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accum_iter: usize,
    /// Base learning rate.
    pub blr: f64,
    /// Absolute learning rate (`blr · batch · accum · world_size / 256` unless given).
    pub lr: f64,
    /// Cosine floor.
    pub min_lr: f64,
    /// Warmup epochs.
    pub warmup_epochs: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed.
    pub seed: u64,
    /// Checkpoint interval in optimizer steps.
    pub save_every: u64,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Loader workers.
    pub workers: usize,
    /// Metrics interval in optimizer steps.
    pub log_every: u64,
    /// TensorBoard event files in the run folder.
    #[serde(default = "super::yes")]
    pub tensorboard: bool,
    /// kNN evaluation interval in epochs.
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// Ranks of a data-parallel run (`mpirun -np N`): the global batch is
    /// `batch_size · accum_iter · world_size`.
    #[serde(default = "one")]
    pub world_size: usize,
    /// Debug: compare a checksum of the weights across ranks every this many optimizer steps.
    #[serde(default)]
    pub check_sync_every: Option<u64>,
    /// Where the run computes.
    #[serde(default)]
    pub device: crate::device::DeviceKind,
    /// Element type of the forward and backward passes.
    #[serde(default)]
    pub precision: crate::amp::Precision,
}

impl PretrainConfig {
    /// Fills defaults and checks ranges for one process. `data`, `preset` and `out` are required.
    pub fn resolve(given: PretrainOverrides) -> Result<Self, TrainError> {
        Self::resolve_for(given, 1)
    }

    /// [`resolve`](Self::resolve) for a run over `world_size` ranks: the learning rate scales
    /// with the global batch.
    pub fn resolve_for(given: PretrainOverrides, world_size: usize) -> Result<Self, TrainError> {
        if world_size == 0 {
            return Err(TrainError::Config("world size 0".into()));
        }
        let missing = |what: &str| TrainError::Config(format!("--{what} is required"));
        let preset = match (given.preset, &given.init) {
            (Some(p), _) => p,
            (None, Some(init)) => crate::checkpoint::preset_of(init)?,
            (None, None) => return Err(missing("preset")),
        };
        let mut model = MaeConfig::new(preset);
        if let Some(size) = given.input_size {
            model.image_size = size;
        }
        model.mask_ratio = given
            .mask_ratio
            .unwrap_or(mae_core::masking::DEFAULT_MASK_RATIO);
        model.norm_pix_loss = given.norm_pix_loss.unwrap_or(false);
        model.validate()?;
        let batch_size = given.batch_size.unwrap_or(64);
        let accum_iter = given.accum_iter.unwrap_or(1);
        let epochs = given.epochs.unwrap_or(400);
        let blr = given.blr.unwrap_or(1.5e-4);
        let config = PretrainConfig {
            data: given.data.ok_or_else(|| missing("data"))?,
            out: given.out.ok_or_else(|| missing("out"))?,
            model,
            init: given.init,
            epochs,
            max_steps: given.max_steps,
            batch_size,
            accum_iter,
            blr,
            lr: given.lr.unwrap_or_else(|| {
                crate::schedule::absolute_lr(blr, batch_size, accum_iter, world_size)
            }),
            min_lr: given.min_lr.unwrap_or(0.0),
            warmup_epochs: given.warmup_epochs.unwrap_or(40.0),
            weight_decay: given.weight_decay.unwrap_or(0.05),
            seed: given.seed.unwrap_or(0),
            save_every: given.save_every.unwrap_or(1000),
            keep_last: given.keep_last.unwrap_or(3),
            workers: given
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            log_every: given.log_every.unwrap_or(10),
            tensorboard: given.tensorboard.unwrap_or(true),
            eval_every: given.eval_every,
            world_size,
            check_sync_every: given.check_sync_every,
            device: given.device.unwrap_or_default(),
            precision: given.precision.unwrap_or_default(),
        };
        check_count("batch-size", config.batch_size, 1, MAX_BATCH)?;
        check_count("accum-iter", config.accum_iter, 1, MAX_BATCH)?;
        check_count("epochs", config.epochs, 1, MAX_EPOCHS)?;
        check_count("keep-last", config.keep_last, 1, usize::MAX)?;
        check_count("workers", config.workers, 1, 1024)?;
        let at_least_one = [
            ("save-every", Some(config.save_every)),
            ("log-every", Some(config.log_every)),
            ("max-steps", config.max_steps),
            ("eval-every", config.eval_every.map(|e| e as u64)),
            ("check-sync-every", config.check_sync_every),
        ];
        for (flag, v) in at_least_one {
            if v == Some(0) {
                return Err(TrainError::Config(format!("--{flag} must be at least 1")));
            }
        }
        for (name, v) in [
            ("lr", config.lr),
            ("blr", config.blr),
            ("min-lr", config.min_lr),
            ("weight-decay", config.weight_decay),
            ("warmup-epochs", config.warmup_epochs),
        ] {
            check_float(name, v, false)?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_then_defaults() {
        let (_dir, path) = super::super::toml_file(
            "data = \"runs/fmnist\"\npreset = \"tiny\"\nout = \"runs/x\"\nbatch_size = 32\naccum_iter = 4\nnorm_pix_loss = true\n",
        );
        let file = PretrainOverrides::from_toml_file(&path).expect("parses");
        let flags = PretrainOverrides {
            batch_size: Some(16),
            blr: Some(1e-3),
            ..Default::default()
        };
        let c = PretrainConfig::resolve(file.merged(flags)).expect("valid");
        assert_eq!((c.batch_size, c.accum_iter), (16, 4));
        assert!(c.model.norm_pix_loss);
        assert_eq!(c.model.preset, Preset::Tiny);
        assert!((c.lr - 1e-3 * 64.0 / 256.0).abs() < 1e-15);
        assert_eq!(
            (c.epochs, c.warmup_epochs, c.weight_decay),
            (400, 40.0, 0.05)
        );

        let (_dir, path) = super::super::toml_file("batch_sise = 3\n");
        let err = PretrainOverrides::from_toml_file(&path).expect_err("unknown key");
        assert!(
            err.to_string().contains("run.toml") && err.to_string().contains("batch_sise"),
            "{err}"
        );
        let missing = PretrainConfig::resolve(PretrainOverrides::default()).expect_err("no preset");
        assert!(missing.to_string().contains("--preset"));
    }
}
