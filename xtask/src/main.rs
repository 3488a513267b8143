//! `cargo xtask`: the project's automation. Each task is a thin caller of the workspace's
//! libraries or of the scripts under `tools/`.
//!
//! Tasks today: `prepare-data` (the same as `mae data prepare`: it runs the `mae` binary),
//! `fixtures` (regenerate the parity fixtures with the PyTorch reference) and `bench-vs-pytorch`
//! (one training step, ours and PyTorch's, side by side). `demo` arrives with the training issue.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn run_script(name: &str, args: &[String]) -> Result<()> {
    let script = root().join("tools").join(name);
    let status = Command::new("bash")
        .arg(&script)
        .args(args)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// Runs the `mae` binary (release build) with `args`.
fn run_mae(args: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "mae-cli",
            "--bin",
            "mae",
            "--",
        ])
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("mae {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("prepare-data") => {
            let mut mae_args = vec!["data".to_string(), "prepare".to_string()];
            mae_args.extend_from_slice(&args[1..]);
            run_mae(&mae_args)
        }
        Some("fixtures") => run_script("make_fixtures.sh", &args[1..]),
        Some("bench-vs-pytorch") => run_script("bench_vs_pytorch.sh", &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 prepare-data ...   prepare a dataset (see `mae data prepare --help`)\n  \
                 fixtures           regenerate mae-core/tests/fixtures (needs torch, timm)\n  \
                 bench-vs-pytorch   time one training step, ours and PyTorch's, in one run"
            );
            if args.is_empty() {
                Ok(())
            } else {
                bail!("unknown task `{}`", args[0])
            }
        }
    }
}
