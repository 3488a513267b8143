//! `mae knn`, `mae linprobe`, `mae embed`: the frozen encoder's features and what they are worth
//! (library: `mae_train::features`, `mae_train::linprobe`); `mae classify`: a classifier's top
//! classes of image files (`mae_train::classify`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use mae_train::amp::Precision;
use mae_train::device::DeviceKind;

use crate::outputs::{self, input_files, Kind};
use mae_train::progress::Reporter;

use crate::progress::{Console, Stream};
use crate::train::{self, Ended};

/// `mae knn` arguments.
#[derive(Args)]
pub struct KnnArgs {
    #[command(flatten)]
    source: FeatureArgs,
    /// Neighbours.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Softmax temperature of the votes.
    #[arg(long, default_value_t = 0.07)]
    temperature: f32,
    /// `cls` or `avg` (mean of the patch tokens).
    #[arg(long, default_value = "cls")]
    feature: String,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `mae linprobe` arguments.
#[derive(Args)]
pub struct LinprobeArgs {
    #[command(flatten)]
    source: FeatureArgs,
    /// `cls` or `avg` (mean of the patch tokens).
    #[arg(long, default_value = "cls")]
    feature: String,
    /// Probe the cls token (`--feature cls`, the default; the official `--cls_token`).
    #[arg(long, conflicts_with_all = ["feature", "global_pool"])]
    cls_token: bool,
    /// Probe the mean of the patch tokens (`--feature avg`; the official `--global_pool`).
    #[arg(long, conflicts_with = "feature")]
    global_pool: bool,
    /// The preset the checkpoint must be (the official `--model`; the checkpoint says which it
    /// is, so this only checks).
    #[arg(long, requires = "checkpoint")]
    preset: Option<mae_core::Preset>,
    /// Accepted for the official command: the encoder's passes over both splits are always
    /// shared out over the ranks of an MPI run, and every rank evaluates the same features.
    #[arg(long)]
    dist_eval: bool,
    /// Epochs.
    #[arg(long, default_value_t = 90)]
    epochs: usize,
    /// Batch size (per rank).
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Batches whose gradients are averaged into one step: the effective batch is batch ·
    /// accum-iter · ranks (the official 16,384 as `--batch-size 512 --accum-iter 32`).
    #[arg(long, default_value_t = 1)]
    accum_iter: usize,
    /// Base learning rate (lr = blr · batch · accum-iter · ranks / 256): 0.1 for both optimizers
    /// (AdamW's best in the sweep of RESULTS.md; the official LARS recipe's).
    #[arg(long, default_value_t = 0.1)]
    blr: f64,
    /// Warmup epochs [default: epochs / 9, the official 10 of 90]; must be shorter than the run.
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// Weight decay (on the weight matrix).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// `adamw`, or `lars` (the official recipe's). AdamW by default: LARS at blr 0.1 is tuned for
    /// the official batch of 16,384 and barely moves at 256 (Fashion-MNIST, 90 epochs: 73.8%
    /// against AdamW's 82.4%, the best of a sweep of both; RESULTS.md). The official recipe:
    /// `--aug --optimizer lars --blr 0.1 --batch-size 512 --accum-iter 32 --epochs 90
    /// --warmup-epochs 10 --weight-decay 0` (16,384 images per step on one process).
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Cached features, no augmentation (default for images under 32×32 and for --features).
    #[arg(long, conflicts_with = "aug")]
    no_aug: bool,
    /// Random crops + flips with an encoder pass per epoch (default for images of 32×32 and up).
    #[arg(long)]
    aug: bool,
    /// Seed of the head and the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder of the augmented probe: a checkpoint of the head every epoch,
    /// `metrics.jsonl`, `results.json`; SIGINT/SIGTERM save and stop. Without it the run
    /// uses a temporary folder, removed after.
    #[arg(long)]
    out: Option<PathBuf>,
    /// `auto` (newest loadable checkpoint of --out, if any) or a checkpoint file.
    #[arg(long, requires = "out")]
    resume: Option<String>,
    /// TensorBoard event files in the augmented probe's run folder (`--tensorboard false`:
    /// none).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true,
          action = clap::ArgAction::Set)]
    tensorboard: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Replace an existing results file (beside the features or checkpoint) that is not an
    /// earlier probe's.
    #[arg(long)]
    force: bool,
}

/// `mae embed` arguments.
#[derive(Args)]
pub struct EmbedArgs {
    /// Model checkpoint (full or encoder-only).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Prepared dataset (both splits are embedded).
    #[arg(long, required_unless_present = "image", conflicts_with = "image")]
    data: Option<PathBuf>,
    /// Image files instead (written as split `images`, labels −1, in the order given).
    #[arg(long, num_args = 1..)]
    image: Vec<PathBuf>,
    /// Output: `.safetensors` (`train.cls`, `train.avg` f32, `train.labels` int64, `val.*`;
    /// the class names, the dataset or image paths and the checkpoint in its metadata) or `.npy`
    /// (one file per array: `STEM.train.cls.npy`, ..., and those in `STEM.meta.json`).
    #[arg(long)]
    out: PathBuf,
    /// Images per encoder forward.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Where the encoder runs: `cpu`, or `cuda` (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
    /// Replace existing output files that are not earlier `mae embed` output (every `.npy`
    /// file counts as such: it cannot say who wrote it).
    #[arg(long)]
    force: bool,
    /// One JSON object instead of text: the files written, the samples of each split, the
    /// feature width.
    #[arg(long)]
    json: bool,
}

/// Where `mae knn` / `mae linprobe` get features: an encoder over a dataset, or `mae embed` output.
#[derive(clap::Args)]
pub struct FeatureArgs {
    /// Model checkpoint (full or encoder-only).
    #[arg(long, requires = "data", required_unless_present = "features")]
    checkpoint: Option<PathBuf>,
    /// Prepared dataset (train split = training set / memory bank, val split = evaluation).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Features written by `mae embed` instead (no encoder pass).
    #[arg(long, conflicts_with_all = ["checkpoint", "data"])]
    features: Option<PathBuf>,
    /// Images per encoder forward.
    #[arg(long, default_value_t = 256)]
    eval_batch_size: usize,
    /// Where the encoder runs: `cpu`, or `cuda` (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
    /// `f32`, or `amp-f16`: the encoder's passes in half precision (as the official linear
    /// probe runs under `autocast`; the augmented probe trains its head so too).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

impl FeatureArgs {
    fn source(&self) -> Result<mae_train::features::FeatureSource> {
        use mae_train::features::{EvalInput, FeatureSource};
        match (&self.checkpoint, &self.data, &self.features) {
            (_, _, Some(f)) => Ok(FeatureSource::Features(f.clone())),
            (Some(c), Some(d), None) => Ok(FeatureSource::Model(EvalInput {
                checkpoint: c.clone(),
                data: d.clone(),
                batch: self.eval_batch_size,
                device: self.device,
                precision: self.precision,
                reporter: Reporter(Console::new(Stream::Stderr)),
            })),
            _ => bail!("give --checkpoint C --data DIR, or --features FILE"),
        }
    }

    /// The files read: the features, or the checkpoint and the dataset's.
    fn inputs(&self) -> Vec<PathBuf> {
        let files: Vec<&std::path::Path> = self
            .features
            .iter()
            .chain(&self.checkpoint)
            .map(PathBuf::as_path)
            .collect();
        let datasets: Vec<&std::path::Path> = self.data.iter().map(PathBuf::as_path).collect();
        input_files(&files, &datasets)
    }

    /// The file results are written beside.
    fn anchor(&self) -> PathBuf {
        self.features
            .clone()
            .or_else(|| self.checkpoint.clone())
            .unwrap_or_else(|| PathBuf::from("features"))
    }
}

/// `mae knn`.
pub fn run_knn(a: KnnArgs) -> Result<()> {
    let KnnArgs {
        source,
        k,
        temperature,
        feature,
        json,
    } = a;
    let comm = mae_train::dist::Comm::from_env()?;
    let acc = train::on_every_rank(
        &comm,
        mae_train::knn::knn_eval(&source.source()?, k, temperature, feature.parse()?, &comm),
    )?;
    if !comm.is_main() {
        return Ok(());
    }
    if json {
        say!(
            "{}",
            serde_json::json!({"top1": acc.top1, "top5": acc.top5, "k": k, "feature": feature})
        );
    } else {
        say!(
            "kNN (k={k}, T={temperature}, {feature}): top-1 {:.2}%, top-5 {:.2}%",
            acc.top1,
            acc.top5
        );
    }
    Ok(())
}

/// `mae linprobe`: the settings, then the probe.
pub fn run_linprobe(a: LinprobeArgs) -> Result<Ended> {
    let input = a.source.source()?;
    if let (Some(want), Some(c)) = (a.preset, &a.source.checkpoint) {
        let is = mae_train::checkpoint::preset_of(c)?;
        if is != want {
            bail!("--preset {want}: {} is a {is} checkpoint", c.display());
        }
    }
    let _ = a.dist_eval;
    let augment = match (a.aug, a.no_aug) {
        (_, true) => Some(false),
        (true, _) => Some(true),
        _ => None,
    };
    let cfg = mae_train::probe::ProbeConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        accum_iter: a.accum_iter,
        blr: a.blr,
        warmup_epochs: a
            .warmup_epochs
            .unwrap_or_else(|| mae_train::probe::ProbeConfig::default_warmup(a.epochs)),
        weight_decay: a.weight_decay,
        seed: a.seed,
        optimizer: a.optimizer.parse()?,
        augment: mae_train::linprobe::resolve_augment(&input, augment)?,
    };
    let mut place = mae_train::linprobe::ProbeRunPlace {
        out: a.out.clone(),
        resume: train::parse_resume(a.resume.as_deref()),
        tensorboard: a.tensorboard,
        ..Default::default()
    };
    // stdout is the probe's result: progress goes to stderr
    if place.out.is_some() {
        place.hooks = train::training_hooks(Stream::Stderr)?;
    } else {
        place.hooks.observer = Console::new(Stream::Stderr);
    }
    let feature = if a.global_pool {
        "avg"
    } else {
        a.feature.as_str()
    };
    probe(&a.source, &input, feature, &cfg, &place, (a.json, a.force))
}

/// `mae linprobe`: trains and evaluates the probe, writes its results beside the features or
/// checkpoint.
fn probe(
    source: &FeatureArgs,
    input: &mae_train::features::FeatureSource,
    feature: &str,
    cfg: &mae_train::probe::ProbeConfig,
    place: &mae_train::linprobe::ProbeRunPlace,
    (json, force): (bool, bool),
) -> Result<Ended> {
    let optimizer = cfg.optimizer.name();
    let beside = source
        .anchor()
        .with_extension(format!("linprobe-{feature}-{optimizer}.json"));
    let inputs = source.inputs();
    outputs::check(
        "results file",
        &beside,
        Kind::Json("mae linprobe"),
        &inputs,
        force,
    )?;
    let comm = mae_train::dist::Comm::from_env()?;
    let result = train::on_every_rank(
        &comm,
        mae_train::linprobe::linprobe(input, feature.parse()?, cfg, place, &comm),
    )?;
    let ended = Ended::of_name(&result.outcome);
    if !comm.is_main() {
        return Ok(ended);
    }
    let mut value = serde_json::to_value(&result)?;
    value["written_by"] = "mae linprobe".into();
    let text = value.to_string();
    mae_core::weights::write_atomic(&beside, text.as_bytes())?;
    if json {
        say!("{text}");
    } else {
        if result.outcome == "Interrupted" {
            let at = result
                .checkpoint
                .as_ref()
                .map_or("no checkpoint".into(), |p| p.display().to_string());
            say!("stopped at step {}; checkpoint {at}. Resume with the same command plus --resume auto; the head as it stands:", result.step);
        }
        say!(
            "linear probe ({feature}, {optimizer}, {} epochs{}): top-1 {:.2}%, top-5 {:.2}% on {} val images; written to {}",
            cfg.epochs,
            if cfg.augment { ", augmented" } else { ", cached features" },
            result.top1,
            result.top5,
            result.val,
            beside.display()
        );
    }
    Ok(ended)
}

/// `mae embed`.
pub fn run_embed(a: EmbedArgs) -> Result<()> {
    let EmbedArgs {
        checkpoint,
        data,
        image,
        out,
        batch_size,
        device,
        force,
        json,
    } = a;
    let split_names: &[&str] = if data.is_some() {
        &["train", "val"]
    } else {
        &["images"]
    };
    let mut files: Vec<&std::path::Path> = vec![&checkpoint];
    files.extend(image.iter().map(PathBuf::as_path));
    let datasets: Vec<&std::path::Path> = data.iter().map(PathBuf::as_path).collect();
    let inputs = input_files(&files, &datasets);
    let kind = if out.extension().is_some_and(|e| e == "npy") {
        Kind::Unmarked
    } else {
        Kind::Weights("mae embed")
    };
    for file in mae_train::feature_set::feature_files(&out, split_names) {
        outputs::check("--out", &file, kind, &inputs, force)?;
    }
    // under mpirun the ranks share the encoder's passes over a dataset; image files are
    // few, rank 0 embeds them alone
    let comm = mae_train::dist::Comm::from_env()?;
    let shown = |p: &std::path::Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let mut provenance = mae_train::feature_set::Provenance {
        checkpoint: Some(shown(&checkpoint)),
        paths: image.iter().map(|p| shown(p)).collect(),
        ..Default::default()
    };
    let (splits, classes) = match data {
        Some(data) => {
            provenance.dataset = Some(shown(&data));
            provenance.class_names = mae_data::dataset::read_manifest(&data)?.classes;
            let input = mae_train::features::EvalInput {
                checkpoint,
                data,
                batch: batch_size,
                device,
                precision: Precision::F32,
                reporter: Reporter(Console::new(Stream::Stderr)),
            };
            let (train, val, classes) =
                train::on_every_rank(&comm, mae_train::features::extract_dataset(&input, &comm))?;
            (vec![("train", train), ("val", val)], classes)
        }
        None if !comm.is_main() => return Ok(()),
        None => {
            mae_train::config::check_count(
                "batch-size",
                batch_size,
                1,
                mae_train::config::MAX_BATCH,
            )?;
            let f = mae_train::features::extract_files(&checkpoint, &image, batch_size, device)?;
            (vec![("images", f)], 0)
        }
    };
    if !comm.is_main() {
        return Ok(());
    }
    let refs: Vec<(&str, &mae_train::feature_set::Features)> =
        splits.iter().map(|(n, f)| (*n, f)).collect();
    provenance.num_classes = classes;
    let files = mae_train::feature_set::write_features(&out, &refs, &provenance)?;
    if json {
        let counts: serde_json::Map<String, serde_json::Value> = splits
            .iter()
            .map(|(n, f)| (n.to_string(), f.len().into()))
            .collect();
        let value = serde_json::json!({
            "files": files,
            "samples": counts,
            "dim": splits[0].1.dim,
            "classes": classes,
            "class_names": provenance.class_names,
            "written_by": "mae embed",
        });
        say!("{value}");
        return Ok(());
    }
    let counts: Vec<String> = splits
        .iter()
        .map(|(n, f)| format!("{} {n}", f.len()))
        .collect();
    say!(
        "wrote {} ({}, {}-d)",
        files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        counts.join(" + "),
        splits[0].1.dim
    );
    Ok(())
}

/// `mae classify` arguments.
#[derive(Args)]
pub struct ClassifyArgs {
    /// Fine-tuned classifier: `mae finetune`'s best.safetensors, a released
    /// mae_finetuned_vit_*.pth, a timm ViT's weights; the head (global pool `fc_norm` or cls
    /// token `norm`) is the file's.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Image files (JPEG, PNG, ...); resized and centre-cropped as in evaluation.
    #[arg(long, num_args = 1.., required = true)]
    image: Vec<PathBuf>,
    /// Class names, one per line in label order (default: the fine-tuning dataset's for our
    /// checkpoints, ImageNet-1k's for a 1000-class head, else `class K`).
    #[arg(long)]
    classes: Option<PathBuf>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Preset (default: the checkpoint's, else the one its shapes fit).
    #[arg(long)]
    preset: Option<mae_core::Preset>,
    /// Where the model runs: `cpu`, or `cuda` (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
    /// One JSON object instead of text (the last line of the output).
    #[arg(long)]
    json: bool,
}

/// `mae classify --checkpoint C --image a.jpg [b.jpg ...]`.
pub fn run_classify(a: ClassifyArgs) -> Result<()> {
    let predictions = mae_train::classify::classify_files(
        &a.checkpoint,
        a.preset,
        &a.image,
        a.classes.as_deref(),
        a.top,
        a.device,
    )?;
    if a.json {
        say!("{}", serde_json::json!({ "images": predictions }));
        return Ok(());
    }
    for p in predictions {
        say!("{}", p.image.display());
        for (rank, t) in p.top.iter().enumerate() {
            say!(
                "  {}. {:6.2}%  {} ({})",
                rank + 1,
                100.0 * t.probability,
                t.name,
                t.class
            );
        }
    }
    Ok(())
}
