//! The `mae` command: the front end of mae-rs. Thin: every subcommand parses its arguments and
//! calls library code in `mae-core` / `mae-train`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mae_core::dfdx::prelude::*;
use mae_core::{Mae, MaePreset, Preset, PresetVisitor, TensorFile};
use mae_train::bench::{time_train_step, StepBench};

mod data;
mod model_cmds;
mod train;

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
    /// The paper's Figure 2 for a checkpoint: original | masked | reconstruction | + visible.
    Reconstruct(model_cmds::ReconstructArgs),
    /// Draw a run's loss and learning-rate curves (from metrics.jsonl) to a PNG.
    Plot {
        /// Run directory.
        run_dir: PathBuf,
        /// Output PNG (default RUN_DIR/loss.png).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Weighted kNN (k=20, T=0.07, as DINO) of the encoder's features: val against train.
    Knn {
        /// Model checkpoint (full or encoder-only).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Prepared dataset.
        #[arg(long)]
        data: PathBuf,
        /// Neighbours.
        #[arg(long, default_value_t = 20)]
        k: usize,
        /// Softmax temperature of the votes.
        #[arg(long, default_value_t = 0.07)]
        temperature: f32,
        /// `cls` or `avg` (mean of the patch tokens).
        #[arg(long, default_value = "cls")]
        feature: String,
        /// Images per encoder forward.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Linear probe (BatchNorm without affine + Linear, LARS) on the frozen encoder's features.
    Linprobe {
        /// Model checkpoint (full or encoder-only).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Prepared dataset (trains on train, reports on val).
        #[arg(long)]
        data: PathBuf,
        /// `cls` or `avg` (mean of the patch tokens).
        #[arg(long, default_value = "cls")]
        feature: String,
        /// Epochs over the cached features.
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
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the encoder's features (cls and mean-pooled) with labels for both splits to safetensors.
    Embed {
        /// Model checkpoint (full or encoder-only).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Prepared dataset.
        #[arg(long)]
        data: PathBuf,
        /// Output `.safetensors` file (`train.cls`, `train.avg`, `train.labels`, `val.*`).
        #[arg(long)]
        out: PathBuf,
        /// Images per encoder forward.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
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
        /// Output file.
        #[arg(long)]
        out: PathBuf,
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
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the initialization.
        #[arg(long, default_value_t = 0)]
        seed: u64,
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
    /// Time training steps (forward, backward, AdamW update) and print one JSON line.
    Bench {
        /// Preset name.
        #[arg(long, default_value = "tiny")]
        preset: Preset,
        /// Images per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed steps after one warm-up step.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Mask ratio.
        #[arg(long, default_value_t = 0.75)]
        mask_ratio: f64,
    },
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
        let meta = BTreeMap::from([("seed".to_string(), self.seed.to_string())]);
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

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(command) => data::run(command)?,
        Command::Pretrain(args) => train::pretrain(*args)?,
        Command::Reconstruct(args) => model_cmds::run_reconstruct(args)?,
        Command::Plot { run_dir, out } => {
            let out = out.unwrap_or_else(|| run_dir.join("loss.png"));
            let n = mae_train::plot::plot_run(&run_dir, &out)?;
            println!("wrote {} ({n} points)", out.display());
        }
        Command::Info { checkpoint } => model_cmds::run_info(checkpoint)?,
        Command::Knn {
            checkpoint,
            data,
            k,
            temperature,
            feature,
            batch_size,
            json,
        } => {
            let input = mae_train::features::EvalInput {
                checkpoint,
                data,
                batch: batch_size,
            };
            let acc = mae_train::features::knn_eval(&input, k, temperature, feature.parse()?)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"top1": acc.top1, "top5": acc.top5, "k": k, "feature": feature})
                );
            } else {
                println!(
                    "kNN (k={k}, T={temperature}, {feature}): top-1 {:.2}%, top-5 {:.2}%",
                    acc.top1, acc.top5
                );
            }
        }
        Command::Linprobe {
            checkpoint,
            data,
            feature,
            epochs,
            batch_size,
            blr,
            warmup_epochs,
            json,
        } => {
            let input = mae_train::features::EvalInput {
                checkpoint: checkpoint.clone(),
                data,
                batch: 256,
            };
            let cfg = mae_train::linprobe::ProbeConfig {
                epochs,
                batch_size,
                blr,
                warmup_epochs,
                ..Default::default()
            };
            let result = mae_train::linprobe::linprobe(&input, feature.parse()?, &cfg)?;
            let text = serde_json::to_string(&result)?;
            let beside = checkpoint.with_extension(format!("linprobe-{feature}.json"));
            std::fs::write(&beside, &text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", beside.display()))?;
            if json {
                println!("{text}");
            } else {
                println!(
                    "linear probe ({feature}, {epochs} epochs): top-1 {:.2}%, top-5 {:.2}% on {} val images; written to {}",
                    result.top1, result.top5, result.val, beside.display()
                );
            }
        }
        Command::Embed {
            checkpoint,
            data,
            out,
            batch_size,
        } => {
            let input = mae_train::features::EvalInput {
                checkpoint,
                data,
                batch: batch_size,
            };
            let (train, val, _) = mae_train::features::extract_dataset(&input)?;
            mae_train::features::write_features(&out, &[("train", &train), ("val", &val)])?;
            println!(
                "wrote {} ({} train + {} val, {}-d)",
                out.display(),
                train.len(),
                val.len(),
                train.dim
            );
        }
        Command::Import { from, preset, out } => model_cmds::run_import(from, preset, out)?,
        Command::Presets => {
            println!(
                "preset    image chans patch | encoder dim/depth/heads | decoder dim/depth/heads"
            );
            for &p in Preset::ALL {
                let d = p.dims();
                println!(
                    "{:<9} {:>5} {:>5} {:>5} | {:>4}/{:>2}/{:>2}               | {:>4}/{:>2}/{:>2}",
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
        }
        Command::Init { preset, out, seed } => {
            preset.visit(InitModel {
                out: out.clone(),
                seed,
            })?;
            println!("wrote {} (preset {preset}, seed {seed})", out.display());
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
            println!("{path}: loads into preset {preset} ({params} trainable parameters)");
        }
        Command::Bench {
            preset,
            batch,
            steps,
            mask_ratio,
        } => {
            if batch == 0 || steps == 0 {
                bail!("--batch and --steps must be at least 1");
            }
            let timing = time_train_step(&StepBench {
                preset,
                batch,
                steps,
                mask_ratio,
                cache: true,
            })
            .context("benchmark failed")?;
            println!("{}", serde_json::to_string(&timing)?);
        }
    }
    Ok(())
}
