//! `cargo xtask`: the project's automation. Each task is a thin caller of the workspace's
//! libraries or of the scripts under `tools/`.
//!
//! Tasks today: `fixtures` (regenerate the parity fixtures with the PyTorch reference) and
//! `bench-vs-pytorch` (one training step, ours and PyTorch's, side by side). `prepare-data` and
//! `demo` arrive with the data and training issues.

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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fixtures") => run_script("make_fixtures.sh", &args[1..]),
        Some("bench-vs-pytorch") => run_script("bench_vs_pytorch.sh", &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
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
