//! `mae pretrain` (library: `mae-train`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use mae_train::{pretrain as run_pretrain, Outcome, PretrainConfig, PretrainOverrides, Resume};

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

/// Runs pretraining until done, `--max-steps`, or SIGINT/SIGTERM (which save and exit 0).
pub fn pretrain(args: PretrainArgs) -> Result<()> {
    let mut given = PretrainOverrides::default();
    if let Some(path) = &args.config {
        given = PretrainOverrides::from_toml_file(path)?;
    }
    let config = PretrainConfig::resolve(given.merged(args.settings))?;
    let resume = match args.resume.as_deref() {
        None => Resume::No,
        Some("auto") => Resume::Auto,
        Some(path) => Resume::Path(PathBuf::from(path)),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing the step and writing a checkpoint...");
    })
    .context("installing the signal handler")?;
    let summary = run_pretrain(&config, &resume, stop)?;
    if let Some((path, failures)) = &summary.resumed_from {
        for f in failures {
            eprintln!("skipped checkpoint: {f}");
        }
        println!("resumed from {}", path.display());
    }
    let where_ = summary
        .checkpoint
        .as_ref()
        .map_or("no checkpoint".to_string(), |p| p.display().to_string());
    let loss = summary
        .last_loss
        .map_or(String::new(), |l| format!(", loss {l:.4}"));
    match summary.outcome {
        Outcome::Interrupted => println!(
            "stopped at step {}{loss}; checkpoint {where_}. Resume with the same command plus --resume auto",
            summary.step
        ),
        Outcome::MaxSteps => println!("reached --max-steps at step {}{loss}; checkpoint {where_}", summary.step),
        Outcome::Finished => println!("finished at step {}{loss}; checkpoint {where_}", summary.step),
    }
    Ok(())
}
