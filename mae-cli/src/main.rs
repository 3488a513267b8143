//! The `mae` command: the front end of mae-rs. Thin: every subcommand parses its arguments and
//! calls library code in `mae-core` / `mae-train`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mae_core::dfdx::prelude::*;
use mae_core::weights::WRITTEN_BY_KEY;
use mae_core::{Mae, MaePreset, Preset, PresetVisitor, TensorFile};
use mae_train::amp::Precision;
use mae_train::bench::{time_train_step_with, StepBench};
use mae_train::device::DeviceKind;
use outputs::{input_files, Kind};

/// One line on stdout; a closed or full stdout is an error (`writing to stdout: ...`), not a
/// panic. For commands whose output is their result.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))?
    };
}

mod data;
mod model_cmds;
mod outputs;
mod train;

/// What `say!` calls.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .context("writing to stdout")
}

#[derive(Parser)]
#[command(
    name = "mae",
    version,
    about = "Masked Autoencoders (He et al. 2021) in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain an MAE on a prepared dataset (resumable; SIGINT/SIGTERM save and stop).
    Pretrain(Box<train::PretrainArgs>),
    /// Fine-tune a pretrained encoder as a classifier (layer-wise lr decay, drop path, mixup/cutmix,
    /// label smoothing; resumable; best and last kept).
    Finetune(Box<train::FinetuneArgs>),
    /// The paper's Figure 2 for a checkpoint: original | masked | reconstruction | + visible.
    Reconstruct(model_cmds::ReconstructArgs),
    /// Draw a run's loss and learning-rate curves (from metrics.jsonl) to a PNG.
    Plot {
        /// Run directory.
        run_dir: PathBuf,
        /// Output PNG (default RUN_DIR/loss.png); an existing file that is not an earlier plot
        /// needs --force.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing --out that is not an earlier plot.
        #[arg(long)]
        force: bool,
    },
    /// Weighted kNN (k=20, T=0.07, as DINO) of the encoder's features: val against train.
    Knn {
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
    },
    /// Linear probe (BatchNorm without affine + Linear; LARS, or AdamW) on the frozen encoder.
    Linprobe {
        #[command(flatten)]
        source: FeatureArgs,
        /// `cls` or `avg` (mean of the patch tokens).
        #[arg(long, default_value = "cls")]
        feature: String,
        /// Epochs.
        #[arg(long, default_value_t = 90)]
        epochs: usize,
        /// Batch size.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// Base learning rate (lr = blr · batch / 256).
        #[arg(long, default_value_t = 0.1)]
        blr: f64,
        /// Warmup epochs.
        #[arg(long, default_value_t = 10.0)]
        warmup_epochs: f64,
        /// Weight decay (on the weight matrix).
        #[arg(long, default_value_t = 0.0)]
        weight_decay: f32,
        /// `lars` (official) or `adamw`.
        #[arg(long, default_value = "lars")]
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
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Replace an existing results file (beside the features or checkpoint) that is not an
        /// earlier probe's.
        #[arg(long)]
        force: bool,
    },
    /// Write the encoder's features (cls and mean-pooled) with labels for both splits.
    Embed {
        /// Model checkpoint (full or encoder-only).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Prepared dataset (both splits are embedded).
        #[arg(long, required_unless_present = "image", conflicts_with = "image")]
        data: Option<PathBuf>,
        /// Image files instead (written as split `images`, labels −1, in the order given).
        #[arg(long, num_args = 1..)]
        image: Vec<PathBuf>,
        /// Output: `.safetensors` (`train.cls`, `train.avg`, `train.labels`, `val.*`) or `.npy`
        /// (one file per array: `STEM.train.cls.npy`, ...).
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
    },
    /// Show a checkpoint's preset, parameter counts, step and configuration.
    Info {
        /// Model checkpoint or weights file.
        checkpoint: PathBuf,
    },
    /// Convert weights in official/timm or Hugging Face ViTMAE names into a checkpoint.
    Import {
        /// Source safetensors file.
        #[arg(long)]
        from: PathBuf,
        /// Preset the weights are for.
        #[arg(long)]
        preset: Preset,
        /// Output file (an existing one that is not an earlier `mae import` output needs
        /// --force).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing --out that is not an earlier `mae import` output.
        #[arg(long)]
        force: bool,
    },
    /// Datasets: prepare, info, verify, show.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// List the model presets and their dimensions.
    Presets,
    /// Write a freshly initialized model of a preset as safetensors (official names).
    Init {
        /// Preset name (see `mae presets`).
        #[arg(long)]
        preset: Preset,
        /// Output file (an existing one that is not an earlier `mae init` output, such as a
        /// trained checkpoint, needs --force).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the initialization.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Replace an existing --out that is not an earlier `mae init` output.
        #[arg(long)]
        force: bool,
    },
    /// Check that a weights file loads into a preset (strict: names, shapes, values).
    Check {
        /// Preset name.
        #[arg(long)]
        preset: Preset,
        /// Weights file (safetensors, official `models_mae.py` names).
        file: PathBuf,
        /// Load only the encoder (encoder-only files such as `mae_pretrain_vit_*`).
        #[arg(long)]
        encoder_only: bool,
        /// Prefix of the tensor names in the file (e.g. `model.`).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Time pretraining steps (forward, backward, AdamW update): median step time, images/s
    /// and peak resident memory.
    Bench {
        /// Preset name.
        #[arg(long, default_value = "tiny")]
        preset: Preset,
        /// Images per step.
        #[arg(long = "batch-size", visible_alias = "batch", default_value_t = 64)]
        batch_size: usize,
        /// Timed steps after one warm-up step.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Mask ratio.
        #[arg(long, default_value_t = 0.75)]
        mask_ratio: f64,
        /// `fused` (our CPU kernels, the default) or `dfdx` (dfdx's own ops, for comparison).
        #[arg(long, default_value = "fused", value_parser = ["fused", "dfdx"])]
        kernels: String,
        /// The paper's ablation (Table 1c): run the encoder over every patch, removed ones as mask
        /// tokens, instead of over the visible ones only.
        #[arg(long)]
        mask_tokens_in_encoder: bool,
        /// `cpu`, or `cuda` (the first NVIDIA GPU; needs a build with the `cuda` feature).
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
        /// `f32`, or `amp-f16` (the step of `mae pretrain --precision amp-f16`).
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Print one JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
    },
}

/// Where `mae knn` / `mae linprobe` get features: an encoder over a dataset, or `mae embed` output.
#[derive(clap::Args)]
struct FeatureArgs {
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
    /// probe runs under `autocast`).
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

struct InitModel {
    out: PathBuf,
    seed: u64,
}

impl PresetVisitor for InitModel {
    type Output = Result<()>;
    fn visit<P: MaePreset>(self) -> Result<()> {
        let dev = Cpu::seed_from_u64(self.seed);
        let model = Mae::<P, f32, Cpu>::new(&dev)?;
        let meta = BTreeMap::from([
            ("seed".to_string(), self.seed.to_string()),
            (WRITTEN_BY_KEY.to_string(), "mae init".to_string()),
        ]);
        model.save_safetensors(&self.out, &meta)?;
        Ok(())
    }
}

struct CheckFile {
    file: TensorFile,
    encoder_only: bool,
    prefix: String,
}

impl PresetVisitor for CheckFile {
    type Output = Result<usize>;
    fn visit<P: MaePreset>(self) -> Result<usize> {
        let dev = Cpu::default();
        let mut model = Mae::<P, f32, Cpu>::new(&dev)?;
        if self.encoder_only {
            model.encoder.load_from(&self.file, &self.prefix)?;
            Ok(model.encoder.num_trainable_params())
        } else {
            model.load_from(&self.file, &self.prefix)?;
            Ok(model.num_trainable_params())
        }
    }
}

/// Training allocates and frees the same large activation buffers at every step. glibc's default
/// gives each of them back to the kernel (mmap'd chunks, heap trimming) and the next step
/// page-faults it in again: 13% of a `tiny` pretraining step in `perf`. Serving every allocation
/// from the heap and never trimming it keeps freed memory for reuse; peak RSS is unchanged.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: `mallopt` only sets allocator tunables; it is called first thing in `main`,
    // before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            // stderr itself may be closed or full: nothing more can be said then
            let _ = writeln!(std::io::stderr(), "error: {}", error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// What clap would do for `--help`, `--version` or a usage error, with a failed write to stdout
/// (`mae --help > /dev/full`) an error line instead of silence.
fn clap_exit(e: &clap::Error) -> std::process::ExitCode {
    use std::io::Write;
    match e.print() {
        Err(io) if !e.use_stderr() => {
            let _ = writeln!(std::io::stderr(), "error: writing to stdout: {io}");
            std::process::ExitCode::FAILURE
        }
        _ => std::process::ExitCode::from(e.exit_code().clamp(0, 255) as u8),
    }
}

/// The error and its causes on one line, each said once: the library errors already include
/// their source's text (`path: No such file or directory`), which anyhow's chain would repeat.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(command) => data::run(command)?,
        Command::Pretrain(args) => train::pretrain(*args)?,
        Command::Finetune(args) => train::finetune(*args)?,
        Command::Reconstruct(args) => model_cmds::run_reconstruct(args)?,
        Command::Plot {
            run_dir,
            out,
            force,
        } => {
            let out = out.unwrap_or_else(|| run_dir.join("loss.png"));
            let inputs = input_files(&[&run_dir.join("metrics.jsonl")], &[]);
            outputs::check("--out", &out, Kind::Png("mae plot"), &inputs, force)?;
            let n = mae_train::plot::plot_run(&run_dir, &out)?;
            say!("wrote {} ({n} points)", out.display());
        }
        Command::Info { checkpoint } => model_cmds::run_info(checkpoint)?,
        Command::Knn {
            source,
            k,
            temperature,
            feature,
            json,
        } => knn(source, k, temperature, feature, json)?,
        Command::Linprobe {
            source,
            feature,
            epochs,
            batch_size,
            blr,
            warmup_epochs,
            weight_decay,
            optimizer,
            no_aug,
            aug,
            seed,
            json,
            force,
        } => {
            let input = source.source()?;
            let augment = match (&input, aug, no_aug) {
                (_, _, true) | (mae_train::features::FeatureSource::Features(_), false, _) => false,
                (_, true, _) => true,
                (mae_train::features::FeatureSource::Model(m), false, false) => {
                    mae_data::dataset::read_manifest(&m.data)?.image_size >= 32
                }
            };
            let cfg = mae_train::linprobe::ProbeConfig {
                epochs,
                batch_size,
                blr,
                warmup_epochs,
                weight_decay,
                seed,
                optimizer: optimizer.parse()?,
                augment,
            };
            linprobe(&source, &input, &feature, &cfg, json, force)?;
        }
        Command::Embed {
            checkpoint,
            data,
            image,
            out,
            batch_size,
            device,
            force,
        } => embed(checkpoint, data, image, out, batch_size, device, force)?,
        Command::Import {
            from,
            preset,
            out,
            force,
        } => model_cmds::run_import(from, preset, out, force)?,
        Command::Presets => presets()?,
        Command::Init {
            preset,
            out,
            seed,
            force,
        } => {
            outputs::check("--out", &out, Kind::Weights("mae init"), &[], force)?;
            preset.visit(InitModel {
                out: out.clone(),
                seed,
            })?;
            say!("wrote {} (preset {preset}, seed {seed})", out.display());
        }
        Command::Check {
            preset,
            file,
            encoder_only,
            prefix,
        } => {
            let file = TensorFile::open(&file)?;
            let path = file.path().display().to_string();
            let params = preset.visit(CheckFile {
                file,
                encoder_only,
                prefix,
            })?;
            say!("{path}: loads into preset {preset} ({params} trainable parameters)");
        }
        Command::Bench {
            preset,
            batch_size,
            steps,
            mask_ratio,
            kernels,
            mask_tokens_in_encoder,
            device,
            precision,
            json,
        } => {
            let bench = StepBench {
                preset,
                batch: batch_size,
                steps,
                mask_ratio,
                cache: true,
                fused: kernels == "fused",
                mask_tokens_in_encoder,
                device,
                precision,
            };
            bench_step(&bench, json)?;
        }
    }
    Ok(())
}

/// `mae knn`.
fn knn(source: FeatureArgs, k: usize, temperature: f32, feature: String, json: bool) -> Result<()> {
    let comm = mae_train::dist::Comm::from_env()?;
    let acc = train::on_every_rank(
        &comm,
        mae_train::features::knn_eval_with(
            &source.source()?,
            k,
            temperature,
            feature.parse()?,
            &comm,
        ),
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

/// `mae linprobe`: trains and evaluates the probe, writes its results beside the features or
/// checkpoint.
fn linprobe(
    source: &FeatureArgs,
    input: &mae_train::features::FeatureSource,
    feature: &str,
    cfg: &mae_train::linprobe::ProbeConfig,
    json: bool,
    force: bool,
) -> Result<()> {
    let optimizer = serde_json::to_value(cfg.optimizer)?;
    let optimizer = optimizer.as_str().unwrap_or("lars");
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
        mae_train::linprobe::linprobe_with(input, feature.parse()?, cfg, &comm),
    )?;
    if !comm.is_main() {
        return Ok(());
    }
    let mut value = serde_json::to_value(&result)?;
    value["written_by"] = "mae linprobe".into();
    let text = value.to_string();
    mae_core::weights::write_atomic(&beside, text.as_bytes())?;
    if json {
        say!("{text}");
    } else {
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
    Ok(())
}

/// `mae embed`.
fn embed(
    checkpoint: PathBuf,
    data: Option<PathBuf>,
    image: Vec<PathBuf>,
    out: PathBuf,
    batch_size: usize,
    device: DeviceKind,
    force: bool,
) -> Result<()> {
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
    for file in mae_train::features::feature_files(&out, split_names) {
        outputs::check("--out", &file, kind, &inputs, force)?;
    }
    // under mpirun the ranks share the encoder's passes over a dataset; image files are
    // few, rank 0 embeds them alone
    let comm = mae_train::dist::Comm::from_env()?;
    let (splits, classes) = match data {
        Some(data) => {
            let input = mae_train::features::EvalInput {
                checkpoint,
                data,
                batch: batch_size,
                device,
                precision: Precision::F32,
            };
            let (train, val, classes) = train::on_every_rank(
                &comm,
                mae_train::features::extract_dataset_with(&input, &comm),
            )?;
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
    let refs: Vec<(&str, &mae_train::features::Features)> =
        splits.iter().map(|(n, f)| (*n, f)).collect();
    let files = mae_train::features::write_features(&out, &refs, classes)?;
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

/// `mae presets`.
fn presets() -> Result<()> {
    say!("preset       image chans patch | encoder dim/depth/heads | decoder dim/depth/heads");
    for &p in Preset::ALL {
        let d = p.dims();
        say!(
            "{:<12} {:>5} {:>5} {:>5} | {:>4}/{:>2}/{:>2}               | {:>4}/{:>2}/{:>2}",
            p.name(),
            d.img_size,
            d.in_chans,
            d.patch_size,
            d.embed_dim,
            d.depth,
            d.num_heads,
            d.decoder_embed_dim,
            d.decoder_depth,
            d.decoder_num_heads
        );
    }
    Ok(())
}

/// `mae bench`.
fn bench_step(bench: &StepBench, json: bool) -> Result<()> {
    let comm = mae_train::dist::Comm::from_env()?;
    let t = time_train_step_with(bench, &comm).context("benchmark failed")?;
    if !comm.is_main() {
        return Ok(());
    }
    if json {
        say!("{}", serde_json::to_string(&t)?);
        return Ok(());
    }
    let mut rss = t
        .peak_rss_mb
        .map_or("unknown".into(), |m| format!("{m:.0} MiB"));
    if let Some(gpu) = t.peak_gpu_mb {
        rss += &format!(", GPU memory in use {gpu:.0} MiB");
    }
    say!(
        "{} batch {}{}: {:.3} s/step (median of {}), {:.1} images/s, peak RSS {rss} ({} kernels on {}, {})",
        t.config,
        t.batch,
        if t.mask_tokens_in_encoder { ", mask tokens in encoder" } else { "" },
        t.step_s,
        t.all_s.len(),
        t.img_per_s,
        t.kernels,
        t.device,
        t.precision,
    );
    if t.ranks > 1 {
        say!(
            "{} ranks: gradient all-reduce {:.3} s/step (+ {:.3} s of bucket copies), batch {} per rank",
            t.ranks, t.allreduce_s, t.allreduce_copy_s, t.batch
        );
    }
    Ok(())
}
