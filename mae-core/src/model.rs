//! The masked autoencoder: ViT encoder over the visible patches, light decoder over all tokens,
//! and the masked reconstruction loss.
//!
//! PyTorch counterpart: `MaskedAutoencoderViT` in `models_mae.py` (`forward_encoder`,
//! `forward_decoder`, `forward_loss`, `forward`). Parameter paths are its state_dict names:
//! [`Mae`] visits its encoder and decoder without a prefix, so the walk yields `cls_token`,
//! `blocks.0.attn.qkv.weight`, …, `decoder_pred.bias`.

use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::prelude::*;
use rand_distr::{Distribution, StandardNormal, Uniform};

use crate::device::{MaeDevice, MaeDtype};
use crate::error::MaeError;
use crate::host::{dev_err, host_tensor};
use crate::layers::{xavier_uniform, Act, Blocks, DrawnInF32, LayerNorm, Linear};
use crate::masking::Masking;
use crate::patch::{normalize_patches, PatchGeometry};
use crate::pos_embed::pos_embed_2d_sincos;
use crate::preset::{MaePreset, TransformerDims};

/// Encoder width of preset `P`.
pub type EncDim<P> = <<P as MaePreset>::Encoder as TransformerDims>::Model;
/// Decoder width of preset `P`.
pub type DecDim<P> = <<P as MaePreset>::Decoder as TransformerDims>::Model;

/// `N(0, std²)` samples, for the cls and mask tokens.
#[derive(Debug, Clone, Copy)]
struct Normal(f32);
impl Distribution<f32> for Normal {
    fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> f32 {
        let z: f32 = StandardNormal.sample(rng);
        z * self.0
    }
}

pub(crate) fn token_init<M: ConstDim, E: MaeDtype, D: Device<E>>(
    t: &mut Tensor<(M,), E, D>,
) -> Result<(), D::Err> {
    t.try_fill_with_distr(DrawnInF32(Normal(0.02)))
}

/// Fills a `[1 + L, D]` table with the fixed sin-cos embedding (`L` a square).
pub(crate) fn sincos_init<N: ConstDim, M: ConstDim, E: MaeDtype, D: Device<E>>(
    t: &mut Tensor<(N, M), E, D>,
) -> Result<(), D::Err> {
    let (n, m) = *t.shape();
    let grid = ((n.size() - 1) as f64).sqrt().round() as usize;
    let table = pos_embed_2d_sincos(m.size(), grid);
    t.copy_from(&E::from_f32_slice(&table));
    Ok(())
}

/// Conv2d's default bias init, `U(±1/sqrt(fan_in))` with `fan_in = C·p·p` (the patch vector length `I`).
fn patch_bias_init<I: ConstDim, O: ConstDim, E: MaeDtype, D: Device<E>>(
    t: &mut Tensor<(O,), E, D>,
) -> Result<(), D::Err> {
    let bound = 1.0 / (I::default().size() as f32).sqrt();
    t.try_fill_with_distr(DrawnInF32(Uniform::new(-bound, bound)))
}

/// Patch embedding: the stride-`p` convolution as a Linear over `(c, p, q)`-ordered patch vectors.
/// Its weight is stored `[D, C·p·p]`, the conv's `[D, C, p, p]` flattened.
#[derive(Debug, Clone)]
pub struct PatchEmbed<I: ConstDim, O: ConstDim, E: Dtype, D: Storage<E>> {
    /// The projection (`patch_embed.proj`).
    pub proj: Linear<I, O, E, D>,
}

impl<I: ConstDim, O: ConstDim, E: MaeDtype, D: Device<E>> TensorCollection<E, D>
    for PatchEmbed<I, O, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = PatchEmbed<I, O, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "proj.weight",
                    |s| &s.proj.weight,
                    |s| &mut s.proj.weight,
                    TensorOptions::reset_with(xavier_uniform),
                ),
                Self::tensor(
                    "proj.bias",
                    |s| &s.proj.bias,
                    |s| &mut s.proj.bias,
                    TensorOptions::reset_with(patch_bias_init::<I, O, E, D>),
                ),
            ),
            |(weight, bias)| PatchEmbed {
                proj: Linear { weight, bias },
            },
        )
    }
}

/// The ViT encoder of preset `P`: patch embedding, fixed position embedding, cls token, blocks,
/// final norm.
#[derive(Debug, Clone)]
pub struct Encoder<P: MaePreset, E: Dtype, D: Storage<E>> {
    /// `patch_embed.proj`.
    pub patch_embed: PatchEmbed<P::PatchDim, EncDim<P>, E, D>,
    /// `cls_token`, stored `[D]` (official `[1, 1, D]`).
    pub cls_token: Tensor<(EncDim<P>,), E, D>,
    /// `pos_embed`, fixed, stored `[1 + L, D]` (official `[1, 1 + L, D]`).
    pub pos_embed: Tensor<(P::Tokens, EncDim<P>), E, D>,
    /// `blocks.{i}`.
    pub blocks: Blocks<P::Encoder, E, D>,
    /// `norm`.
    pub norm: LayerNorm<EncDim<P>, E, D>,
}

impl<P: MaePreset, E: MaeDtype, D: Device<E>> TensorCollection<E, D> for Encoder<P, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = Encoder<P, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("patch_embed", |s| &s.patch_embed, |s| &mut s.patch_embed),
                Self::tensor(
                    "cls_token",
                    |s| &s.cls_token,
                    |s| &mut s.cls_token,
                    TensorOptions::reset_with(token_init),
                ),
                Self::tensor(
                    "pos_embed",
                    |s| &s.pos_embed,
                    |s| &mut s.pos_embed,
                    TensorOptions::detached(sincos_init),
                ),
                Self::module("blocks", |s| &s.blocks, |s| &mut s.blocks),
                Self::module("norm", |s| &s.norm, |s| &mut s.norm),
            ),
            |(patch_embed, cls_token, pos_embed, blocks, norm)| Encoder {
                patch_embed,
                cls_token,
                pos_embed,
                blocks,
                norm,
            },
        )
    }
}

/// The MAE decoder of preset `P`.
#[derive(Debug, Clone)]
pub struct Decoder<P: MaePreset, E: Dtype, D: Storage<E>> {
    /// `decoder_embed`: encoder width → decoder width.
    pub decoder_embed: Linear<EncDim<P>, DecDim<P>, E, D>,
    /// `mask_token`, stored `[Dd]` (official `[1, 1, Dd]`).
    pub mask_token: Tensor<(DecDim<P>,), E, D>,
    /// `decoder_pos_embed`, fixed, stored `[1 + L, Dd]`.
    pub decoder_pos_embed: Tensor<(P::Tokens, DecDim<P>), E, D>,
    /// `decoder_blocks.{i}`.
    pub decoder_blocks: Blocks<P::Decoder, E, D>,
    /// `decoder_norm`.
    pub decoder_norm: LayerNorm<DecDim<P>, E, D>,
    /// `decoder_pred`: decoder width → `p·p·C` pixels.
    pub decoder_pred: Linear<DecDim<P>, P::PatchDim, E, D>,
}

impl<P: MaePreset, E: MaeDtype, D: Device<E>> TensorCollection<E, D> for Decoder<P, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = Decoder<P, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module(
                    "decoder_embed",
                    |s| &s.decoder_embed,
                    |s| &mut s.decoder_embed,
                ),
                Self::tensor(
                    "mask_token",
                    |s| &s.mask_token,
                    |s| &mut s.mask_token,
                    TensorOptions::reset_with(token_init),
                ),
                Self::tensor(
                    "decoder_pos_embed",
                    |s| &s.decoder_pos_embed,
                    |s| &mut s.decoder_pos_embed,
                    TensorOptions::detached(sincos_init),
                ),
                Self::module(
                    "decoder_blocks",
                    |s| &s.decoder_blocks,
                    |s| &mut s.decoder_blocks,
                ),
                Self::module("decoder_norm", |s| &s.decoder_norm, |s| &mut s.decoder_norm),
                Self::module("decoder_pred", |s| &s.decoder_pred, |s| &mut s.decoder_pred),
            ),
            |(
                decoder_embed,
                mask_token,
                decoder_pos_embed,
                decoder_blocks,
                decoder_norm,
                decoder_pred,
            )| {
                Decoder {
                    decoder_embed,
                    mask_token,
                    decoder_pos_embed,
                    decoder_blocks,
                    decoder_norm,
                    decoder_pred,
                }
            },
        )
    }
}

/// The whole masked autoencoder of preset `P`.
///
/// ```
/// use dfdx::prelude::*;
/// use mae_core::{presets::Parity, Mae, Masking, MaePreset};
///
/// let dev: Cpu = Cpu::seed_from_u64(0);
/// let model = Mae::<Parity, f32, Cpu>::new(&dev).unwrap();
/// let imgs = vec![0.5f32; 2 * Parity::image_numel()];
/// let masking = Masking::random(&mut rand::thread_rng(), 2, Parity::num_patches(), 0.75).unwrap();
/// // forward with a gradient tape, then backward
/// let grads = model.alloc_grads();
/// let out = model.forward(&imgs, &masking, true, mae_core::tape_from(&dev, grads)).unwrap();
/// let grads = out.loss.backward();
/// assert_eq!(grads.get(&model.encoder.cls_token).shape().0.size(), 48);
/// ```
#[derive(Debug, Clone)]
pub struct Mae<P: MaePreset, E: Dtype, D: Storage<E>> {
    /// The ViT encoder (the part kept after pretraining).
    pub encoder: Encoder<P, E, D>,
    /// The decoder.
    pub decoder: Decoder<P, E, D>,
}

impl<P: MaePreset, E: MaeDtype, D: Device<E>> TensorCollection<E, D> for Mae<P, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = Mae<P, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("", |s| &s.encoder, |s| &mut s.encoder),
                Self::module("", |s| &s.decoder, |s| &mut s.decoder),
            ),
            |(encoder, decoder)| Mae { encoder, decoder },
        )
    }
}

/// What [`Mae::forward`] returns: the loss (carrying the tape, if any) and the detached
/// prediction, latent and masking.
#[derive(Debug)]
pub struct MaeOutput<P: MaePreset, D: Device<E>, T, E: Dtype = f32> {
    /// Mean squared error over the masked patches.
    pub loss: Tensor<Rank0, E, D, T>,
    /// `[N, L, p·p·C]` reconstruction of every patch (visible ones too).
    pub pred: Tensor<(usize, usize, P::PatchDim), E, D>,
    /// `[N, 1 + len_keep, D]` encoder output after the final norm, cls first.
    pub latent: Tensor<(usize, usize, EncDim<P>), E, D>,
    /// The masking used: `mask` (1 = removed) and `ids_restore` among it.
    pub masking: Masking,
}

/// An [`OwnedTape`] that records into `grads` (for instance `model.alloc_grads()`, which keeps
/// only the parameters' gradients).
pub fn tape_from<E: Dtype, D: Device<E>>(dev: &D, grads: Gradients<E, D>) -> OwnedTape<E, D> {
    let anchor: Tensor<Rank0, E, D> = dev.zeros();
    anchor.traced(grads).split_tape().1
}

fn index_tensor<E: MaeDtype, D: MaeDevice<E>>(
    dev: &D,
    ids: &[usize],
    rows: usize,
    cols: usize,
) -> Result<Tensor<(usize, usize), usize, D>, MaeError> {
    host_tensor(dev, ids, (rows, cols))
}

/// The patch projection of NCHW images: `[N, L, D]` tokens before position embeddings.
pub(crate) fn project_patches<P: MaePreset, E: MaeDtype, D: MaeDevice<E>, T: Tape<E, D>>(
    patch_embed: &PatchEmbed<P::PatchDim, EncDim<P>, E, D>,
    imgs: &[f32],
    tape: T,
) -> Result<Act<EncDim<P>, D, T, E>, MaeError> {
    let geometry = PatchGeometry::of::<P>();
    let batch = geometry.batch_of(imgs)?;
    let l = geometry.num_patches();
    let dev = patch_embed.proj.bias.device();
    let patches = host_tensor(
        dev,
        &E::from_f32_slice(&geometry.patch_embed_input(imgs)?),
        (batch, l, P::PatchDim::default()),
    )?
    .put_tape(tape);
    patch_embed.proj.forward(patches)
}

/// Prepends the cls token (`cls_token + pos_embed[0]`, given as `cls`) to `[N, L, D]` tokens.
pub(crate) fn prepend_cls<M: ConstDim, E: MaeDtype, D: MaeDevice<E>, T: Tape<E, D>>(
    cls: Tensor<(M,), E, D, T>,
    x: Act<M, D, T, E>,
) -> Result<Act<M, D, T, E>, MaeError> {
    let (batch, _, m) = *x.shape();
    let cls = cls
        .try_broadcast_like(&(batch, 1usize, m))
        .map_err(dev_err)?;
    (cls, x).try_concat_along(Axis::<1>).map_err(dev_err)
}

impl<P: MaePreset, E: MaeDtype, D: MaeDevice<E>> Encoder<P, E, D> {
    /// Patch embedding plus (fixed) position embedding of NCHW images: `[N, L, D]`. With
    /// `keep` (`[N, L]`, 1 visible / 0 removed), removed patches become a zero token (plus their
    /// position embedding).
    fn embed_patches<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        keep: Option<&[f32]>,
        tape: T,
    ) -> Result<Act<EncDim<P>, D, T, E>, MaeError> {
        let mut x = project_patches::<P, E, D, T>(&self.patch_embed, imgs, tape)?;
        let shape = *x.shape();
        if let Some(keep) = keep {
            let keep = host_tensor(x.device(), &E::from_f32_slice(keep), (shape.0, shape.1))?
                .try_broadcast_like::<_, Axis<2>>(&shape)
                .map_err(dev_err)?;
            x = x.try_mul(keep).map_err(dev_err)?;
        }
        let pos = self
            .pos_embed
            .clone()
            .try_slice((1.., ..))
            .and_then(|p| p.try_broadcast_like::<_, Axis<0>>(&shape))
            .map_err(dev_err)?;
        x.try_add(pos).map_err(dev_err)
    }

    /// Prepends `cls_token + pos_embed[0]`, runs the blocks and the final norm.
    fn encode_tokens<T: Tape<E, D>>(
        &self,
        x: Act<EncDim<P>, D, T, E>,
    ) -> Result<Act<EncDim<P>, D, T, E>, MaeError> {
        let m = x.shape().2;
        let cls_pos = self
            .pos_embed
            .clone()
            .try_slice((0..1, ..))
            .and_then(|p| p.try_reshape_like(&(m,)))
            .map_err(dev_err)?;
        let cls = self
            .cls_token
            .retaped::<T>()
            .try_add(cls_pos)
            .map_err(dev_err)?;
        let x = prepend_cls(cls, x)?;
        let x = self.blocks.forward(x)?;
        self.norm.forward(x)
    }

    /// `forward_encoder`: embeds the patches, keeps the visible ones, encodes them.
    /// Returns the latent `[N, 1 + len_keep, D]`.
    pub fn forward_masked<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        masking: &Masking,
        tape: T,
    ) -> Result<Act<EncDim<P>, D, T, E>, MaeError> {
        let x = self.embed_patches(imgs, None, tape)?;
        let (batch, l, _) = *x.shape();
        check_masking(masking, batch, l)?;
        let ids_keep = index_tensor(x.device(), &masking.ids_keep, batch, masking.len_keep)?;
        let x = x.try_gather(ids_keep).map_err(dev_err)?;
        self.encode_tokens(x)
    }

    /// The encoder over every patch, no masking: `[N, 1 + L, D]` tokens after the final norm
    /// (cls first), for fine-tuning, linear probing and feature extraction.
    pub fn forward_features<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        tape: T,
    ) -> Result<Act<EncDim<P>, D, T, E>, MaeError> {
        let x = self.embed_patches(imgs, None, tape)?;
        self.encode_tokens(x)
    }

    /// The paper's ablation "encoder w/ [M]" (Table 1c): every patch goes through the encoder,
    /// a removed one as a mask token at its position. Returns `[N, 1 + L, D]`. The mask token
    /// here is zero (plus the position embedding) and not a trained parameter: the mode exists to
    /// measure what skipping the removed patches saves (`mae bench --mask-tokens-in-encoder`).
    pub fn forward_with_mask_tokens<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        masking: &Masking,
        tape: T,
    ) -> Result<Act<EncDim<P>, D, T, E>, MaeError> {
        let geometry = PatchGeometry::of::<P>();
        check_masking(masking, geometry.batch_of(imgs)?, geometry.num_patches())?;
        let keep: Vec<f32> = masking.mask.iter().map(|m| 1.0 - m).collect();
        let x = self.embed_patches(imgs, Some(&keep), tape)?;
        self.encode_tokens(x)
    }
}

fn check_masking(masking: &Masking, batch: usize, l: usize) -> Result<(), MaeError> {
    if masking.batch != batch || masking.num_patches != l {
        return Err(MaeError::InputShape {
            what: "masking",
            expected: format!("{batch} samples × {l} patches"),
            got: format!(
                "{} samples × {} patches",
                masking.batch, masking.num_patches
            ),
        });
    }
    Ok(())
}

impl<P: MaePreset, E: MaeDtype, D: MaeDevice<E>> Decoder<P, E, D> {
    /// `forward_decoder`: embeds the latent, appends mask tokens, un-shuffles, adds position
    /// embeddings, decodes, predicts pixels. Returns `[N, L, p·p·C]` (cls dropped).
    pub fn forward<T: Tape<E, D>>(
        &self,
        latent: Act<EncDim<P>, D, T, E>,
        masking: &Masking,
    ) -> Result<Act<P::PatchDim, D, T, E>, MaeError> {
        let x = self.decoder_embed.forward(latent)?;
        let (batch, tokens, md) = *x.shape();
        let l = masking.num_patches;
        let cls = x
            .with_empty_tape()
            .try_slice((.., 0..1, ..))
            .map_err(dev_err)?;
        let visible = x.try_slice((.., 1..tokens, ..)).map_err(dev_err)?;
        let mask_tokens = self
            .mask_token
            .retaped::<T>()
            .try_broadcast_like(&(batch, l + 1 - tokens, md))
            .map_err(dev_err)?;
        let ids_restore = index_tensor(self.mask_token.device(), &masking.ids_restore, batch, l)?;
        let x = (visible, mask_tokens)
            .try_concat_along(Axis::<1>)
            .and_then(|x| x.try_gather(ids_restore))
            .map_err(dev_err)?;
        let x = (cls, x).try_concat_along(Axis::<1>).map_err(dev_err)?;
        self.decode(x)
    }

    /// The decoder of the "encoder w/ [M]" ablation: the latent already holds every position
    /// (`[N, 1 + L, D]`, in order), so there is nothing to append or un-shuffle.
    pub fn forward_all_tokens<T: Tape<E, D>>(
        &self,
        latent: Act<EncDim<P>, D, T, E>,
    ) -> Result<Act<P::PatchDim, D, T, E>, MaeError> {
        let x = self.decoder_embed.forward(latent)?;
        self.decode(x)
    }

    /// Adds position embeddings to `[N, 1 + L, Dd]`, decodes, predicts pixels, drops cls.
    fn decode<T: Tape<E, D>>(
        &self,
        x: Act<DecDim<P>, D, T, E>,
    ) -> Result<Act<P::PatchDim, D, T, E>, MaeError> {
        let (batch, tokens, md) = *x.shape();
        let l = tokens - 1;
        let pos = self
            .decoder_pos_embed
            .clone()
            .try_reshape_like(&(l + 1, md))
            .and_then(|p| p.try_broadcast_like::<_, Axis<0>>(&(batch, l + 1, md)))
            .map_err(dev_err)?;
        let x = x.try_add(pos).map_err(dev_err)?;
        let x = self.decoder_blocks.forward(x)?;
        let x = self.decoder_norm.forward(x)?;
        let x = self.decoder_pred.forward(x)?;
        x.try_slice((.., 1..l + 1, ..)).map_err(dev_err)
    }
}

impl<P: MaePreset, E: MaeDtype, D: MaeDevice<E>> Mae<P, E, D> {
    /// A freshly initialized model, as `MaskedAutoencoderViT.initialize_weights` initializes it
    /// (xavier-uniform Linear weights and patch projection, zero biases, N(0, 0.02) tokens, unit
    /// norms, fixed sin-cos position embeddings). Random draws come from the device's RNG
    /// (`Cpu::seed_from_u64`).
    pub fn new(dev: &D) -> Result<Self, MaeError> {
        Self::try_build(dev).map_err(dev_err)
    }

    /// `forward`: encoder on the visible patches of NCHW `imgs`, decoder, and the loss on the
    /// removed patches. `tape` is [`NoneTape`] for inference or an [`OwnedTape`] (see
    /// [`tape_from`]) for training.
    pub fn forward<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        masking: &Masking,
        norm_pix_loss: bool,
        tape: T,
    ) -> Result<MaeOutput<P, D, T, E>, MaeError> {
        self.forward_impl(imgs, masking, norm_pix_loss, false, tape)
    }

    /// [`Mae::forward`] in the paper's "encoder w/ [M]" ablation (Table 1c): the encoder runs
    /// over every patch, removed ones as (untrained, zero) mask tokens; see
    /// [`Encoder::forward_with_mask_tokens`]. For timing the encoder's saving, not for training.
    pub fn forward_mask_tokens_in_encoder<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        masking: &Masking,
        norm_pix_loss: bool,
        tape: T,
    ) -> Result<MaeOutput<P, D, T, E>, MaeError> {
        self.forward_impl(imgs, masking, norm_pix_loss, true, tape)
    }

    fn forward_impl<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        masking: &Masking,
        norm_pix_loss: bool,
        mask_tokens_in_encoder: bool,
        tape: T,
    ) -> Result<MaeOutput<P, D, T, E>, MaeError> {
        let (latent, pred) = self.predict(imgs, masking, mask_tokens_in_encoder, tape)?;
        let pred_out = pred.retaped::<NoneTape>();
        let loss = self.loss(imgs, pred, masking, norm_pix_loss)?;
        Ok(MaeOutput {
            loss,
            pred: pred_out,
            latent,
            masking: masking.clone(),
        })
    }

    /// The encoder and decoder: the detached latent, and the prediction with the tape.
    #[allow(clippy::type_complexity)]
    fn predict<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        masking: &Masking,
        mask_tokens_in_encoder: bool,
        tape: T,
    ) -> Result<
        (
            Tensor<(usize, usize, EncDim<P>), E, D>,
            Act<P::PatchDim, D, T, E>,
        ),
        MaeError,
    > {
        if masking.num_masked() == 0 {
            return Err(MaeError::NothingMasked);
        }
        Ok(if mask_tokens_in_encoder {
            let latent = self.encoder.forward_with_mask_tokens(imgs, masking, tape)?;
            let out = latent.retaped::<NoneTape>();
            (out, self.decoder.forward_all_tokens(latent)?)
        } else {
            let latent = self.encoder.forward_masked(imgs, masking, tape)?;
            let out = latent.retaped::<NoneTape>();
            (out, self.decoder.forward(latent, masking)?)
        })
    }

    /// [`Mae::forward`] for mixed-precision training with loss scaling (PyTorch counterpart:
    /// `GradScaler.scale(loss).backward()` after a forward under `autocast`): the loss's value, and
    /// a scalar whose gradients are those of `grad_scale · loss`. See [`Mae::scaled_loss`].
    pub fn forward_scaled<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        masking: &Masking,
        norm_pix_loss: bool,
        grad_scale: f64,
        tape: T,
    ) -> Result<ScaledLoss<E, D, T>, MaeError> {
        let (_, pred) = self.predict(imgs, masking, false, tape)?;
        self.scaled_loss(imgs, pred, masking, norm_pix_loss, grad_scale)
    }

    /// `forward` with masking drawn from the given noise (`[N, L]`), as the reference's
    /// `forward(imgs, mask_ratio, noise)`.
    pub fn forward_with_noise<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        noise: &[f32],
        mask_ratio: f64,
        norm_pix_loss: bool,
        tape: T,
    ) -> Result<MaeOutput<P, D, T, E>, MaeError> {
        let geometry = PatchGeometry::of::<P>();
        let batch = geometry.batch_of(imgs)?;
        let masking = Masking::from_noise(noise, batch, geometry.num_patches(), mask_ratio)?;
        self.forward(imgs, &masking, norm_pix_loss, tape)
    }

    /// `forward_loss`: `((pred − target)²).mean(−1)` averaged over the removed patches, with the
    /// target `patchify(imgs)`, per-patch normalized when `norm_pix_loss`.
    pub fn loss<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        pred: Act<P::PatchDim, D, T, E>,
        masking: &Masking,
        norm_pix_loss: bool,
    ) -> Result<Tensor<Rank0, E, D, T>, MaeError> {
        let (per_patch, mask) = self.per_patch_loss(imgs, pred, masking, norm_pix_loss)?;
        per_patch
            .try_mul(mask)
            .and_then(|m| m.try_sum::<Rank0, _>())
            .and_then(|s| s.try_div(E::of_f64(masking.num_masked() as f32 as f64)))
            .map_err(dev_err)
    }

    /// [`Mae::loss`] in the form mixed precision needs, where every stored value is a half:
    /// `loss` is the mean over all `N·L` patches of the masked per-patch errors, times
    /// `N·L / masked` (no intermediate sum that could pass f16's 65504), and `backward` is
    /// `Σ per_patch · mask · grad_scale / masked`, whose gradient is that of `grad_scale · loss`
    /// with the scale folded into the per-patch weights, so that no gradient on the way (the
    /// first is `grad_scale / masked`, not `grad_scale`) leaves f16's range. Its own value may
    /// overflow to infinity; nothing reads it.
    pub fn scaled_loss<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        pred: Act<P::PatchDim, D, T, E>,
        masking: &Masking,
        norm_pix_loss: bool,
        grad_scale: f64,
    ) -> Result<ScaledLoss<E, D, T>, MaeError> {
        let (per_patch, mask) = self.per_patch_loss(imgs, pred, masking, norm_pix_loss)?;
        let (batch, l) = *mask.shape();
        let masked = masking.num_masked() as f64;
        let loss = per_patch
            .retaped::<NoneTape>()
            .try_mul(mask.clone())
            .and_then(|m| m.try_mean::<Rank0, _>())
            .and_then(|m| m.try_mul(E::of_f64((batch * l) as f64 / masked)))
            .map_err(dev_err)?;
        let weights = mask
            .try_mul(E::of_f64(grad_scale / masked))
            .map_err(dev_err)?;
        let backward = per_patch
            .try_mul(weights)
            .and_then(|m| m.try_sum::<Rank0, _>())
            .map_err(dev_err)?;
        Ok(ScaledLoss { loss, backward })
    }

    /// The per-patch mean squared error `[N, L]` (with the tape) and the mask (1 = removed).
    #[allow(clippy::type_complexity)]
    fn per_patch_loss<T: Tape<E, D>>(
        &self,
        imgs: &[f32],
        pred: Act<P::PatchDim, D, T, E>,
        masking: &Masking,
        norm_pix_loss: bool,
    ) -> Result<
        (
            Tensor<(usize, usize), E, D, T>,
            Tensor<(usize, usize), E, D>,
        ),
        MaeError,
    > {
        let geometry = PatchGeometry::of::<P>();
        let (batch, l, pd) = *pred.shape();
        let mut target = geometry.patchify(imgs)?;
        if norm_pix_loss {
            normalize_patches(&mut target, pd.size());
        }
        if masking.num_masked() == 0 {
            return Err(MaeError::NothingMasked);
        }
        let dev = pred.device().clone();
        let target = host_tensor(&dev, &E::from_f32_slice(&target), (batch, l, pd))?;
        let mask = host_tensor(&dev, &E::from_f32_slice(&masking.mask), (batch, l))?;
        let per_patch = pred
            .try_sub(target)
            .and_then(|d| d.try_square())
            .and_then(|d| d.try_mean::<(usize, usize), Axis<2>>())
            .map_err(dev_err)?;
        Ok((per_patch, mask))
    }
}

/// What [`Mae::forward_scaled`] returns.
#[derive(Debug)]
pub struct ScaledLoss<E: Dtype, D: Device<E>, T> {
    /// The loss (mean squared error over the masked patches), off the tape.
    pub loss: Tensor<Rank0, E, D>,
    /// The scalar to call `backward` on: its gradients are `grad_scale` times the loss's.
    pub backward: Tensor<Rank0, E, D, T>,
}
