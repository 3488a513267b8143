//! The fine-tuning settings: the recipe's defaults, a TOML file, and command-line flags over it.
//!
//! PyTorch counterpart: the `argparse` options of `main_finetune.py` (`--epochs`, `--batch_size`,
//! `--accum_iter`, `--blr`, `--lr`, `--layer_decay`, `--drop_path`, `--smoothing`, `--mixup`,
//! `--cutmix`, `--reprob`, ...), with the recipe's mixup 0.8 / cutmix 1.0 (`FINETUNE.md`).

use std::path::PathBuf;

use mae_core::{Pooling, Preset};
use serde::{Deserialize, Serialize};

use super::{one, yes};
use crate::amp::Precision;
use crate::error::TrainError;
use crate::schedule::absolute_lr;

/// Fine-tuning settings; the defaults are `main_finetune.py`'s with the recipe's mixup 0.8 /
/// cutmix 1.0 (`FINETUNE.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// Prepared dataset (trains on train, evaluates on val).
    pub data: PathBuf,
    /// Run directory: checkpoints, `best.safetensors`, metrics.jsonl, eval.jsonl, results.json.
    pub out: PathBuf,
    /// Pretrained MAE checkpoint (full or encoder-only); `None` trains from random init.
    pub checkpoint: Option<PathBuf>,
    /// Preset of the classifier (default: the checkpoint's); a preset with the same encoder but
    /// another image size interpolates the position embedding.
    pub preset: Preset,
    /// Epochs.
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<u64>,
    /// Images per micro-batch (even: mixup pairs the batch with its mirror).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accum_iter: usize,
    /// Peak learning rate (`blr · batch · accum / 256` unless given).
    pub lr: f64,
    /// Base learning rate it came from (recorded).
    pub blr: f64,
    /// Floor of the cosine schedule.
    pub min_lr: f64,
    /// Linear warmup, in epochs.
    pub warmup_epochs: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Layer-wise lr decay.
    pub layer_decay: f64,
    /// Drop path rate of the last block (linear from 0).
    pub drop_path: f64,
    /// The head's pooling, `main_finetune.py`'s `global_pool`: `true` (the default) classifies
    /// `fc_norm` of the mean patch token, `false` (`--cls-token`) the cls token after the final
    /// `norm`.
    #[serde(default = "yes")]
    pub global_pool: bool,
    /// The number of classes the run expects (the official `--nb_classes`); `None` takes the
    /// dataset's. A dataset with another number is refused.
    #[serde(default)]
    pub nb_classes: Option<usize>,
    /// Evaluate with the validation split shared out over the ranks (the official
    /// `--dist_eval`); otherwise rank 0 evaluates it alone.
    #[serde(default)]
    pub dist_eval: bool,
    /// Largest total L2 norm of the gradients (`clip_grad_norm_`); `None` (the official default)
    /// does not clip.
    #[serde(default)]
    pub clip_grad: Option<f64>,
    /// Label smoothing.
    pub smoothing: f64,
    /// Mixup α (0 = off).
    pub mixup: f64,
    /// Cutmix α (0 = off).
    pub cutmix: f64,
    /// Probability of mixing a batch.
    pub mixup_prob: f64,
    /// Probability of cutmix rather than mixup when both are on.
    pub mixup_switch_prob: f64,
    /// Random erasing probability.
    pub reprob: f64,
    /// RandAugment of the training crops as timm's `--aa` string (`rand-m9-mstd0.5-inc1`, the
    /// official default); `None` for none (what runs before it existed did: the serde default).
    #[serde(default)]
    pub aa: Option<String>,
    /// Smallest RandomResizedCrop area fraction.
    pub min_crop_scale: f64,
    /// Seed of the head, data order, augmentation, mixup and drop path.
    pub seed: u64,
    /// Loader threads.
    pub workers: usize,
    /// Also checkpoint every this many optimizer steps (always at the end of each epoch).
    pub save_every: u64,
    /// Keep only the newest K step checkpoints (`best.safetensors` is kept apart).
    pub keep_last: usize,
    /// Metrics line every this many steps.
    pub log_every: u64,
    /// TensorBoard event files in the run folder.
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// Images per evaluation forward.
    pub eval_batch_size: usize,
    /// Ranks of a data-parallel run (`mpirun -np N`); `lr` is for the global batch
    /// `batch_size · accum_iter · world_size`.
    #[serde(default = "one")]
    pub world_size: usize,
    /// Where the model trains (`--device cpu|cuda`).
    #[serde(default)]
    pub device: crate::device::DeviceKind,
    /// Element type of the forward and backward passes (`--precision f32|amp-f16`).
    #[serde(default)]
    pub precision: Precision,
}

impl FinetuneConfig {
    /// The head's pooling ([`Self::global_pool`]).
    pub fn pooling(&self) -> Pooling {
        if self.global_pool {
            Pooling::GlobalPool
        } else {
            Pooling::ClsToken
        }
    }

    /// Images per evaluation forward unless given.
    pub const EVAL_BATCH_SIZE: usize = 256;

    /// The official `--aa`: RandAugment, 2 ops at magnitude 9 (std 0.5), the increasing ops.
    pub const RAND_AUGMENT: &'static str = "rand-m9-mstd0.5-inc1";

    /// The recipe's settings for `data`, `out` and `preset`, `lr` from `blr` 1e-3 at batch 64.
    pub fn new(data: PathBuf, out: PathBuf, preset: Preset) -> Self {
        let (batch_size, blr) = (64, 1e-3);
        FinetuneConfig {
            data,
            out,
            checkpoint: None,
            preset,
            epochs: 50,
            max_steps: None,
            batch_size,
            accum_iter: 1,
            lr: absolute_lr(blr, batch_size, 1, 1),
            blr,
            min_lr: 1e-6,
            warmup_epochs: 5.0,
            weight_decay: 0.05,
            layer_decay: 0.75,
            drop_path: 0.1,
            global_pool: true,
            clip_grad: None,
            nb_classes: None,
            dist_eval: false,
            smoothing: 0.1,
            mixup: 0.8,
            cutmix: 1.0,
            mixup_prob: 1.0,
            mixup_switch_prob: 0.5,
            reprob: 0.25,
            aa: Some(Self::RAND_AUGMENT.to_string()),
            min_crop_scale: 0.08,
            seed: 0,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            save_every: u64::MAX,
            keep_last: 1,
            log_every: 20,
            tensorboard: true,
            eval_batch_size: Self::EVAL_BATCH_SIZE,
            world_size: 1,
            device: crate::device::DeviceKind::Cpu,
            precision: Precision::F32,
        }
    }

    /// Checks the settings: counts in range, every rate a finite number in its interval (NaN is
    /// refused everywhere).
    pub fn validate(&self) -> Result<(), TrainError> {
        use crate::config::{check_count, check_float, MAX_BATCH, MAX_EPOCHS};
        let bad = |m: String| Err(TrainError::Config(m));
        check_count("batch-size", self.batch_size, 1, MAX_BATCH)?;
        check_count("accum-iter", self.accum_iter, 1, MAX_BATCH)?;
        check_count("epochs", self.epochs, 1, MAX_EPOCHS)?;
        check_count("eval-batch-size", self.eval_batch_size, 1, MAX_BATCH)?;
        check_count("keep-last", self.keep_last, 1, usize::MAX)?;
        check_count("workers", self.workers, 1, 1024)?;
        for (flag, v) in [
            ("save-every", Some(self.save_every)),
            ("log-every", Some(self.log_every)),
            ("max-steps", self.max_steps),
        ] {
            if v == Some(0) {
                return bad(format!("--{flag} must be at least 1"));
            }
        }
        if (self.mixup > 0.0 || self.cutmix > 0.0) && !self.batch_size.is_multiple_of(2) {
            return bad(format!(
                "--batch-size {} must be even with mixup/cutmix (each image is mixed with its mirror in the batch)",
                self.batch_size
            ));
        }
        for (flag, v) in [
            ("drop-path", self.drop_path),
            ("smoothing", self.smoothing),
            ("reprob", self.reprob),
            ("mixup-prob", self.mixup_prob),
            ("mixup-switch-prob", self.mixup_switch_prob),
        ] {
            let upper_ok = if flag == "drop-path" {
                v < 1.0
            } else {
                v <= 1.0
            };
            if !(v >= 0.0 && upper_ok) {
                let range = if flag == "drop-path" {
                    "[0, 1)"
                } else {
                    "[0, 1]"
                };
                return bad(format!("--{flag} {v} is outside {range}"));
            }
        }
        if !(self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            return bad(format!(
                "--layer-decay {} must be in (0, 1]",
                self.layer_decay
            ));
        }
        if !(self.min_crop_scale > 0.0 && self.min_crop_scale <= 1.0) {
            return bad(format!(
                "--min-crop-scale {} must be in (0, 1]",
                self.min_crop_scale
            ));
        }
        check_float("lr", self.lr, true)?;
        if let Some(c) = self.clip_grad {
            check_float("clip-grad", c, true)?;
        }
        if let Some(aa) = &self.aa {
            aa.parse::<mae_data::randaugment::RandAugment>()
                .map_err(|e| TrainError::Config(e.to_string()))?;
        }
        for (flag, v) in [
            ("blr", self.blr),
            ("min-lr", self.min_lr),
            ("warmup-epochs", self.warmup_epochs),
            ("weight-decay", self.weight_decay),
            ("mixup", self.mixup),
            ("cutmix", self.cutmix),
        ] {
            check_float(flag, v, false)?;
        }
        Ok(())
    }
}

/// Fine-tuning settings as given (a TOML file or flags): every field optional, the defaults
/// those of [`FinetuneConfig::new`] (which `mae finetune --help` shows). With the `clap` feature it is also the `mae finetune`
/// argument list.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct FinetuneOverrides {
    /// Pretrained checkpoint (an MAE run's checkpoint, `mae import` output, encoder-only weights).
    #[cfg_attr(feature = "clap", arg(long))]
    pub checkpoint: Option<PathBuf>,
    /// Classifier preset (default: the checkpoint's; one with the same encoder at another image
    /// size interpolates the position embedding).
    #[cfg_attr(feature = "clap", arg(long))]
    pub preset: Option<Preset>,
    /// Train from random initialization instead of a checkpoint (the baseline row; needs
    /// --preset).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(default)]
    pub from_scratch: bool,
    /// Classify the cls token after the final `norm` instead of the global pool of the patch
    /// tokens with `fc_norm` (the official `--cls_token`, models_vit `global_pool=False`).
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "global_pool"))]
    #[serde(default)]
    pub cls_token: bool,
    /// Classify the global pool of the patch tokens with `fc_norm` (the default; the official
    /// `--global_pool`).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(default)]
    pub global_pool: bool,
    /// Image side the run expects (the official `--input_size`): must be the preset's.
    #[cfg_attr(feature = "clap", arg(long))]
    pub input_size: Option<usize>,
    /// Number of classes the run expects (the official `--nb_classes`): must be the dataset's.
    #[cfg_attr(feature = "clap", arg(long))]
    pub nb_classes: Option<usize>,
    /// Share the evaluation out over the ranks of an MPI run (the official `--dist_eval`).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(default)]
    pub dist_eval: bool,
    /// Prepared dataset: trains on train, evaluates on val after every epoch.
    #[cfg_attr(feature = "clap", arg(long))]
    pub data: Option<PathBuf>,
    /// Run directory: checkpoints, best.safetensors, metrics.jsonl, eval.jsonl, results.json.
    #[cfg_attr(feature = "clap", arg(long))]
    pub out: Option<PathBuf>,
    /// Epochs.
    #[cfg_attr(feature = "clap", arg(long))]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps.
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_steps: Option<u64>,
    /// Images per micro-batch (even with mixup/cutmix).
    #[cfg_attr(feature = "clap", arg(long))]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[cfg_attr(feature = "clap", arg(long))]
    pub accum_iter: Option<usize>,
    /// Base learning rate: lr = blr · batch · accum · ranks / 256.
    #[cfg_attr(feature = "clap", arg(long))]
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
    /// AdamW weight decay.
    #[cfg_attr(feature = "clap", arg(long))]
    pub weight_decay: Option<f64>,
    /// Layer-wise learning-rate decay.
    #[cfg_attr(feature = "clap", arg(long))]
    pub layer_decay: Option<f64>,
    /// Drop path (stochastic depth) rate of the last block.
    #[cfg_attr(feature = "clap", arg(long))]
    pub drop_path: Option<f64>,
    /// Clip the gradients to this total L2 norm before each step (off unless given, as the
    /// official `--clip_grad`).
    #[cfg_attr(feature = "clap", arg(long))]
    pub clip_grad: Option<f64>,
    /// Label smoothing.
    #[cfg_attr(feature = "clap", arg(long))]
    pub smoothing: Option<f64>,
    /// Mixup α (0 turns it off).
    #[cfg_attr(feature = "clap", arg(long))]
    pub mixup: Option<f64>,
    /// Cutmix α (0 turns it off).
    #[cfg_attr(feature = "clap", arg(long))]
    pub cutmix: Option<f64>,
    /// Probability of mixing a batch.
    #[cfg_attr(feature = "clap", arg(long))]
    pub mixup_prob: Option<f64>,
    /// Probability of cutmix instead of mixup when both are on.
    #[cfg_attr(feature = "clap", arg(long))]
    pub mixup_switch_prob: Option<f64>,
    /// Random erasing probability.
    #[cfg_attr(feature = "clap", arg(long))]
    pub reprob: Option<f64>,
    /// RandAugment of the training crops, timm's `--aa` syntax (`rand-mM-nN-mstdS-incB`);
    /// `none` turns it off.
    #[cfg_attr(feature = "clap", arg(long))]
    pub aa: Option<String>,
    /// Smallest crop area fraction of RandomResizedCrop.
    #[cfg_attr(feature = "clap", arg(long))]
    pub min_crop_scale: Option<f64>,
    /// Seed of the head, data order and augmentation.
    #[cfg_attr(feature = "clap", arg(long))]
    pub seed: Option<u64>,
    /// Loader threads (default: the number of cores).
    #[cfg_attr(feature = "clap", arg(long))]
    pub workers: Option<usize>,
    /// Also write a checkpoint every this many steps (always at each epoch's end).
    #[cfg_attr(feature = "clap", arg(long))]
    pub save_every: Option<u64>,
    /// Keep only the newest K step checkpoints (best.safetensors is kept apart).
    #[cfg_attr(feature = "clap", arg(long))]
    pub keep_last: Option<usize>,
    /// Metrics line every this many steps.
    #[cfg_attr(feature = "clap", arg(long))]
    pub log_every: Option<u64>,
    /// TensorBoard event files in the run folder (`tensorboard --logdir RUN`): on unless
    /// `--tensorboard false`.
    #[cfg_attr(feature = "clap", arg(long, num_args = 0..=1, default_missing_value = "true"))]
    pub tensorboard: Option<bool>,
    /// Images per evaluation forward.
    #[cfg_attr(feature = "clap", arg(long))]
    pub eval_batch_size: Option<usize>,
    /// `cpu`, or `cuda` (the first NVIDIA GPU; needs a build with the `cuda` feature).
    #[cfg_attr(feature = "clap", arg(long))]
    pub device: Option<crate::device::DeviceKind>,
    /// `f32`, or `amp-f16`: forward and backward in half precision with f32 master
    /// weights and dynamic loss scaling (the official code's `autocast` + `GradScaler`).
    #[cfg_attr(feature = "clap", arg(long))]
    pub precision: Option<Precision>,
}

overrides!(FinetuneOverrides {
    checkpoint,
    preset,
    data,
    out,
    max_steps,
    lr,
    clip_grad,
    aa,
    input_size,
    nb_classes
} => FinetuneConfig {
    epochs,
    batch_size,
    accum_iter,
    blr,
    min_lr,
    warmup_epochs,
    weight_decay,
    layer_decay,
    drop_path,
    smoothing,
    mixup,
    cutmix,
    mixup_prob,
    mixup_switch_prob,
    reprob,
    min_crop_scale,
    seed,
    workers,
    save_every,
    keep_last,
    log_every,
    tensorboard,
    eval_batch_size,
    device,
    precision
}; from_scratch; cls_token; global_pool; dist_eval);

impl FinetuneConfig {
    /// Fills the defaults ([`FinetuneConfig::new`]) and checks the settings for a run over
    /// `world_size` ranks: the preset is the checkpoint's unless given, the learning rate
    /// `blr · batch · accum · ranks / 256` unless `lr` is given. `data` and `out` are required,
    /// and a checkpoint or `from_scratch` with a preset.
    pub fn resolve_for(
        mut given: FinetuneOverrides,
        world_size: usize,
    ) -> Result<Self, TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if world_size == 0 {
            return bad("world size 0");
        }
        match (&given.checkpoint, given.from_scratch, given.preset) {
            (None, false, _) => return bad("give --checkpoint, or --from-scratch with --preset"),
            (Some(_), true, _) => return bad("--from-scratch and --checkpoint exclude each other"),
            _ => {}
        }
        let preset = match (given.preset, &given.checkpoint) {
            (Some(p), _) => p,
            (None, Some(c)) => crate::checkpoint::preset_of(c)?,
            (None, None) => return bad("give --preset with --from-scratch"),
        };
        let missing = |what: &str| TrainError::Config(format!("--{what} is required"));
        let data = given.data.take().ok_or_else(|| missing("data"))?;
        let out = given.out.take().ok_or_else(|| missing("out"))?;
        let mut cfg = FinetuneConfig::new(data, out, preset);
        given.fill(&mut cfg);
        cfg.checkpoint = given.checkpoint;
        cfg.max_steps = given.max_steps;
        cfg.clip_grad = given.clip_grad;
        if let Some(aa) = given.aa {
            cfg.aa = match aa.as_str() {
                "" | "none" => None,
                _ => Some(aa),
            };
        }
        if given.cls_token && given.global_pool {
            return bad("--cls-token and --global-pool exclude each other");
        }
        cfg.global_pool = !given.cls_token;
        cfg.nb_classes = given.nb_classes;
        cfg.dist_eval = given.dist_eval;
        if let Some(size) = given.input_size {
            let native = cfg.preset.dims().img_size;
            if size != native {
                let same_encoder: Vec<&str> = Preset::ALL
                    .iter()
                    .filter(|p| p.dims().img_size == size)
                    .map(|p| p.name())
                    .collect();
                return Err(TrainError::Config(format!(
                    "--input-size {size}: preset {} takes {native}-px images{}",
                    cfg.preset,
                    match same_encoder.is_empty() {
                        true => String::new(),
                        false => format!("; presets at {size} px: {}", same_encoder.join(", ")),
                    }
                )));
            }
        }
        cfg.world_size = world_size;
        cfg.lr = given
            .lr
            .unwrap_or_else(|| absolute_lr(cfg.blr, cfg.batch_size, cfg.accum_iter, world_size));
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_then_the_recipe() {
        let (_dir, path) = super::super::toml_file(
            "from_scratch = true\npreset = \"tiny\"\ndata = \"d\"\nout = \"o\"\nbatch_size = 32\nmixup = 0.0\n",
        );
        let file = FinetuneOverrides::from_toml_file(&path).expect("parses");
        let flags = FinetuneOverrides {
            batch_size: Some(16),
            accum_iter: Some(2),
            ..Default::default()
        };
        let c = FinetuneConfig::resolve_for(file.clone().merged(flags), 4).expect("valid");
        let recipe = FinetuneConfig::new("d".into(), "o".into(), Preset::Tiny);
        assert_eq!((c.batch_size, c.accum_iter, c.world_size), (16, 2, 4));
        assert_eq!(
            (c.mixup, c.cutmix, c.epochs),
            (0.0, recipe.cutmix, recipe.epochs)
        );
        // lr = blr · batch · accum · ranks / 256
        assert!(
            (c.lr - recipe.blr * 16.0 * 2.0 * 4.0 / 256.0).abs() < 1e-15,
            "{}",
            c.lr
        );
        assert_eq!(c.checkpoint, None);
        // the official global pool unless --cls-token (a flag or `cls_token = true`)
        assert_eq!(c.pooling(), Pooling::GlobalPool);
        let token = FinetuneOverrides {
            cls_token: true,
            ..Default::default()
        };
        let c = FinetuneConfig::resolve_for(file.merged(token), 1).expect("valid");
        assert_eq!((c.global_pool, c.pooling()), (false, Pooling::ClsToken));

        std::fs::write(&path, "mix_up = 0.5\n").expect("write");
        let err = FinetuneOverrides::from_toml_file(&path).expect_err("unknown key");
        assert!(
            err.to_string().contains("run.toml") && err.to_string().contains("mix_up"),
            "{err}"
        );

        let given = |checkpoint: Option<&str>, from_scratch, preset| FinetuneOverrides {
            checkpoint: checkpoint.map(Into::into),
            from_scratch,
            preset,
            data: Some("d".into()),
            out: Some("o".into()),
            ..Default::default()
        };
        for (g, says) in [
            (given(None, false, Some(Preset::Tiny)), "--checkpoint"),
            (given(Some("c"), true, Some(Preset::Tiny)), "exclude"),
            (given(None, true, None), "--preset"),
        ] {
            let err = FinetuneConfig::resolve_for(g, 1).expect_err("refused");
            assert!(err.to_string().contains(says), "{err}");
        }
        let no_out = FinetuneOverrides {
            out: None,
            ..given(None, true, Some(Preset::Tiny))
        };
        let err = FinetuneConfig::resolve_for(no_out, 1).expect_err("no --out");
        assert!(err.to_string().contains("--out"), "{err}");
        // an absolute lr wins over blr; a bad value is refused by the checks
        let lr = FinetuneOverrides {
            lr: Some(3e-4),
            ..given(None, true, Some(Preset::Tiny))
        };
        assert_eq!(FinetuneConfig::resolve_for(lr, 8).expect("valid").lr, 3e-4);
        let bad = FinetuneOverrides {
            layer_decay: Some(1.5),
            ..given(None, true, Some(Preset::Tiny))
        };
        assert!(FinetuneConfig::resolve_for(bad, 1).is_err());
    }

    #[test]
    fn settings_are_checked() {
        let base = FinetuneConfig::new("d".into(), "o".into(), Preset::Tiny);
        assert!(base.validate().is_ok());
        for broken in [
            FinetuneConfig {
                batch_size: 7,
                ..base.clone()
            },
            FinetuneConfig {
                drop_path: 1.0,
                ..base.clone()
            },
            FinetuneConfig {
                layer_decay: 0.0,
                ..base.clone()
            },
            FinetuneConfig {
                smoothing: -0.1,
                ..base.clone()
            },
            FinetuneConfig {
                lr: 0.0,
                ..base.clone()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
        // an odd batch is fine without mixup
        let plain = FinetuneConfig {
            batch_size: 7,
            mixup: 0.0,
            cutmix: 0.0,
            ..base
        };
        assert!(plain.validate().is_ok());
    }
}
