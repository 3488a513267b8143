//! `mae bench` and `mae presets`: the engine's training step timed, and the presets listed
//! (library: `mae_train::bench`).

use anyhow::{Context, Result};
use clap::Args;
use mae_core::Preset;
use mae_train::amp::Precision;
use mae_train::bench::{time_train_step, StepBench};
use mae_train::device::DeviceKind;

/// `mae bench` arguments.
#[derive(Args)]
pub struct BenchArgs {
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
    #[arg(long, default_value_t = mae_core::masking::DEFAULT_MASK_RATIO)]
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
}

/// `mae presets`.
pub fn run_presets(a: PresetsArgs) -> Result<()> {
    if a.json {
        let all: Vec<serde_json::Value> = Preset::ALL
            .iter()
            .map(|&p| {
                let d = p.dims();
                serde_json::json!({
                    "name": p.name(),
                    "img_size": d.img_size,
                    "in_chans": d.in_chans,
                    "patch_size": d.patch_size,
                    "embed_dim": d.embed_dim,
                    "depth": d.depth,
                    "num_heads": d.num_heads,
                    "decoder_embed_dim": d.decoder_embed_dim,
                    "decoder_depth": d.decoder_depth,
                    "decoder_num_heads": d.decoder_num_heads,
                })
            })
            .collect();
        say!("{}", serde_json::Value::from(all));
        return Ok(());
    }
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

/// `mae presets` arguments.
#[derive(clap::Args)]
pub struct PresetsArgs {
    /// One JSON array (a field per dimension, the names of `models_mae.py`'s arguments).
    #[arg(long)]
    json: bool,
}

/// `mae bench`.
pub fn run_bench(a: BenchArgs) -> Result<()> {
    let bench = StepBench {
        preset: a.preset,
        batch: a.batch_size,
        steps: a.steps,
        mask_ratio: a.mask_ratio,
        cache: true,
        fused: a.kernels == "fused",
        mask_tokens_in_encoder: a.mask_tokens_in_encoder,
        device: a.device,
        precision: a.precision,
    };
    let json = a.json;
    let comm = mae_train::dist::Comm::from_env()?;
    let t = time_train_step(&bench, &comm).context("benchmark failed")?;
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
