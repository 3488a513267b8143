//! The `mae` command: the front end of mae-rs. Thin: the subcommands and their dispatch; each
//! handler lives in the module of its group (`data`, `train`, `eval_cmds`, `model_cmds`,
//! `bench_cmd`), parses its arguments and calls library code in `mae-core` / `mae-train`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use train::Ended;

/// One line on stdout; a closed or full stdout is an error (`writing to stdout: ...`), not a
/// panic. For commands whose output is their result.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))?
    };
}

mod bench_cmd;
mod data;
mod eval_cmds;
mod model_cmds;
mod official;
mod outputs;
mod progress;
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
    Plot(model_cmds::PlotArgs),
    /// Weighted kNN (k=20, T=0.07, as DINO) of the encoder's features: val against train.
    Knn(eval_cmds::KnnArgs),
    /// Linear probe (BatchNorm without affine + Linear; LARS, or AdamW) on the frozen encoder.
    Linprobe(Box<eval_cmds::LinprobeArgs>),
    /// Write the encoder's features (cls and mean-pooled) with labels for both splits.
    Embed(eval_cmds::EmbedArgs),
    /// The top-5 classes of image files under a fine-tuned classifier (ours, the released
    /// mae_finetuned_vit_*.pth, timm's ViTs), with class names.
    Classify(eval_cmds::ClassifyArgs),
    /// Show a checkpoint's preset, parameter counts, step and configuration.
    Info(model_cmds::InfoArgs),
    /// Convert weights (.pth/.bin/safetensors; official, timm or Hugging Face ViTMAE names) into a
    /// checkpoint; the kind of file and its preset are recognised.
    Import(model_cmds::ImportArgs),
    /// Write weights for PyTorch (`.pth` that the official models_mae.py/models_vit.py load
    /// strictly) or as safetensors, the whole MAE or the encoder only.
    Export(model_cmds::ExportArgs),
    /// Datasets: prepare, info, verify, show.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// List the model presets and their dimensions.
    Presets(bench_cmd::PresetsArgs),
    /// Print a shell completion script: `mae completions bash > ~/.local/share/bash-completion/completions/mae`
    /// (also zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write a freshly initialized model of a preset as safetensors (official names).
    Init(model_cmds::InitArgs),
    /// Check that a weights file loads into a preset (strict: names, shapes, values).
    Check(model_cmds::CheckArgs),
    /// Time pretraining steps (forward, backward, AdamW update): median step time, images/s
    /// and peak resident memory.
    Bench(bench_cmd::BenchArgs),
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

/// The whole command line: ours, the defaults in the help, the official spellings, and the
/// version with the commit built from.
fn command() -> clap::Command {
    official::accept_official_spellings(train::with_defaults_in_help(
        <Cli as clap::CommandFactory>::command(),
    ))
    .version(mae_train::build::describe())
}

/// `mae completions SHELL`: the script on stdout (written whole: a closed stdout is an error
/// line, not a panic).
fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "mae", &mut script);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    let command = command();
    let parsed = command
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    match run(cli) {
        Ok(Ended::Done) => std::process::ExitCode::SUCCESS,
        Ok(Ended::Interrupted) => std::process::ExitCode::from(train::EXIT_INTERRUPTED),
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

/// Runs the command; training runs say whether they were interrupted (their exit status).
fn run(cli: Cli) -> Result<Ended> {
    let done = match cli.command {
        Command::Pretrain(args) => return train::pretrain(*args),
        Command::Finetune(args) => return train::finetune(*args),
        Command::Linprobe(args) => return eval_cmds::run_linprobe(*args),
        Command::Data(command) => data::run(command),
        Command::Reconstruct(args) => model_cmds::run_reconstruct(args),
        Command::Plot(args) => model_cmds::run_plot(args),
        Command::Info(args) => model_cmds::run_info(args),
        Command::Import(args) => model_cmds::run_import(args),
        Command::Export(args) => model_cmds::run_export(args),
        Command::Init(args) => model_cmds::run_init(args),
        Command::Check(args) => model_cmds::run_check(args),
        Command::Knn(args) => eval_cmds::run_knn(args),
        Command::Embed(args) => eval_cmds::run_embed(args),
        Command::Classify(args) => eval_cmds::run_classify(args),
        Command::Presets(args) => bench_cmd::run_presets(args),
        Command::Completions { shell } => completions(shell),
        Command::Bench(args) => bench_cmd::run_bench(args),
    };
    done.map(|()| Ended::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use mae_train::{FinetuneConfig, PretrainConfig, PretrainOverrides};

    /// The help of `mae SUB --FLAG`.
    fn help_of(sub: &str, flag: &str) -> String {
        let cmd = train::with_defaults_in_help(Cli::command());
        let sub = cmd.find_subcommand(sub).expect("subcommand");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(flag))
            .expect("flag");
        arg.get_help().map(|h| h.to_string()).unwrap_or_default()
    }

    #[test]
    fn help_shows_the_defaults_of_the_one_place_that_holds_them() {
        let recipe = FinetuneConfig::new("d".into(), "o".into(), mae_core::Preset::Tiny);
        for (flag, value) in [
            ("epochs", recipe.epochs.to_string()),
            ("mixup", recipe.mixup.to_string()),
            ("layer-decay", recipe.layer_decay.to_string()),
            ("precision", recipe.precision.to_string()),
        ] {
            let help = help_of("finetune", flag);
            assert!(
                help.ends_with(&format!("[default: {value}]")),
                "--{flag}: {help}"
            );
        }
        let given = PretrainOverrides {
            data: Some("d".into()),
            preset: Some(mae_core::Preset::Tiny),
            out: Some("o".into()),
            ..Default::default()
        };
        let pretrain = PretrainConfig::resolve(given).expect("defaults");
        let help = help_of("pretrain", "mask-ratio");
        assert!(
            help.ends_with(&format!("[default: {}]", pretrain.model.mask_ratio)),
            "{help}"
        );
        let help = help_of("pretrain", "blr");
        assert!(
            help.ends_with(&format!("[default: {}]", pretrain.blr)),
            "{help}"
        );
        // no default shown where it depends on the machine or the data
        for (sub, flag) in [
            ("finetune", "workers"),
            ("pretrain", "data"),
            ("finetune", "save-every"),
        ] {
            assert!(!help_of(sub, flag).contains("[default"), "--{flag}");
        }
    }
}
