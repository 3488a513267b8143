//! Model presets: one type per preset carrying its dimensions as const generics, the runtime
//! [`Preset`] enum naming them, and the serde [`MaeConfig`].
//!
//! PyTorch counterpart: the `mae_vit_base_patch16_dec512d8b`-style constructors at the end of
//! `models_mae.py` (and `CONFIGS` in the project's reference script).
//!
//! Adding a preset is one entry in the [`define_presets!`] invocation below: it creates the preset
//! type, its [`Preset`] variant, its name for `FromStr`/`Display`, and its arm in
//! [`Preset::visit`], through which the rest of the workspace dispatches from a runtime name to
//! the typed model.

use std::fmt;
use std::str::FromStr;

use dfdx::shapes::{Const, ConstDim};
use serde::{Deserialize, Serialize};

use crate::error::MaeError;

/// The dimensions of one transformer stack (encoder or decoder): width, MLP width, fused-qkv
/// width, number of heads and number of blocks.
pub trait TransformerDims: 'static + Send + Sync + Copy + Default + fmt::Debug {
    /// Token width `D`.
    type Model: ConstDim;
    /// MLP hidden width (`mlp_ratio · D`, mlp_ratio 4 in every preset).
    type Mlp: ConstDim;
    /// Width of the fused `qkv` projection (`3·D`).
    type Qkv: ConstDim;
    /// Token width as a number.
    const DIM: usize;
    /// Number of attention heads.
    const NUM_HEADS: usize;
    /// Number of blocks.
    const DEPTH: usize;
    /// Width of one head.
    const HEAD_DIM: usize = Self::DIM / Self::NUM_HEADS;
}

/// A transformer stack's dimensions as const generics: width `D`, MLP width `M`, qkv width `Q`,
/// `H` heads and `N` blocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dims<const D: usize, const M: usize, const Q: usize, const H: usize, const N: usize>;

impl<const D: usize, const M: usize, const Q: usize, const H: usize, const N: usize> TransformerDims
    for Dims<D, M, Q, H, N>
{
    type Model = Const<D>;
    type Mlp = Const<M>;
    type Qkv = Const<Q>;
    const DIM: usize = D;
    const NUM_HEADS: usize = H;
    const DEPTH: usize = N;
}

/// A model preset as a type: everything the typed model needs to know about its shapes.
pub trait MaePreset: 'static + Send + Sync + Copy + Default + fmt::Debug {
    /// The runtime name of this preset.
    const PRESET: Preset;
    /// Input image side in pixels (images are square).
    const IMG_SIZE: usize;
    /// Patch side in pixels.
    const PATCH_SIZE: usize;
    /// Input channels.
    const IN_CHANS: usize;
    /// Length of one flattened patch, `p·p·C`.
    type PatchDim: ConstDim;
    /// Number of tokens including cls, `L + 1`.
    type Tokens: ConstDim;
    /// Encoder dimensions.
    type Encoder: TransformerDims;
    /// Decoder dimensions.
    type Decoder: TransformerDims;

    /// Patches per side, `IMG_SIZE / PATCH_SIZE`.
    fn grid_size() -> usize {
        Self::IMG_SIZE / Self::PATCH_SIZE
    }
    /// Number of patches `L`.
    fn num_patches() -> usize {
        Self::grid_size() * Self::grid_size()
    }
    /// Length of one flattened patch, `p·p·C`.
    fn patch_dim() -> usize {
        Self::PATCH_SIZE * Self::PATCH_SIZE * Self::IN_CHANS
    }
    /// Number of values in one image, `C·H·W`.
    fn image_numel() -> usize {
        Self::IN_CHANS * Self::IMG_SIZE * Self::IMG_SIZE
    }
}

/// Something that runs generic code for the preset type behind a runtime [`Preset`]; see
/// [`Preset::visit`].
pub trait PresetVisitor {
    /// What the visit returns.
    type Output;
    /// Runs with `P` the preset type.
    fn visit<P: MaePreset>(self) -> Self::Output;
}

/// The numbers of a preset, for display and for metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresetDims {
    /// Image side.
    pub img_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Encoder width.
    pub embed_dim: usize,
    /// Encoder blocks.
    pub depth: usize,
    /// Encoder heads.
    pub num_heads: usize,
    /// Decoder width.
    pub decoder_embed_dim: usize,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Decoder heads.
    pub decoder_num_heads: usize,
}

macro_rules! define_presets {
    ($(
        $(#[$doc:meta])*
        $ty:ident = $name:literal: img $img:literal, chans $c:literal, patch $p:literal,
            encoder ($d:literal, $depth:literal, $heads:literal),
            decoder ($dd:literal, $ddepth:literal, $dheads:literal);
    )+) => {
        /// The preset types, one per [`Preset`] variant.
        pub mod presets {
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Debug, Clone, Copy, Default)]
                pub struct $ty;

                const _: () = assert!($img % $p == 0 && $d % $heads == 0 && $dd % $dheads == 0);

                impl MaePreset for $ty {
                    const PRESET: Preset = Preset::$ty;
                    const IMG_SIZE: usize = $img;
                    const PATCH_SIZE: usize = $p;
                    const IN_CHANS: usize = $c;
                    type PatchDim = Const<{ $p * $p * $c }>;
                    type Tokens = Const<{ ($img / $p) * ($img / $p) + 1 }>;
                    type Encoder = Dims<$d, { 4 * $d }, { 3 * $d }, $heads, $depth>;
                    type Decoder = Dims<$dd, { 4 * $dd }, { 3 * $dd }, $dheads, $ddepth>;
                }
            )+
        }

        /// The runtime name of a model preset. `FromStr`/`Display` use the names below.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Preset {
            $( $(#[$doc])* $ty, )+
        }

        impl Preset {
            /// Every preset, in definition order.
            pub const ALL: &'static [Preset] = &[$(Preset::$ty),+];

            /// The preset's name as written on the command line and in files.
            pub fn name(self) -> &'static str {
                match self { $(Preset::$ty => $name,)+ }
            }

            /// Runs `visitor` with the preset type behind this name.
            pub fn visit<V: PresetVisitor>(self, visitor: V) -> V::Output {
                match self { $(Preset::$ty => visitor.visit::<presets::$ty>(),)+ }
            }

            /// The preset's dimensions.
            pub fn dims(self) -> PresetDims {
                match self {
                    $(Preset::$ty => PresetDims {
                        img_size: $img, patch_size: $p, in_chans: $c,
                        embed_dim: $d, depth: $depth, num_heads: $heads,
                        decoder_embed_dim: $dd, decoder_depth: $ddepth, decoder_num_heads: $dheads,
                    },)+
                }
            }
        }
    };
}

define_presets! {
    /// Tiny model for parity fixtures: 32×32 RGB, patch 4, 48-d/2 blocks/4 heads, decoder 32-d/1/4.
    Parity = "parity": img 32, chans 3, patch 4, encoder (48, 2, 4), decoder (32, 1, 4);
    /// Fashion-MNIST sized: 28×28 grey, patch 4, 192-d/6/3, decoder 128-d/2/4.
    Tiny = "tiny": img 28, chans 1, patch 4, encoder (192, 6, 3), decoder (128, 2, 4);
    /// CIFAR sized: 32×32 RGB, patch 4, 192-d/12/3, decoder 128-d/4/4.
    Small32 = "small32": img 32, chans 3, patch 4, encoder (192, 12, 3), decoder (128, 4, 4);
    /// ViT-S/16 at 224 (timm's `vit_small_patch16_224`: 384-d, 12 blocks, 6 heads; 22M encoder
    /// parameters) with the paper's 512-d/8-block decoder: the size of most small-scale MAE
    /// studies, and the largest that pretrains at a useful pace on a CPU.
    VitS16 = "vit-s16": img 224, chans 3, patch 16, encoder (384, 12, 6), decoder (512, 8, 16);
    /// ViT-B/16 at 224 with the paper's 512-d/8-block decoder (86M encoder parameters).
    VitB16 = "vit-b16": img 224, chans 3, patch 16, encoder (768, 12, 12), decoder (512, 8, 16);
    /// ViT-L/16 at 224 with the paper's 512-d/8-block decoder (304M encoder parameters).
    VitL16 = "vit-l16": img 224, chans 3, patch 16, encoder (1024, 24, 16), decoder (512, 8, 16);
    /// ViT-L/16 at 224 with a 512-d decoder of ONE block: the paper's lightest decoder (Table 1a:
    /// 84.8% fine-tuned against 85.1% with 8 blocks) and its fastest ViT-L entry (Table 2: 3.7×
    /// wall-clock against the encoder with mask tokens, 2.8× with the 8-block decoder).
    VitL16Dec1 = "vit-l16-dec1": img 224, chans 3, patch 16, encoder (1024, 24, 16), decoder (512, 1, 16);
    /// ViT-H/14 at 224 with the paper's 512-d/8-block decoder (632M encoder parameters).
    VitH14 = "vit-h14": img 224, chans 3, patch 14, encoder (1280, 32, 16), decoder (512, 8, 16);
    /// ViT-H/14 at 448, the paper's highest-resolution fine-tuning (87.8% on ImageNet-1K): the
    /// `vit-h14` encoder with its position embedding interpolated from 16×16 to 32×32.
    VitH14At448 = "vit-h14-448": img 448, chans 3, patch 14, encoder (1280, 32, 16), decoder (512, 8, 16);
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Preset {
    /// The preset a model name of the official scripts or timm stands for: `models_mae.py`'s
    /// `mae_vit_base_patch16` (also with `_dec512d8b`), `models_vit.py`'s / timm's
    /// `vit_base_patch16` (also with `_224`), and the same for small, large and huge.
    pub fn from_official_name(name: &str) -> Option<Preset> {
        let name = name.strip_prefix("mae_").unwrap_or(name);
        let name = name.strip_suffix("_dec512d8b").unwrap_or(name);
        let name = name.strip_suffix("_224").unwrap_or(name);
        match name {
            "vit_small_patch16" => Some(Preset::VitS16),
            "vit_base_patch16" => Some(Preset::VitB16),
            "vit_large_patch16" => Some(Preset::VitL16),
            "vit_huge_patch14" => Some(Preset::VitH14),
            _ => None,
        }
    }
}

impl FromStr for Preset {
    type Err = MaeError;
    /// A preset's name, or an official model name ([`Preset::from_official_name`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .iter()
            .copied()
            .find(|p| p.name() == s)
            .or_else(|| Preset::from_official_name(s))
            .ok_or_else(|| MaeError::UnknownPreset {
                name: s.to_string(),
                known: Preset::ALL
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl Serialize for Preset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Preset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The configuration of one MAE model: which preset, at which image size, with which mask ratio
/// and loss. Serialized into checkpoints and run directories.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaeConfig {
    /// The model preset.
    pub preset: Preset,
    /// Image side in pixels; must be the preset's (position embeddings are fixed per preset).
    pub image_size: usize,
    /// Fraction of patches removed, in `[0, 1)`; 0.75 in the paper.
    pub mask_ratio: f64,
    /// Reconstruct per-patch normalized pixels (the paper's default for its best results).
    pub norm_pix_loss: bool,
}

impl MaeConfig {
    /// The preset at its native image size, mask ratio 0.75, raw-pixel loss (the defaults of
    /// `models_mae.py`).
    pub fn new(preset: Preset) -> Self {
        MaeConfig {
            preset,
            image_size: preset.dims().img_size,
            mask_ratio: crate::masking::DEFAULT_MASK_RATIO,
            norm_pix_loss: false,
        }
    }

    /// Checks the mask ratio (at least one visible and one masked patch) and image size.
    pub fn validate(&self) -> Result<(), MaeError> {
        let d = self.preset.dims();
        let side = d.img_size / d.patch_size.max(1);
        crate::masking::check_len_keep(side * side, self.mask_ratio)?;
        let native = self.preset.dims().img_size;
        if self.image_size != native {
            return Err(MaeError::ImageSize {
                preset: self.preset,
                expected: native,
                got: self.image_size,
            });
        }
        Ok(())
    }
}

/// A mask ratio must be finite and in `[0, 1)`.
pub fn check_mask_ratio(mask_ratio: f64) -> Result<(), MaeError> {
    if mask_ratio.is_finite() && (0.0..1.0).contains(&mask_ratio) {
        Ok(())
    } else {
        Err(MaeError::MaskRatio(mask_ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &p in Preset::ALL {
            assert_eq!(p.to_string().parse::<Preset>().ok(), Some(p));
        }
        assert_eq!("vit-b16".parse::<Preset>().ok(), Some(Preset::VitB16));
        // the official scripts' and timm's model names
        for (official, preset) in [
            ("mae_vit_base_patch16", Preset::VitB16),
            ("mae_vit_large_patch16_dec512d8b", Preset::VitL16),
            ("mae_vit_huge_patch14", Preset::VitH14),
            ("vit_small_patch16_224", Preset::VitS16),
            ("vit_base_patch16", Preset::VitB16),
        ] {
            assert_eq!(official.parse::<Preset>().ok(), Some(preset), "{official}");
        }
        assert!("vit_base_patch32".parse::<Preset>().is_err());
        let err = "vit-x".parse::<Preset>().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("vit-x") && e.contains("small32")));
    }

    struct NumPatches;
    impl PresetVisitor for NumPatches {
        type Output = (usize, usize, usize);
        fn visit<P: MaePreset>(self) -> Self::Output {
            (
                P::num_patches(),
                P::patch_dim(),
                <P::Encoder as TransformerDims>::HEAD_DIM,
            )
        }
    }

    #[test]
    fn preset_types_carry_the_recipe_dimensions() {
        assert_eq!(Preset::VitB16.visit(NumPatches), (196, 768, 64));
        assert_eq!(Preset::VitS16.visit(NumPatches), (196, 768, 64));
        let s = Preset::VitS16.dims();
        assert_eq!((s.embed_dim, s.depth, s.num_heads), (384, 12, 6));
        assert_eq!(Preset::VitH14.visit(NumPatches), (256, 588, 80));
        assert_eq!(Preset::VitH14At448.visit(NumPatches), (1024, 588, 80));
        assert_eq!(Preset::Tiny.visit(NumPatches), (49, 16, 64));
        assert_eq!(Preset::Parity.visit(NumPatches), (64, 48, 12));
        let d = Preset::VitL16.dims();
        assert_eq!((d.embed_dim, d.depth, d.num_heads), (1024, 24, 16));
        let d1 = Preset::VitL16Dec1.dims();
        assert_eq!(
            (
                d1.embed_dim,
                d1.depth,
                d1.decoder_embed_dim,
                d1.decoder_depth
            ),
            (1024, 24, 512, 1)
        );
    }

    #[test]
    fn config_validation() {
        let mut c = MaeConfig::new(Preset::Tiny);
        assert!(c.validate().is_ok());
        assert_eq!(c.image_size, 28);
        for bad in [1.0, -0.1, f64::NAN, 1.5] {
            c.mask_ratio = bad;
            assert!(matches!(c.validate(), Err(MaeError::MaskRatio(_))), "{bad}");
        }
        // no masked patch (nothing to reconstruct), no visible one (nothing to encode)
        for bad in [0.0, 0.99] {
            c.mask_ratio = bad;
            assert!(
                matches!(c.validate(), Err(MaeError::MaskRatioLeaves { .. })),
                "{bad}"
            );
        }
        c.mask_ratio = 0.5;
        assert!(c.validate().is_ok());
        c.image_size = 32;
        assert!(matches!(c.validate(), Err(MaeError::ImageSize { .. })));
        let json = serde_json::to_string(&MaeConfig::new(Preset::VitB16)).unwrap_or_default();
        assert!(json.contains("\"vit-b16\""), "{json}");
        let back: Result<MaeConfig, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(MaeConfig::new(Preset::VitB16)));
    }
}
