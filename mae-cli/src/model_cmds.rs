//! `mae info`, `mae import`, `mae reconstruct`, `mae plot`: checkpoints and what a person looks at.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use mae_core::dfdx::prelude::*;
use mae_core::weights::{
    hugging_face_to_official, is_hugging_face, safetensors_bytes, WRITTEN_BY_KEY,
};
use mae_core::{Mae, MaeError, MaePreset, Preset, PresetVisitor, TensorFile};
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

struct Counts(TensorFile);
impl PresetVisitor for Counts {
    type Output = Result<(usize, usize), MaeError>;
    fn visit<P: MaePreset>(self) -> Self::Output {
        let mut model = Mae::<P, f32, Cpu>::new(&Cpu::default())?;
        model.load_from(&self.0, "")?;
        Ok((
            model.encoder.num_trainable_params(),
            model.decoder.num_trainable_params(),
        ))
    }
}

/// `mae info CHECKPOINT`.
pub fn run_info(path: PathBuf) -> Result<()> {
    let file = TensorFile::open(&path)?;
    let meta = file.metadata()?;
    let preset: Preset = meta
        .get("preset")
        .context("no `preset` in the file's metadata")?
        .parse()?;
    let (enc, dec) = preset.visit(Counts(TensorFile::open(&path)?))?;
    say!("{}", path.display());
    say!("  preset {preset}");
    say!(
        "  parameters: encoder {enc}, decoder {dec}, total {}",
        enc + dec
    );
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

struct Import {
    file: TensorFile,
    out: PathBuf,
}

/// What `mae import` writes: the model, marked as its output.
fn import_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([(WRITTEN_BY_KEY.to_string(), "mae import".to_string())])
}
impl PresetVisitor for Import {
    type Output = Result<&'static str, MaeError>;
    fn visit<P: MaePreset>(self) -> Self::Output {
        let mut model = Mae::<P, f32, Cpu>::new(&Cpu::seed_from_u64(0))?;
        let how = match model.load_from(&self.file, "") {
            Ok(()) => "full model",
            Err(MaeError::MissingKey { key, .. }) if mae_core::weights::is_decoder_name(&key) => {
                model.encoder.load_from(&self.file, "")?;
                "encoder only (decoder freshly initialized)"
            }
            Err(e) => return Err(e),
        };
        model.save_safetensors(&self.out, &import_metadata())?;
        Ok(how)
    }
}

/// `mae import --from FILE --preset P --out C`.
pub fn run_import(from: PathBuf, preset: Preset, out: PathBuf, force: bool) -> Result<()> {
    let inputs = input_files(&[&from], &[]);
    crate::outputs::check("--out", &out, Kind::Weights("mae import"), &inputs, force)?;
    let file = TensorFile::open(&from)?;
    let (file, naming) = if is_hugging_face(&file)? {
        // converted in memory: nothing is written beside --out
        let tensors = hugging_face_to_official(&file)?;
        let bytes = safetensors_bytes(&from, &tensors, &BTreeMap::new())?;
        (
            TensorFile::from_bytes(&from, bytes)?,
            "Hugging Face ViTMAE names",
        )
    } else {
        (file, "official/timm names")
    };
    let how = preset.visit(Import {
        file,
        out: out.clone(),
    })?;
    say!(
        "{} → {} ({naming}, {how}, preset {preset})",
        from.display(),
        out.display()
    );
    Ok(())
}
