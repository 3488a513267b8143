//! # mae-core
//!
//! Masked Autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners",
//! arXiv 2111.06377) as typed [dfdx](https://docs.rs/dfdx) models: the ViT encoder, the MAE
//! decoder, random masking, the (optionally per-patch normalized) reconstruction loss, model
//! presets, and weights I/O in safetensors under the official `models_mae.py` names.
//!
//! It matches the official PyTorch code numerically: the parity tests compare the loss,
//! prediction, latent, masking and every parameter gradient against fixtures made by the
//! reference implementation.
//!
//! ```
//! use dfdx::prelude::*;
//! use mae_core::{presets::Parity, Mae, MaePreset, Masking};
//!
//! let dev: Cpu = Cpu::seed_from_u64(0);
//! let model = Mae::<Parity, f32, Cpu>::new(&dev).unwrap();
//! let imgs = vec![0.1f32; 2 * Parity::image_numel()]; // NCHW
//! let noise: Vec<f32> = (0..2 * Parity::num_patches()).map(|i| (i * 37 % 101) as f32).collect();
//! let masking = Masking::from_noise(&noise, 2, Parity::num_patches(), 0.75).unwrap();
//! let out = model.forward(&imgs, &masking, false, NoneTape).unwrap();
//! assert_eq!(out.latent.shape().1, 1 + 16);
//! assert!(out.loss.array().is_finite());
//! ```
//!
//! Layout: [`preset`] (preset types and [`MaeConfig`]), [`layers`] (Linear, LayerNorm, attention,
//! pre-norm block), [`model`] (encoder, decoder, loss), [`masking`], [`patch`]
//! (patchify/unpatchify), [`pos_embed`], [`weights`] (safetensors I/O), [`device`] (our kernels).

pub mod device;
pub mod error;
pub mod layers;
pub mod masking;
pub mod model;
pub mod patch;
pub mod pos_embed;
pub mod preset;
pub mod weights;

pub use device::MaeDevice;
pub use error::MaeError;
pub use masking::Masking;
pub use model::{tape_from, Decoder, Encoder, Mae, MaeOutput};
pub use patch::PatchGeometry;
pub use preset::{presets, MaeConfig, MaePreset, Preset, PresetVisitor, TransformerDims};
pub use weights::{NamedTensor, TensorFile};

/// dfdx, re-exported so that users name the same version.
pub use dfdx;
