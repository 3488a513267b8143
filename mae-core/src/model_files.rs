//! Whole model files by preset name: a fresh initialization, a strict load check, what a file
//! holds ([`weights_kind`]), and an import of official / timm weights (full, or encoder-only with a fresh decoder).
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
use crate::vit::{Classifier, ClassifierLayout};
use crate::weights::{
    hugging_face_to_official, is_decoder_name, is_hugging_face, official_to_hugging_face,
    safetensors_bytes, TensorFile, CHECKSUM_KEY,
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

/// What a weights file holds, as [`weights_kind`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsKind {
    /// A whole MAE: trainable parameters of the encoder and of the decoder.
    Full {
        /// Encoder parameters.
        encoder: usize,
        /// Decoder parameters.
        decoder: usize,
    },
    /// An encoder without its decoder (the released `mae_pretrain_vit_*`).
    EncoderOnly {
        /// Encoder parameters.
        encoder: usize,
    },
    /// A classifier with its head (`mae_finetuned_vit_*`, timm's ViTs, `mae finetune` output).
    Classifier {
        /// Classes and pooling.
        layout: ClassifierLayout,
        /// All its parameters, head included.
        params: usize,
    },
}

impl WeightsKind {
    /// All the trainable parameters loaded.
    pub fn params(&self) -> usize {
        match *self {
            WeightsKind::Full { encoder, decoder } => encoder + decoder,
            WeightsKind::EncoderOnly { encoder } => encoder,
            WeightsKind::Classifier { params, .. } => params,
        }
    }
}

/// Loads `file` strictly as preset `preset`, as whichever of [`WeightsKind`] it is, and says
/// which with the parameter counts.
pub fn weights_kind(preset: Preset, file: &TensorFile) -> Result<WeightsKind, MaeError> {
    struct Kind<'a>(&'a TensorFile);
    impl PresetVisitor for Kind<'_> {
        type Output = Result<WeightsKind, MaeError>;
        fn visit<P: MaePreset>(self) -> Self::Output {
            if let Some(layout) = ClassifierLayout::of_file(self.0)? {
                let model = Classifier::<P, Cpu>::from_file(&Cpu::default(), self.0, layout)?;
                let params = model.named_tensors()?.iter().map(|t| t.data.len()).sum();
                return Ok(WeightsKind::Classifier { layout, params });
            }
            let mut model = Mae::<P, f32, Cpu>::new(&Cpu::default())?;
            let encoder = model.encoder.num_trainable_params();
            load_mae_weights(&mut model, self.0)?;
            let has_decoder = self.0.names()?.iter().any(|n| is_decoder_name(n));
            Ok(if has_decoder {
                WeightsKind::Full {
                    encoder,
                    decoder: model.decoder.num_trainable_params(),
                }
            } else {
                WeightsKind::EncoderOnly { encoder }
            })
        }
    }
    preset.visit(Kind(file))
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

/// Loads the fine-tuned classifier `file` (the released `mae_finetuned_vit_*.pth`, a timm ViT,
/// one of ours) strictly as preset `preset` with the head `layout` says, and writes it to `out`
/// as our classifier file with `metadata`.
pub fn import_classifier_file(
    preset: Preset,
    file: &TensorFile,
    layout: ClassifierLayout,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<(), MaeError> {
    struct Import<'a>(
        &'a TensorFile,
        ClassifierLayout,
        &'a Path,
        &'a BTreeMap<String, String>,
    );
    impl PresetVisitor for Import<'_> {
        type Output = Result<(), MaeError>;
        fn visit<P: MaePreset>(self) -> Self::Output {
            Classifier::<P, Cpu>::from_file(&Cpu::default(), self.0, self.1)?
                .save_safetensors(self.2, self.3)
        }
    }
    preset.visit(Import(file, layout, out, metadata))
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
///
/// A folder is taken as a Hugging Face model folder: its `model.safetensors`, else its
/// `pytorch_model.bin`.
pub fn open_weights(path: &Path) -> Result<(TensorFile, &'static str), MaeError> {
    let chosen;
    let path = if path.is_dir() {
        chosen = ["model.safetensors", "pytorch_model.bin"]
            .iter()
            .map(|n| path.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| MaeError::Format {
                path: path.to_path_buf(),
                message: "a folder without model.safetensors or pytorch_model.bin".into(),
            })?;
        chosen.as_path()
    } else {
        path
    };
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
    /// A Hugging Face folder (`out` is the folder): `config.json` and `model.safetensors` that
    /// `ViTMAEForPreTraining.from_pretrained` loads, or, encoder only, `ViTMAEModel` /
    /// `ViTModel`.
    HuggingFace,
}

/// Loads `file` into an MAE of `preset` (strictly; an encoder-only file gets the fresh decoder)
/// and writes it to `out` in `format` under the official names and shapes, the encoder alone
/// when `encoder_only` (the released `mae_pretrain_vit_*` layout). A fine-tuned classifier
/// (`head.*`) is written whole, as `pth` (`mae_finetuned_vit_*`'s layout, which `models_vit.py`
/// loads strictly) or safetensors. Returns the tensors written.
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
            let tensors = match ClassifierLayout::of_file(file)? {
                Some(layout) => {
                    let refuse = |what: &str| {
                        Err(MaeError::Format {
                            path: file.path().to_path_buf(),
                            message: format!(
                                "a fine-tuned classifier ({} classes, {}): {what}",
                                layout.num_classes, layout.pooling
                            ),
                        })
                    };
                    if encoder_only {
                        return refuse("--encoder-only is for MAE checkpoints");
                    }
                    if format == ExportFormat::HuggingFace {
                        return refuse(
                            "Hugging Face export is for MAE checkpoints (export the classifier as \
                             pth or safetensors)",
                        );
                    }
                    Classifier::<P, Cpu>::from_file(&Cpu::default(), file, layout)?
                        .named_tensors()?
                }
                None => {
                    let mut model = Mae::<P, f32, Cpu>::new(&Cpu::seed_from_u64(0))?;
                    load_mae_weights(&mut model, file)?;
                    let mut tensors = crate::weights::named_tensors(&model)?;
                    if encoder_only {
                        tensors.retain(|t| !is_decoder_name(&t.name));
                    }
                    tensors
                }
            };
            match format {
                ExportFormat::Pth => crate::pth::write_pth(out, &tensors, Some("model"))?,
                ExportFormat::HuggingFace => {
                    let hf = official_to_hugging_face(out, &tensors, !encoder_only)?;
                    std::fs::create_dir_all(out).map_err(|e| MaeError::io(out, e))?;
                    let config = hugging_face_config(P::PRESET, encoder_only);
                    let text =
                        serde_json::to_string_pretty(&config).map_err(|e| MaeError::Format {
                            path: out.to_path_buf(),
                            message: e.to_string(),
                        })?;
                    crate::weights::write_atomic(&out.join("config.json"), text.as_bytes())?;
                    let mut meta = metadata.clone();
                    meta.insert("format".into(), "pt".into());
                    crate::weights::write_safetensors(&out.join("model.safetensors"), &hf, &meta)?;
                }
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

/// The Hugging Face `config.json` of a preset: `ViTMAEConfig` (`vit_mae`), with the official
/// LayerNorm epsilon (1e-6; Hugging Face's default is 1e-12), GELU, no dropout, the paper's mask
/// ratio; for an encoder alone the `ViTModel` fields (`vit`), which `ViTMAEModel` reads too.
pub fn hugging_face_config(preset: Preset, encoder_only: bool) -> serde_json::Value {
    let d = preset.dims();
    let mut c = serde_json::json!({
        "architectures": [if encoder_only { "ViTModel" } else { "ViTMAEForPreTraining" }],
        "model_type": if encoder_only { "vit" } else { "vit_mae" },
        "hidden_size": d.embed_dim,
        "num_hidden_layers": d.depth,
        "num_attention_heads": d.num_heads,
        "intermediate_size": 4 * d.embed_dim,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": d.img_size,
        "patch_size": d.patch_size,
        "num_channels": d.in_chans,
        "qkv_bias": true,
        "torch_dtype": "float32",
        "mae_rs_preset": preset.name(),
    });
    if !encoder_only {
        let decoder = serde_json::json!({
            "decoder_hidden_size": d.decoder_embed_dim,
            "decoder_num_hidden_layers": d.decoder_depth,
            "decoder_num_attention_heads": d.decoder_num_heads,
            "decoder_intermediate_size": 4 * d.decoder_embed_dim,
            "mask_ratio": crate::masking::DEFAULT_MASK_RATIO,
            "norm_pix_loss": false,
        });
        if let (Some(c), serde_json::Value::Object(extra)) = (c.as_object_mut(), decoder) {
            c.extend(extra);
        }
    }
    c
}
