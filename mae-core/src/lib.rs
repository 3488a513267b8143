#![doc = include_str!("../README.md")]
//!
//! Layout: [`preset`] (preset types and [`MaeConfig`]), [`layers`] (Linear, LayerNorm, attention,
//! pre-norm block), [`model`] (encoder, decoder, loss), [`masking`], [`patch`]
//! (patchify/unpatchify), [`pos_embed`], [`vit`] (the fine-tuning classifier), [`weights`] (safetensors I/O), [`device`] (the device trait our kernels plug into), [`kernels`] (our fused CPU kernels).

pub mod device;
pub mod dtype;
pub mod error;
pub mod gelu;
pub mod host;
pub mod kernels;
pub mod layers;
pub mod masking;
pub mod model;
pub mod model_files;
pub mod patch;
pub mod pos_embed;
pub mod preset;
pub mod pth;
pub mod vit;
pub mod weights;

pub use device::{AmpF16, MaeDevice, MaeDtype};
pub use error::MaeError;
pub use masking::Masking;
pub use model::{tape_from, Decoder, Encoder, Mae, MaeOutput, ScaledLoss};
pub use patch::PatchGeometry;
pub use preset::{presets, MaeConfig, MaePreset, Preset, PresetVisitor, TransformerDims};
pub use vit::{
    soft_target_cross_entropy, soft_target_cross_entropy_scaled, Classifier, ClassifierLayout,
    Head, Pooling, PretrainedLoad, VisionTransformer,
};
pub use weights::{HostTensor, IndexTensor, NamedTensor, TensorFile};

/// dfdx, re-exported so that users name the same version.
pub use dfdx;
