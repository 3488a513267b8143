//! `cargo xtask`: the project's automation. Each task is a thin caller of the workspace's
//! libraries or of the scripts under `tools/`.
//!
//! Tasks today: `prepare-data` (the same as `mae data prepare`: it runs the `mae` binary),
//! `fuzz` / `fuzz-seeds` (the fuzz targets of `fuzz/`, and their seed inputs),
//! `fixtures` (regenerate the parity fixtures with the PyTorch reference) and `bench-vs-pytorch`
//! (one training step, ours and PyTorch's, side by side), and `demo`: the newcomer's first
//! command (prepare the bundled Fashion-MNIST, pretrain `tiny` for a few minutes, write the
//! reconstruction grid and the loss plot).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

mod fuzz_seeds;

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
    println!("$ mae {}", args.join(" "));
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

/// The newcomer's first command: prepare the bundled Fashion-MNIST, pretrain `tiny` for a few
/// minutes, write the reconstruction grid and the loss plot.
fn demo(extra: &[String]) -> Result<()> {
    let dir = root().join("runs/demo");
    let data = dir.join("fmnist");
    let run = dir.join("run");
    let s = |p: &std::path::Path| p.display().to_string();
    if !data.join("manifest.json").is_file() {
        run_mae(
            &[
                "data",
                "prepare",
                "--from",
                "idx",
                "data/fashion-mnist",
                "--out",
                &s(&data),
                "--force",
            ]
            .map(String::from),
        )?;
    }
    let mut pretrain: Vec<String> = [
        "pretrain",
        "--data",
        &s(&data),
        "--preset",
        "tiny",
        "--out",
        &s(&run),
        "--epochs",
        "4",
        "--warmup-epochs",
        "0.5",
        "--batch-size",
        "128",
        "--blr",
        "1.5e-3",
        "--norm-pix-loss",
        "--max-steps",
        "200",
        "--save-every",
        "50",
        "--log-every",
        "10",
        "--resume",
        "auto",
    ]
    .map(String::from)
    .to_vec();
    pretrain.extend_from_slice(extra);
    run_mae(&pretrain)?;
    let checkpoint = std::fs::read_dir(&run)
        .with_context(|| format!("reading {}", run.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            let step: u64 = name
                .strip_prefix("checkpoint-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((step, p))
        })
        .max_by_key(|(step, _)| *step)
        .map(|(_, p)| p)
        .context("the run wrote no checkpoint")?;
    let grid = dir.join("reconstruction.png");
    let plot = dir.join("loss.png");
    run_mae(
        &[
            "reconstruct",
            "--checkpoint",
            &s(&checkpoint),
            "--data",
            &s(&data),
            "--out",
            &s(&grid),
            "--count",
            "8",
            // runs/demo is the demo's own folder: its pictures are replaced on every run
            "--force",
        ]
        .map(String::from),
    )?;
    run_mae(&["plot", &s(&run), "--out", &s(&plot), "--force"].map(String::from))?;
    println!("\ndemo done:");
    println!("  reconstructions  {}", grid.display());
    println!("  loss curve       {}", plot.display());
    println!("  checkpoint       {}", checkpoint.display());
    println!("  metrics          {}", run.join("metrics.jsonl").display());
    println!("next: train longer with the same command and more --max-steps (it resumes), look at");
    println!("`mae info {}`, or prepare your own images with `mae data prepare --from imagefolder DIR --out OUT`.", checkpoint.display());
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("prepare-data") => {
            let mut mae_args = vec!["data".to_string(), "prepare".to_string()];
            mae_args.extend_from_slice(&args[1..]);
            run_mae(&mae_args)
        }
        Some("fixtures") => run_script("make_fixtures.sh", &args[1..]),
        Some("bench-vs-pytorch") => run_script("bench_vs_pytorch.sh", &args[1..]),
        Some("gpu-build") => run_script("gpu_build.sh", &args[1..]),
        Some("fuzz") => run_script("fuzz.sh", &args[1..]),
        Some("fuzz-seeds") => fuzz_seeds::fuzz_seeds(),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 demo               prepare the bundled data, pretrain `tiny`, draw reconstructions\n  \
                 prepare-data ...   prepare a dataset (see `mae data prepare --help`)\n  \
                 fixtures           regenerate mae-core/tests/fixtures (needs torch, timm)\n  \
                 bench-vs-pytorch   time one training step, ours and PyTorch's, in one run\n  \
                 gpu-build          CUDA 13.0 from PyPI wheels, then the `cuda` binaries into\n                     \
                 target/gpu-carry for tools/gpu_check.sh on a GPU machine (no GPU needed here)\n  \
                 fuzz [SECONDS]     run every fuzz target SECONDS (default 60) each (tools/fuzz.sh)\n  \
                 fuzz-seeds         rewrite the fuzz targets' seed inputs in fuzz/corpus"
            );
            if args.is_empty() {
                Ok(())
            } else {
                bail!("unknown task `{}`", args[0])
            }
        }
    }
}
