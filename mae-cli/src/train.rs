//! `mae pretrain` and `mae finetune` (library: `mae-train`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use mae_core::Preset;
use mae_train::amp::Precision;
use mae_train::device::DeviceKind;
use mae_train::dist::Comm;
use mae_train::finetune::FinetuneConfig;
use mae_train::pretrain::pretrain_with;
use mae_train::{Outcome, PretrainConfig, PretrainOverrides, Resume};

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
}

fn parse_resume(arg: Option<&str>) -> Resume {
    match arg {
        None => Resume::No,
        Some("auto") => Resume::Auto,
        Some(path) => Resume::Path(PathBuf::from(path)),
    }
}

/// A flag set by the first SIGINT/SIGTERM (the run then saves and stops); a second one exits.
fn stop_on_signal() -> Result<Arc<AtomicBool>> {
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

/// Runs pretraining until done, `--max-steps`, or SIGINT/SIGTERM (which save and exit 0).
pub fn pretrain(args: PretrainArgs) -> Result<()> {
    let mut given = PretrainOverrides::default();
    if let Some(path) = &args.config {
        given = PretrainOverrides::from_toml_file(path)?;
    }
    let comm = Comm::from_env()?;
    let config = PretrainConfig::resolve_for(given.merged(args.settings), comm.world_size())?;
    let resume = parse_resume(args.resume.as_deref());
    let stop = stop_on_signal()?;
    let summary = on_every_rank(&comm, pretrain_with(&config, &resume, stop, &comm))?;
    if !comm.is_main() {
        return Ok(());
    }
    if let Some((path, failures)) = &summary.resumed_from {
        for f in failures {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped checkpoint: {f}");
        }
        say!("resumed from {}", path.display());
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
    Ok(())
}

/// The fine-tuning defaults, from the one place that holds them.
fn recipe() -> FinetuneConfig {
    FinetuneConfig::new(PathBuf::new(), PathBuf::new(), Preset::Tiny)
}

/// `mae finetune` arguments (defaults: [`FinetuneConfig::new`], i.e. `main_finetune.py` with the
/// recipe's mixup/cutmix).
#[derive(Args)]
pub struct FinetuneArgs {
    /// Pretrained checkpoint (an MAE run's checkpoint, `mae import` output, encoder-only weights).
    #[arg(long, required_unless_present = "from_scratch")]
    checkpoint: Option<PathBuf>,
    /// Train from random initialization instead (the baseline row).
    #[arg(long, conflicts_with = "checkpoint", requires = "preset")]
    from_scratch: bool,
    /// Prepared dataset: trains on train, evaluates on val after every epoch.
    #[arg(long)]
    data: PathBuf,
    /// Run directory: checkpoints, best.safetensors, metrics.jsonl, eval.jsonl, results.json.
    #[arg(long, required_unless_present = "eval")]
    out: Option<PathBuf>,
    /// Classifier preset (default: the checkpoint's; one with the same encoder at another image
    /// size interpolates the position embedding).
    #[arg(long)]
    preset: Option<Preset>,
    /// Epochs.
    #[arg(long, default_value_t = recipe().epochs)]
    epochs: usize,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Images per micro-batch (even with mixup/cutmix).
    #[arg(long, default_value_t = recipe().batch_size)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = recipe().accum_iter)]
    accum_iter: usize,
    /// Base learning rate: lr = blr · batch · accum / 256.
    #[arg(long, default_value_t = recipe().blr)]
    blr: f64,
    /// Absolute learning rate (overrides --blr).
    #[arg(long)]
    lr: Option<f64>,
    /// Floor of the cosine schedule.
    #[arg(long, default_value_t = recipe().min_lr)]
    min_lr: f64,
    /// Linear warmup, in epochs.
    #[arg(long, default_value_t = recipe().warmup_epochs)]
    warmup_epochs: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = recipe().weight_decay)]
    weight_decay: f64,
    /// Layer-wise learning-rate decay.
    #[arg(long, default_value_t = recipe().layer_decay)]
    layer_decay: f64,
    /// Drop path (stochastic depth) rate of the last block.
    #[arg(long, default_value_t = recipe().drop_path)]
    drop_path: f64,
    /// Label smoothing.
    #[arg(long, default_value_t = recipe().smoothing)]
    smoothing: f64,
    /// Mixup α (0 turns it off).
    #[arg(long, default_value_t = recipe().mixup)]
    mixup: f64,
    /// Cutmix α (0 turns it off).
    #[arg(long, default_value_t = recipe().cutmix)]
    cutmix: f64,
    /// Probability of mixing a batch.
    #[arg(long, default_value_t = recipe().mixup_prob)]
    mixup_prob: f64,
    /// Probability of cutmix instead of mixup when both are on.
    #[arg(long, default_value_t = recipe().mixup_switch_prob)]
    mixup_switch_prob: f64,
    /// Random erasing probability.
    #[arg(long, default_value_t = recipe().reprob)]
    reprob: f64,
    /// Smallest crop area fraction of RandomResizedCrop.
    #[arg(long, default_value_t = recipe().min_crop_scale)]
    min_crop_scale: f64,
    /// Seed of the head, data order and augmentation.
    #[arg(long, default_value_t = recipe().seed)]
    seed: u64,
    /// Loader threads (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Also write a checkpoint every this many steps (always at each epoch's end).
    #[arg(long)]
    save_every: Option<u64>,
    /// Keep only the newest K step checkpoints (best.safetensors is kept apart).
    #[arg(long, default_value_t = recipe().keep_last)]
    keep_last: usize,
    /// Metrics line every this many steps.
    #[arg(long, default_value_t = recipe().log_every)]
    log_every: u64,
    /// `auto` (newest loadable checkpoint of --out) or a checkpoint file.
    #[arg(long)]
    resume: Option<String>,
    /// Only evaluate a fine-tuned classifier (--checkpoint, e.g. RUN/best.safetensors) on the
    /// val split of --data.
    #[arg(long, requires = "checkpoint")]
    eval: bool,
    /// Print the results as one JSON object (the last line of the output).
    #[arg(long)]
    json: bool,
    /// `cpu`, or `cuda` (the first NVIDIA GPU; needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
    /// `f32`, or `amp-f16`: forward and backward in half precision with f32 master weights and
    /// dynamic loss scaling (the official code's `autocast` + `GradScaler`).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

/// Runs fine-tuning; prints the best and last top-1 and writes `results.json`.
pub fn finetune(a: FinetuneArgs) -> Result<()> {
    if a.eval {
        let checkpoint = a.checkpoint.context("--eval needs --checkpoint")?;
        let acc =
            mae_train::finetune::evaluate_file(&checkpoint, a.preset, &a.data, 256, a.device)?;
        if a.json {
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
        return Ok(());
    }
    let preset = match (a.preset, &a.checkpoint) {
        (Some(p), _) => p,
        (None, Some(c)) => mae_train::checkpoint::preset_of(c)?,
        (None, None) => anyhow::bail!("give --preset with --from-scratch"),
    };
    let out = a.out.context("--out is required")?;
    let comm = Comm::from_env()?;
    let mut cfg = FinetuneConfig::new(a.data, out, preset);
    cfg.world_size = comm.world_size();
    cfg.device = a.device;
    cfg.precision = a.precision;
    cfg.checkpoint = a.checkpoint;
    cfg.epochs = a.epochs;
    cfg.max_steps = a.max_steps;
    cfg.batch_size = a.batch_size;
    cfg.accum_iter = a.accum_iter;
    cfg.blr = a.blr;
    cfg.lr = a.lr.unwrap_or_else(|| {
        mae_train::schedule::absolute_lr(a.blr, a.batch_size, a.accum_iter, comm.world_size())
    });
    cfg.min_lr = a.min_lr;
    cfg.warmup_epochs = a.warmup_epochs;
    cfg.weight_decay = a.weight_decay;
    cfg.layer_decay = a.layer_decay;
    cfg.drop_path = a.drop_path;
    cfg.smoothing = a.smoothing;
    cfg.mixup = a.mixup;
    cfg.cutmix = a.cutmix;
    cfg.mixup_prob = a.mixup_prob;
    cfg.mixup_switch_prob = a.mixup_switch_prob;
    cfg.reprob = a.reprob;
    cfg.min_crop_scale = a.min_crop_scale;
    cfg.seed = a.seed;
    if let Some(w) = a.workers {
        cfg.workers = w;
    }
    if let Some(s) = a.save_every {
        cfg.save_every = s;
    }
    cfg.keep_last = a.keep_last;
    cfg.log_every = a.log_every;
    let stop = stop_on_signal()?;
    let resume = parse_resume(a.resume.as_deref());
    let summary = on_every_rank(
        &comm,
        mae_train::finetune::finetune_with(&cfg, &resume, stop, &comm),
    )?;
    if !comm.is_main() {
        return Ok(());
    }
    if a.json {
        say!("{}", serde_json::to_string(&summary)?);
        return Ok(());
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
    Ok(())
}
