//! `mae info`, `mae import`, `mae init`, `mae check`, `mae reconstruct`, `mae plot`: checkpoints
//! and what a person looks at.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use mae_core::model_files::{check_file, import_file, init_file, open_weights};
use mae_core::weights::WRITTEN_BY_KEY;
use mae_core::{Preset, TensorFile};
use mae_train::reconstruct::{reconstruct, ImagesFrom, ReconstructOptions};

use crate::outputs::{input_files, Kind};

/// `mae reconstruct` arguments.
#[derive(Args)]
pub struct ReconstructArgs {
    /// Model checkpoint.
    #[arg(long)]
    checkpoint: PathBuf,
    /// A prepared dataset (its validation split is shown).
    #[arg(long, conflicts_with = "image")]
    data: Option<PathBuf>,
    /// Image files.
    #[arg(long, num_args = 1..)]
    image: Vec<PathBuf>,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Mask ratio (default: the checkpoint's).
    #[arg(long)]
    mask_ratio: Option<f64>,
    /// Seed of the masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of dataset images.
    #[arg(long, default_value_t = 8)]
    count: usize,
    /// Where the model runs: `cpu`, or `cuda` (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: mae_train::device::DeviceKind,
    /// Replace an existing --out that is not an earlier `mae reconstruct` picture.
    #[arg(long)]
    force: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Writes the Figure-2 grid.
pub fn run_reconstruct(a: ReconstructArgs) -> Result<()> {
    let mut files: Vec<&std::path::Path> = vec![&a.checkpoint];
    files.extend(a.image.iter().map(PathBuf::as_path));
    let datasets: Vec<&std::path::Path> = a.data.iter().map(PathBuf::as_path).collect();
    let inputs = input_files(&files, &datasets);
    let kind = Kind::Png("mae reconstruct");
    crate::outputs::check("--out", &a.out, kind, &inputs, a.force)?;
    let images = match (a.data, a.image.is_empty()) {
        (Some(dir), _) => ImagesFrom::Data(dir),
        (None, false) => ImagesFrom::Files(a.image),
        (None, true) => bail!("give --data DIR or --image FILE..."),
    };
    let summary = reconstruct(&ReconstructOptions {
        checkpoint: a.checkpoint,
        images,
        out: a.out.clone(),
        mask_ratio: a.mask_ratio,
        seed: a.seed,
        count: a.count,
        device: a.device,
    })?;
    if a.json {
        let value = serde_json::json!({
            "out": a.out,
            "count": summary.count,
            "loss": summary.loss,
            "norm_pix_loss": summary.norm_pix,
            "written_by": "mae reconstruct",
        });
        say!("{value}");
        return Ok(());
    }
    say!(
        "wrote {} ({} images, loss {:.4}{})",
        a.out.display(),
        summary.count,
        summary.loss,
        if summary.norm_pix {
            "; norm-pix model: predictions un-normalized with the true patch mean/var"
        } else {
            ""
        }
    );
    Ok(())
}

/// `mae info CHECKPOINT`.
pub fn run_info(a: InfoArgs) -> Result<()> {
    use mae_core::model_files::{weights_kind, WeightsKind};
    let path = a.checkpoint;
    let (file, naming) = open_weights(&path)?;
    let meta = file.metadata()?;
    let (preset, how_chosen) = preset_of_file(&path, &file, None)?;
    let kind = weights_kind(preset, &file)?;
    if a.json {
        let (encoder, decoder, classes) = match &kind {
            WeightsKind::Full { encoder, decoder } => (*encoder, Some(*decoder), None),
            WeightsKind::EncoderOnly { encoder } => (*encoder, None, None),
            WeightsKind::Classifier { layout, params } => (*params, None, Some(layout.num_classes)),
        };
        let config = meta
            .get("config")
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok());
        let number = |key: &str| meta.get(key).and_then(|v| v.parse::<u64>().ok());
        let value = serde_json::json!({
            "file": path,
            "container": describe_container(&file)?,
            "naming": naming.to_string(),
            "preset": preset.name(),
            "kind": match kind {
                WeightsKind::Full { .. } => "full",
                WeightsKind::EncoderOnly { .. } => "encoder",
                WeightsKind::Classifier { .. } => "classifier",
            },
            "encoder_params": encoder,
            "decoder_params": decoder,
            "num_classes": classes,
            "step": number("step"),
            "epoch": number("epoch"),
            "seed": number("seed"),
            "config": config,
        });
        say!("{value}");
        return Ok(());
    }
    say!("{}", path.display());
    say!("  {}, {naming}", describe_container(&file)?);
    say!("  preset {preset}{how_chosen}");
    match kind {
        WeightsKind::Full { encoder, decoder } => say!(
            "  parameters: encoder {encoder}, decoder {decoder}, total {}",
            encoder + decoder
        ),
        WeightsKind::EncoderOnly { encoder } => {
            say!("  encoder only: {encoder} parameters")
        }
        WeightsKind::Classifier { layout, params } => say!(
            "  classifier: {} classes, {}; {params} parameters",
            layout.num_classes,
            layout.pooling
        ),
    }
    for key in ["step", "epoch", "seed"] {
        if let Some(v) = meta.get(key) {
            say!("  {key} {v}");
        }
    }
    if let Some(config) = meta.get("config") {
        let pretty = serde_json::from_str::<serde_json::Value>(config)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| config.clone());
        say!("  config {pretty}");
    }
    Ok(())
}

/// What `mae import` writes: the model, marked as its output.
fn import_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([(WRITTEN_BY_KEY.to_string(), "mae import".to_string())])
}
/// `mae import --from FILE [--preset P] --out C`.
pub fn run_import(a: ImportArgs) -> Result<()> {
    let ImportArgs {
        from,
        preset,
        out,
        force,
    } = a;
    let inputs = input_files(&[&from], &[]);
    crate::outputs::check("--out", &out, Kind::Weights("mae import"), &inputs, force)?;
    // Hugging Face names are converted in memory: nothing is written beside --out
    let (file, naming) = open_weights(&from)?;
    let container = describe_container(&file)?;
    let (preset, how_chosen) = match preset {
        Some(p) => (p, String::new()),
        None => choose_preset(&from, &file)?,
    };
    let how = match mae_core::ClassifierLayout::of_file(&file)? {
        Some(layout) => {
            mae_core::model_files::import_classifier_file(
                preset,
                &file,
                layout,
                &out,
                &import_metadata(),
            )?;
            format!(
                "classifier, {} classes, {}",
                layout.num_classes, layout.pooling
            )
        }
        None => import_file(preset, &file, &out, &import_metadata())?.to_string(),
    };
    say!(
        "{} → {} ({container}, {naming}, {how}, preset {preset}{how_chosen})",
        from.display(),
        out.display()
    );
    Ok(())
}

/// What kind of file the weights came in: safetensors, or a PyTorch file and what was taken off
/// its names.
fn describe_container(file: &TensorFile) -> Result<String> {
    use mae_core::pth::{PTH_FORMAT_KEY, PTH_PREFIX_KEY, PTH_WRAPPER_KEY};
    let meta = file.metadata()?;
    let Some(format) = meta.get(PTH_FORMAT_KEY) else {
        return Ok("safetensors".into());
    };
    let mut s = format!("PyTorch {format} file");
    if let Some(w) = meta.get(PTH_WRAPPER_KEY) {
        s += &format!(", state dict under `{w}`");
    }
    if let Some(p) = meta.get(PTH_PREFIX_KEY) {
        s += &format!(", `{p}` prefix removed");
    }
    Ok(s)
}

fn shown(shape: Option<Vec<usize>>) -> String {
    shape.map_or_else(|| "missing".into(), |s| format!("{s:?}"))
}

/// The preset of weights `file` (opened from `from`): `given`, else the one its metadata names,
/// else the one its shapes fit ([`choose_preset`], whose note on how it chose comes along).
fn preset_of_file(
    from: &std::path::Path,
    file: &TensorFile,
    given: Option<Preset>,
) -> Result<(Preset, String)> {
    if let Some(p) = given {
        return Ok((p, String::new()));
    }
    match file.metadata()?.get("preset") {
        Some(name) => Ok((
            name.parse()
                .with_context(|| format!("{}: preset `{name}`", from.display()))?,
            String::new(),
        )),
        None => choose_preset(from, file),
    }
}

/// The preset whose shapes the weights have; the first when several fit (they differ in heads
/// or, for an encoder-only file, in the decoder), saying which others did.
fn choose_preset(from: &std::path::Path, file: &TensorFile) -> Result<(Preset, String)> {
    let fits = mae_core::model_files::presets_matching(file)?;
    let Some(&first) = fits.first() else {
        bail!(
            "{}: no preset has these shapes (patch_embed.proj.weight {}, pos_embed {}); see \
             `mae presets`",
            from.display(),
            shown(file.shape("patch_embed.proj.weight")?),
            shown(file.shape("pos_embed")?)
        );
    };
    let others: Vec<&str> = fits[1..].iter().map(|p| p.name()).collect();
    let note = if others.is_empty() {
        ", from the shapes".to_string()
    } else {
        format!(
            ", from the shapes; {} fit too: choose with --preset",
            others.join(", ")
        )
    };
    Ok((first, note))
}

/// `mae plot` arguments.
#[derive(Args)]
pub struct PlotArgs {
    /// Run folders: each run's curves in a colour of its own, named after its folder.
    #[arg(required = true, num_args = 1..)]
    run_dirs: Vec<PathBuf>,
    /// Output: a PNG, or an SVG when the name ends in `.svg` (default FIRST_RUN/loss.png); an
    /// existing file that is not an earlier plot needs --force.
    #[arg(long)]
    out: Option<PathBuf>,
    /// TensorBoard's smoothing weight for the loss (its default; 0 draws the raw curve alone).
    #[arg(long, default_value_t = 0.6)]
    smoothing: f64,
    /// A logarithmic loss axis.
    #[arg(long)]
    log_loss: bool,
    /// Replace an existing --out that is not an earlier plot.
    #[arg(long)]
    force: bool,
}

/// `mae plot`: runs' curves to a PNG or an SVG.
pub fn run_plot(a: PlotArgs) -> Result<()> {
    let out = a.out.unwrap_or_else(|| a.run_dirs[0].join("loss.png"));
    let metrics: Vec<PathBuf> = a
        .run_dirs
        .iter()
        .flat_map(|d| [d.join("metrics.jsonl"), d.join("eval.jsonl")])
        .collect();
    let refs: Vec<&std::path::Path> = metrics.iter().map(PathBuf::as_path).collect();
    let inputs = input_files(&refs, &[]);
    let svg = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let kind = if svg {
        Kind::Svg("mae plot")
    } else {
        Kind::Png("mae plot")
    };
    crate::outputs::check("--out", &out, kind, &inputs, a.force)?;
    let opts = mae_train::plot::PlotOptions {
        smoothing: a.smoothing,
        log_loss: a.log_loss,
    };
    let n = mae_train::plot::plot_runs(&a.run_dirs, &out, opts)?;
    say!("wrote {} ({n} points)", out.display());
    Ok(())
}

/// `mae info` arguments.
#[derive(Args)]
pub struct InfoArgs {
    /// Model checkpoint or weights file.
    checkpoint: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `mae import` arguments.
#[derive(Args)]
pub struct ImportArgs {
    /// The weights: safetensors (official, timm or Hugging Face ViTMAE names) or a PyTorch
    /// `.pth` / `.bin` (`torch.save`: the released `mae_pretrain_vit_*.pth`,
    /// `mae_visualize_vit_*.pth` and `mae_finetuned_vit_*.pth`, a `main_pretrain.py` checkpoint,
    /// a DDP state dict, timm's `pytorch_model.bin`); read without running any code in it. A
    /// fine-tuned classifier (with `head.*`) stays a classifier, its head's pooling kept.
    #[arg(long)]
    from: PathBuf,
    /// Preset the weights are for (default: the one whose shapes they have).
    #[arg(long)]
    preset: Option<Preset>,
    /// Output file (an existing one that is not an earlier `mae import` output needs
    /// --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out that is not an earlier `mae import` output.
    #[arg(long)]
    force: bool,
}

/// `mae init` arguments.
#[derive(Args)]
pub struct InitArgs {
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
}

/// `mae check` arguments.
#[derive(Args)]
pub struct CheckArgs {
    /// Preset name.
    #[arg(long)]
    preset: Preset,
    /// Weights file (safetensors or a PyTorch .pth/.bin, official `models_mae.py` names).
    file: PathBuf,
    /// Load only the encoder (encoder-only files such as `mae_pretrain_vit_*`).
    #[arg(long)]
    encoder_only: bool,
    /// Prefix of the tensor names in the file (e.g. `model.`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `mae init`: a freshly initialized model.
pub fn run_init(a: InitArgs) -> Result<()> {
    let InitArgs {
        preset,
        out,
        seed,
        force,
    } = a;
    crate::outputs::check("--out", &out, Kind::Weights("mae init"), &[], force)?;
    let meta = BTreeMap::from([
        ("seed".to_string(), seed.to_string()),
        (WRITTEN_BY_KEY.to_string(), "mae init".to_string()),
    ]);
    init_file(preset, seed, &out, &meta)?;
    say!("wrote {} (preset {preset}, seed {seed})", out.display());
    Ok(())
}

/// `mae check`: a weights file loads strictly into a preset.
pub fn run_check(a: CheckArgs) -> Result<()> {
    let file = TensorFile::open(&a.file)?;
    let path = file.path().display().to_string();
    let preset = a.preset;
    let classifier = mae_core::ClassifierLayout::of_file(&file)?.is_some();
    let params = if classifier && a.prefix.is_empty() && !a.encoder_only {
        // with its head, strictly
        mae_core::model_files::weights_kind(preset, &file)?.params()
    } else {
        check_file(preset, &file, a.encoder_only, &a.prefix)?
    };
    if a.json {
        let value = serde_json::json!({"file": path, "preset": preset.name(), "params": params});
        say!("{value}");
        return Ok(());
    }
    say!("{path}: loads into preset {preset} ({params} trainable parameters)");
    Ok(())
}

/// `mae export` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormatArg {
    /// `torch.save({'model': state_dict})`: what `models_mae.py` / `models_vit.py` load with
    /// `load_state_dict(checkpoint['model'], strict=True)`.
    Pth,
    /// safetensors, official names (what every `mae` command reads).
    Safetensors,
    /// A Hugging Face folder (--out is the folder): config.json + model.safetensors for
    /// `ViTMAEForPreTraining.from_pretrained`, or `ViTModel` with --encoder-only.
    Hf,
}

/// `mae export` arguments.
#[derive(Args)]
pub struct ExportArgs {
    /// The weights: a checkpoint of a run, `mae import` output, or any file `mae import` reads.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "pth")]
    format: ExportFormatArg,
    /// Output file (an existing one needs --force, unless an earlier `mae export` safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Write the encoder only (the released `mae_pretrain_vit_*.pth` layout).
    #[arg(long)]
    encoder_only: bool,
    /// Preset of the weights (default: the checkpoint's, else the one its shapes fit).
    #[arg(long)]
    preset: Option<Preset>,
    /// Replace an existing --out.
    #[arg(long)]
    force: bool,
}

/// `mae export --checkpoint C --format pth|safetensors --out F`.
pub fn run_export(a: ExportArgs) -> Result<()> {
    use mae_core::model_files::{export_file, ExportFormat};
    let (format, kind) = match a.format {
        ExportFormatArg::Pth => (ExportFormat::Pth, Kind::Unmarked),
        ExportFormatArg::Safetensors => (ExportFormat::Safetensors, Kind::Weights("mae export")),
        ExportFormatArg::Hf => (ExportFormat::HuggingFace, Kind::Unmarked),
    };
    let inputs = input_files(&[&a.checkpoint], &[]);
    if a.format == ExportFormatArg::Hf {
        if a.out.exists() && !a.out.is_dir() {
            bail!(
                "--out {} exists and is not a folder; give a folder for --format hf",
                a.out.display()
            );
        }
        // the two files written inside; anything else in the folder is left alone
        let ours = Kind::Weights("mae export");
        crate::outputs::check(
            "--out",
            &a.out.join("model.safetensors"),
            ours,
            &inputs,
            a.force,
        )?;
        let config = a.out.join("config.json");
        let ours_before = mae_core::weights::written_by(&a.out.join("model.safetensors"))
            .as_deref()
            == Some("mae export");
        let config_kind = if ours_before { Kind::Unmarked } else { kind };
        crate::outputs::check(
            "--out",
            &config,
            config_kind,
            &inputs,
            a.force || ours_before,
        )?;
    } else {
        crate::outputs::check("--out", &a.out, kind, &inputs, a.force)?;
    }
    let (file, _) = open_weights(&a.checkpoint)?;
    let (preset, _) = preset_of_file(&a.checkpoint, &file, a.preset)?;
    let meta = BTreeMap::from([(WRITTEN_BY_KEY.to_string(), "mae export".to_string())]);
    let n = export_file(preset, &file, format, a.encoder_only, &a.out, &meta)?;
    let what = match mae_core::ClassifierLayout::of_file(&file)? {
        Some(layout) => format!(
            "classifier, {} classes, {}",
            layout.num_classes, layout.pooling
        ),
        None if a.encoder_only => "encoder only".into(),
        None => "full model".into(),
    };
    say!(
        "{} → {} ({n} tensors, {what}, preset {preset})",
        a.checkpoint.display(),
        a.out.display()
    );
    Ok(())
}
