//! Whole model files by preset name: a fresh initialization, a strict load check, the parameter
//! counts, and an import of official / timm weights (full, or encoder-only with a fresh decoder).
//!
//! PyTorch counterpart: `models_mae.mae_vit_*()` + `torch.save(model.state_dict())`, and
//! `model.load_state_dict(checkpoint['model'], strict=True)` (what `mae check` and `mae import`
//! do with a released `.pth` converted to safetensors).

use std::collections::BTreeMap;
use std::path::Path;

use dfdx::prelude::*;

use crate::error::MaeError;
use crate::model::Mae;
use crate::preset::{MaePreset, Preset, PresetVisitor};
use crate::weights::{
    hugging_face_to_official, is_decoder_name, is_hugging_face, safetensors_bytes, TensorFile,
    CHECKSUM_KEY,
};

/// Writes a freshly initialized MAE of `preset` (dfdx's RNG seeded with `seed`) to `out`, with
/// `metadata` (atomically).
pub fn init_file(
    preset: Preset,
    seed: u64,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<(), MaeError> {
    struct Init<'a>(u64, &'a Path, &'a BTreeMap<String, String>);
    impl PresetVisitor for Init<'_> {
        type Output = Result<(), MaeError>;
        fn visit<P: MaePreset>(self) -> Self::Output {
            let model = Mae::<P, f32, Cpu>::new(&Cpu::seed_from_u64(self.0))?;
            model.save_safetensors(self.1, self.2)
        }
    }
    preset.visit(Init(seed, out, metadata))
}

/// Loads `file` (tensor names after `prefix`) strictly into an MAE of `preset`, or into its
/// encoder alone; returns the trainable parameters loaded.
pub fn check_file(
    preset: Preset,
    file: &TensorFile,
    encoder_only: bool,
    prefix: &str,
) -> Result<usize, MaeError> {
    struct Check<'a>(&'a TensorFile, bool, &'a str);
    impl PresetVisitor for Check<'_> {
        type Output = Result<usize, MaeError>;
        fn visit<P: MaePreset>(self) -> Self::Output {
            let mut model = Mae::<P, f32, Cpu>::new(&Cpu::default())?;
            if self.1 {
                model.encoder.load_from(self.0, self.2)?;
                Ok(model.encoder.num_trainable_params())
            } else {
                model.load_from(self.0, self.2)?;
                Ok(model.num_trainable_params())
            }
        }
    }
    preset.visit(Check(file, encoder_only, prefix))
}

/// The trainable parameters of the encoder and of the decoder of `file`, loaded strictly as an
/// MAE of `preset`.
pub fn parameter_counts(preset: Preset, file: &TensorFile) -> Result<(usize, usize), MaeError> {
    struct Counts<'a>(&'a TensorFile);
    impl PresetVisitor for Counts<'_> {
        type Output = Result<(usize, usize), MaeError>;
        fn visit<P: MaePreset>(self) -> Self::Output {
            let mut model = Mae::<P, f32, Cpu>::new(&Cpu::default())?;
            model.load_from(self.0, "")?;
            Ok((
                model.encoder.num_trainable_params(),
                model.decoder.num_trainable_params(),
            ))
        }
    }
    preset.visit(Counts(file))
}

/// Loads `file` (official names) into an MAE of `preset` and writes it to `out` with `metadata`:
/// the whole model, or, for an encoder-only file (the released `mae_pretrain_vit_*`), the encoder
/// with a freshly initialized decoder (seed 0). Returns which of the two it was.
pub fn import_file(
    preset: Preset,
    file: &TensorFile,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<&'static str, MaeError> {
    struct Import<'a>(&'a TensorFile, &'a Path, &'a BTreeMap<String, String>);
    impl PresetVisitor for Import<'_> {
        type Output = Result<&'static str, MaeError>;
        fn visit<P: MaePreset>(self) -> Self::Output {
            let mut model = Mae::<P, f32, Cpu>::new(&Cpu::seed_from_u64(0))?;
            let how = load_mae_weights(&mut model, self.0)?;
            model.save_safetensors(self.1, self.2)?;
            Ok(how)
        }
    }
    preset.visit(Import(file, out, metadata))
}

/// Loads `file` (official names) into `model`: every tensor, or, for an encoder-only file, the
/// encoder alone, the decoder keeping the initialization it has (`Mae::new`'s, the official
/// `initialize_weights`). Returns which of the two it was; on an error `model` is unchanged.
pub fn load_mae_weights<P: MaePreset, D: Device<f32>>(
    model: &mut Mae<P, f32, D>,
    file: &TensorFile,
) -> Result<&'static str, MaeError> {
    match model.load_from(file, "") {
        Ok(()) => Ok("full model"),
        Err(MaeError::MissingKey { key, .. }) if is_decoder_name(&key) => {
            model.encoder.load_from(file, "")?;
            Ok("encoder only (decoder freshly initialized)")
        }
        Err(e) => Err(e),
    }
}

/// Opens weights in any form the commands take: safetensors or a PyTorch `.pth` / `.bin`
/// ([`crate::pth`]), under official/timm names or Hugging Face ViTMAE names (converted in
/// memory). Returns the file under official names and which naming it had.
pub fn open_weights(path: &Path) -> Result<(TensorFile, &'static str), MaeError> {
    let file = TensorFile::open(path)?;
    if !is_hugging_face(&file)? {
        return Ok((file, "official/timm names"));
    }
    let tensors = hugging_face_to_official(&file)?;
    let mut meta = file.metadata()?;
    meta.remove(CHECKSUM_KEY);
    let bytes = safetensors_bytes(path, &tensors, &meta.into_iter().collect())?;
    Ok((
        TensorFile::from_bytes(path, bytes)?,
        "Hugging Face ViTMAE names",
    ))
}

/// The presets whose shapes `file` (official names) has: patch embedding, position embedding and
/// encoder depth, and the decoder's width and depth when it has a decoder. Heads cannot be seen
/// in shapes; presets that differ only there (or only in the decoder, for an encoder-only file)
/// all match, in definition order.
pub fn presets_matching(file: &TensorFile) -> Result<Vec<Preset>, MaeError> {
    let names = file.names()?;
    let depth = |prefix: &str| {
        let mut blocks: Vec<&str> = names
            .iter()
            .filter_map(|n| n.strip_prefix(prefix)?.split('.').next())
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        blocks.len()
    };
    let (depth, decoder_depth) = (depth("blocks."), depth("decoder_blocks."));
    let patch = file.shape("patch_embed.proj.weight")?;
    let pos = file.shape("pos_embed")?;
    let decoder = file.shape("decoder_embed.weight")?;
    Ok(Preset::ALL
        .iter()
        .copied()
        .filter(|p| {
            let d = p.dims();
            let tokens = (d.img_size / d.patch_size).pow(2) + 1;
            let encoder_fits = patch.as_deref()
                == Some(&[d.embed_dim, d.in_chans, d.patch_size, d.patch_size][..])
                && pos.as_deref() == Some(&[1, tokens, d.embed_dim][..])
                && depth == d.depth;
            let decoder_fits = match &decoder {
                None => true,
                Some(s) => {
                    s[..] == [d.decoder_embed_dim, d.embed_dim] && decoder_depth == d.decoder_depth
                }
            };
            encoder_fits && decoder_fits
        })
        .collect())
}

/// The file formats [`export_file`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// `torch.save({'model': state_dict})`, as the official checkpoints: `models_mae.py` (or
    /// `models_vit.py` for the encoder) loads `checkpoint['model']` with `strict=True`.
    Pth,
    /// safetensors under the official names.
    Safetensors,
}

/// Loads `file` into an MAE of `preset` (strictly; an encoder-only file gets the fresh decoder)
/// and writes it to `out` in `format` under the official names and shapes, the encoder alone
/// when `encoder_only` (the released `mae_pretrain_vit_*` layout). Returns the tensors written.
pub fn export_file(
    preset: Preset,
    file: &TensorFile,
    format: ExportFormat,
    encoder_only: bool,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<usize, MaeError> {
    struct Export<'a>(
        &'a TensorFile,
        ExportFormat,
        bool,
        &'a Path,
        &'a BTreeMap<String, String>,
    );
    impl PresetVisitor for Export<'_> {
        type Output = Result<usize, MaeError>;
        fn visit<P: MaePreset>(self) -> Self::Output {
            let Export(file, format, encoder_only, out, metadata) = self;
            let mut model = Mae::<P, f32, Cpu>::new(&Cpu::seed_from_u64(0))?;
            load_mae_weights(&mut model, file)?;
            let mut tensors = crate::weights::named_tensors(&model)?;
            if encoder_only {
                tensors.retain(|t| !is_decoder_name(&t.name));
            }
            match format {
                ExportFormat::Pth => crate::pth::write_pth(out, &tensors, Some("model"))?,
                ExportFormat::Safetensors => {
                    let mut meta = metadata.clone();
                    meta.insert("preset".into(), P::PRESET.to_string());
                    crate::weights::write_safetensors(out, &tensors, &meta)?
                }
            }
            Ok(tensors.len())
        }
    }
    preset.visit(Export(file, format, encoder_only, out, metadata))
}
