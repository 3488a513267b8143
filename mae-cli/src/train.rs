//! `mae pretrain` and `mae finetune` (library: `mae-train`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use mae_core::Preset;
use mae_train::config::{FinetuneConfig, FinetuneOverrides};
use mae_train::dist::Comm;
use mae_train::progress::Hooks;
use mae_train::{Outcome, PretrainConfig, PretrainOverrides, Resume};

use crate::progress::{Console, Stream};
use serde_json::Value;

/// `mae pretrain` arguments: the settings (also readable from `--config`) plus resume.
#[derive(Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    settings: PretrainOverrides,
    /// TOML file with the same settings; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `auto` (newest loadable checkpoint of --out, if any) or a checkpoint file.
    #[arg(long)]
    resume: Option<String>,
    /// The run's summary as one JSON object (the last line of the output).
    #[arg(long)]
    json: bool,
}

pub(crate) fn parse_resume(arg: Option<&str>) -> Resume {
    match arg {
        None => Resume::No,
        Some("auto") => Resume::Auto,
        Some(path) => Resume::Path(PathBuf::from(path)),
    }
}

/// `mae pretrain` and `mae finetune` with each flag's default in its help, read from the one place
/// that holds it (`PretrainConfig::resolve`, `FinetuneConfig::new`): the flags are optional (a
/// `--config` file may give them), so clap has no default of its own to show.
pub fn with_defaults_in_help(cmd: clap::Command) -> clap::Command {
    let given = PretrainOverrides {
        data: Some(PathBuf::new()),
        preset: Some(Preset::Tiny),
        out: Some(PathBuf::new()),
        ..PretrainOverrides::default()
    };
    let pretrain = PretrainConfig::resolve(given).map_err(|e| e.to_string());
    let finetune = FinetuneConfig::new(PathBuf::new(), PathBuf::new(), Preset::Tiny);
    let json = |v: serde_json::Result<Value>| v.map_err(|e| e.to_string());
    let pretrain = pretrain.and_then(|c| json(serde_json::to_value(c)));
    let cmd = annotate(cmd, "pretrain", pretrain);
    annotate(cmd, "finetune", json(serde_json::to_value(finetune)))
}

/// Settings whose default is not a constant (the paths, the preset, the machine's cores, the
/// ranks) or is "never" (`u64::MAX`): their help says it in words.
const NO_SHOWN_DEFAULT: &[&str] = &[
    "data",
    "out",
    "preset",
    "checkpoint",
    "workers",
    "world_size",
];

/// Appends `[default: V]` to the help of every flag of subcommand `sub` named like a field of
/// `defaults` (one level of nesting included: pretraining's `model`).
fn annotate(cmd: clap::Command, sub: &str, defaults: Result<Value, String>) -> clap::Command {
    let Ok(Value::Object(top)) = defaults else {
        return cmd;
    };
    let mut fields = top.clone();
    for value in top.values() {
        if let Value::Object(inner) = value {
            fields.extend(inner.clone());
        }
    }
    let Some(found) = cmd.find_subcommand(sub) else {
        return cmd;
    };
    let ids: Vec<String> = found
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    cmd.mut_subcommand(sub, |mut s| {
        for (key, value) in &fields {
            let shown = match value {
                Value::String(v) => v.clone(),
                Value::Bool(v) => v.to_string(),
                Value::Number(n) if n.as_u64() != Some(u64::MAX) => n.to_string(),
                _ => continue,
            };
            if NO_SHOWN_DEFAULT.contains(&key.as_str()) || !ids.contains(key) {
                continue;
            }
            s = s.mut_arg(key.as_str(), |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [default: {shown}]"))
            });
        }
        s
    })
}

/// How a command ended, for its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Done (finished, or `--max-steps` reached): exit status 0.
    Done,
    /// Stopped by SIGINT/SIGTERM after writing a checkpoint: [`EXIT_INTERRUPTED`].
    Interrupted,
}

impl Ended {
    /// [`Ended::Interrupted`] where `outcome` is.
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Interrupted => Ended::Interrupted,
            Outcome::Finished | Outcome::MaxSteps => Ended::Done,
        }
    }
    /// The same of an outcome as a summary writes it (`Interrupted`, `Finished`, ...).
    pub fn of_name(outcome: &str) -> Self {
        match outcome == format!("{:?}", Outcome::Interrupted) {
            true => Ended::Interrupted,
            false => Ended::Done,
        }
    }
}

/// The exit status of a training run stopped by SIGINT/SIGTERM once its checkpoint is written:
/// 75, `EX_TEMPFAIL` of `sysexits.h` ("try again later"), so that a scheduler's script can tell
/// a preempted run (requeue it; `--resume auto` continues it) from a finished one (0) and a
/// failed one (1). A second signal exits at once with 130, without a checkpoint.
pub const EXIT_INTERRUPTED: u8 = 75;

/// What a training run is handed: the stop flag of SIGINT/SIGTERM ([`stop_on_signal`]) and the
/// console's rendering of its progress, plain lines on `log`.
pub(crate) fn training_hooks(log: Stream) -> Result<Hooks> {
    Ok(Hooks::new(stop_on_signal()?, Console::new(log)))
}

/// A flag set by the first SIGINT/SIGTERM (the run then saves and stops); a second one exits.
pub(crate) fn stop_on_signal() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        use std::io::Write;
        // stderr may be closed: a failed message must not panic in the handler
        let mut err = std::io::stderr();
        if flag.swap(true, Ordering::SeqCst) {
            let _ = writeln!(err, "second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        let _ = writeln!(
            err,
            "interrupt: finishing the step and writing a checkpoint..."
        );
    })
    .context("installing the signal handler")?;
    Ok(stop)
}

/// With several ranks, an error on one ends the whole job (`MPI_Abort`) with its message, so the
/// others do not wait for it in the next all-reduce; with one process it is returned as usual.
pub(crate) fn on_every_rank<T>(comm: &Comm, result: Result<T, mae_train::TrainError>) -> Result<T> {
    match result {
        Err(e) if comm.world_size() > 1 => comm.abort(&format!("error: {e:#}"), 1),
        other => Ok(other?),
    }
}

/// Runs pretraining until done, `--max-steps`, or SIGINT/SIGTERM (which save and end
/// [`Ended::Interrupted`]).
pub fn pretrain(args: PretrainArgs) -> Result<Ended> {
    let mut given = PretrainOverrides::default();
    if let Some(path) = &args.config {
        given = PretrainOverrides::from_toml_file(path)?;
    }
    let comm = Comm::from_env()?;
    let config = PretrainConfig::resolve_for(given.merged(args.settings), comm.world_size())?;
    let resume = parse_resume(args.resume.as_deref());
    let hooks = training_hooks(Stream::Stdout)?;
    let summary = on_every_rank(&comm, mae_train::pretrain(&config, &resume, hooks, &comm))?;
    let ended = Ended::of(&summary.outcome);
    if !comm.is_main() {
        return Ok(ended);
    }
    if args.json {
        let value = serde_json::json!({
            "outcome": format!("{:?}", summary.outcome),
            "step": summary.step,
            "checkpoint": summary.checkpoint,
            "last_loss": summary.last_loss,
            "resumed_from": summary.resumed_from.as_ref().map(|r| &r.0),
            "skipped_checkpoints": summary.resumed_from.as_ref().map(|r| &r.1),
            "initialized_from": summary.initialized_from.as_ref().map(|r| &r.0),
            "out": config.out,
            mae_train::rundir::BUILD_KEY: mae_train::rundir::build_json(),
        });
        say!("{value}");
        return Ok(ended);
    }
    if let Some((path, failures)) = &summary.resumed_from {
        for f in failures {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped checkpoint: {f}");
        }
        say!("resumed from {}", path.display());
    }
    if let Some((path, how)) = &summary.initialized_from {
        say!("started from {} ({how})", path.display());
    }
    let where_ = summary
        .checkpoint
        .as_ref()
        .map_or("no checkpoint".to_string(), |p| p.display().to_string());
    let loss = summary
        .last_loss
        .map_or(String::new(), |l| format!(", loss {l:.4}"));
    match summary.outcome {
        Outcome::Interrupted => say!(
            "stopped at step {}{loss}; checkpoint {where_}. Resume with the same command plus --resume auto",
            summary.step
        ),
        Outcome::MaxSteps => say!("reached --max-steps at step {}{loss}; checkpoint {where_}", summary.step),
        Outcome::Finished => say!("finished at step {}{loss}; checkpoint {where_}", summary.step),
    }
    Ok(ended)
}

/// `mae finetune` arguments: the settings (also readable from `--config`; defaults:
/// [`FinetuneConfig::new`], i.e. `main_finetune.py` with the recipe's mixup/cutmix) plus resume
/// and the evaluation-only mode.
#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    settings: FinetuneOverrides,
    /// TOML file with the same settings; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `auto` (newest loadable checkpoint of --out) or a checkpoint file.
    #[arg(long)]
    resume: Option<String>,
    /// Only evaluate a fine-tuned classifier (--checkpoint: RUN/best.safetensors, a released
    /// mae_finetuned_vit_*.pth, a timm ViT; or --resume FILE as `main_finetune.py --eval
    /// --resume`) on the val split of --data, with the file's own head (global pool `fc_norm`
    /// or cls token `norm`).
    #[arg(long)]
    eval: bool,
    /// Print the results as one JSON object (the last line of the output).
    #[arg(long)]
    json: bool,
}

/// `mae finetune --eval`: top-1/top-5 of a classifier file.
fn evaluate(given: FinetuneOverrides, resume: Option<&str>, json: bool) -> Result<()> {
    // main_finetune.py --eval names the classifier with --resume
    let checkpoint = match (given.checkpoint, resume) {
        (Some(c), _) => c,
        (None, Some(file)) if file != "auto" => PathBuf::from(file),
        _ => anyhow::bail!("--eval needs --checkpoint FILE (or --resume FILE)"),
    };
    let data = given.data.context("--data is required")?;
    let batch = given
        .eval_batch_size
        .unwrap_or(FinetuneConfig::EVAL_BATCH_SIZE);
    let device = given.device.unwrap_or_default();
    let acc = mae_train::classify::evaluate_file(&checkpoint, given.preset, &data, batch, device)?;
    if json {
        say!(
            "{}",
            serde_json::json!({"top1": acc.top1, "top5": acc.top5})
        );
    } else {
        say!(
            "{}: val top-1 {:.2}%, top-5 {:.2}%",
            checkpoint.display(),
            acc.top1,
            acc.top5
        );
    }
    Ok(())
}

/// Runs fine-tuning; prints the best and last top-1 and writes `results.json`.
pub fn finetune(a: FinetuneArgs) -> Result<Ended> {
    let mut given = FinetuneOverrides::default();
    if let Some(path) = &a.config {
        given = FinetuneOverrides::from_toml_file(path)?;
    }
    let given = given.merged(a.settings);
    if a.eval {
        evaluate(given, a.resume.as_deref(), a.json)?;
        return Ok(Ended::Done);
    }
    let comm = Comm::from_env()?;
    let cfg = FinetuneConfig::resolve_for(given, comm.world_size())?;
    let hooks = training_hooks(Stream::Stdout)?;
    let resume = parse_resume(a.resume.as_deref());
    let summary = on_every_rank(
        &comm,
        mae_train::finetune::finetune(&cfg, &resume, hooks, &comm),
    )?;
    let ended = Ended::of_name(&summary.outcome);
    if !comm.is_main() {
        return Ok(ended);
    }
    if a.json {
        say!("{}", serde_json::to_string(&summary)?);
        return Ok(ended);
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}%"));
    say!(
        "{} at step {}: best val top-1 {} (epoch {}), last top-1 {} top-5 {}; best model {}; results in {}",
        summary.outcome,
        summary.step,
        pct(summary.best_top1),
        summary.best_epoch.map_or("-".into(), |e| e.to_string()),
        pct(summary.last.map(|l| l.top1)),
        pct(summary.last.map(|l| l.top5)),
        summary
            .best
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string()),
        cfg.out.join("results.json").display()
    );
    Ok(ended)
}
