//! Images to patches and back, on the host.
//!
//! PyTorch counterparts: `MaskedAutoencoderViT.patchify` / `unpatchify` (patch vectors in
//! `(p, q, c)` order, the reconstruction target) and the stride-`p` convolution of `PatchEmbed`
//! (which sees each patch in `(c, p, q)` order, the order of its `[D, C, p, p]` weight).

use crate::error::MaeError;
use crate::preset::MaePreset;

/// The shape of the square images a model takes and how they split into patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGeometry {
    /// Channels `C`.
    pub in_chans: usize,
    /// Image side `H = W`.
    pub img_size: usize,
    /// Patch side `p`.
    pub patch_size: usize,
}

impl PatchGeometry {
    /// The geometry of preset `P`.
    pub fn of<P: MaePreset>() -> Self {
        PatchGeometry {
            in_chans: P::IN_CHANS,
            img_size: P::IMG_SIZE,
            patch_size: P::PATCH_SIZE,
        }
    }
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }
    /// Patches per image `L`.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    /// Values per patch, `p·p·C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }
    /// Values per image, `C·H·W`.
    pub fn image_numel(&self) -> usize {
        self.in_chans * self.img_size * self.img_size
    }

    /// The batch size of an NCHW buffer, or an error if its length is not a whole number of images.
    pub fn batch_of(&self, imgs: &[f32]) -> Result<usize, MaeError> {
        let per = self.image_numel();
        if imgs.is_empty() || !imgs.len().is_multiple_of(per) {
            return Err(MaeError::InputShape {
                what: "images (NCHW)",
                expected: format!(
                    "a positive multiple of {}×{}×{} = {per} values",
                    self.in_chans, self.img_size, self.img_size
                ),
                got: format!("{} values", imgs.len()),
            });
        }
        Ok(imgs.len() / per)
    }

    /// Visits every (image offset, patch offset) pair. `order_cpq` picks the patch-vector order:
    /// `(c, p, q)` for the patch embedding, `(p, q, c)` for `patchify`.
    fn for_each_pixel(&self, batch: usize, order_cpq: bool, mut f: impl FnMut(usize, usize)) {
        let (c_n, s, p, g) = (self.in_chans, self.img_size, self.patch_size, self.grid());
        let (l, pd) = (self.num_patches(), self.patch_dim());
        for n in 0..batch {
            for c in 0..c_n {
                for y in 0..s {
                    let (hi, pi) = (y / p, y % p);
                    for x in 0..s {
                        let (wi, qi) = (x / p, x % p);
                        let img_at = ((n * c_n + c) * s + y) * s + x;
                        let within = if order_cpq {
                            (c * p + pi) * p + qi
                        } else {
                            (pi * p + qi) * c_n + c
                        };
                        f(img_at, (n * l + hi * g + wi) * pd + within);
                    }
                }
            }
        }
    }

    /// NCHW images → `[N, L, C·p·p]` patch vectors in `(c, p, q)` order (the patch-embedding input).
    pub fn patch_embed_input(&self, imgs: &[f32]) -> Result<Vec<f32>, MaeError> {
        let batch = self.batch_of(imgs)?;
        let mut out = vec![0f32; imgs.len()];
        self.for_each_pixel(batch, true, |i, o| out[o] = imgs[i]);
        Ok(out)
    }

    /// NCHW images → `[N, L, p·p·C]` patch vectors in `(p, q, c)` order (`patchify`).
    pub fn patchify(&self, imgs: &[f32]) -> Result<Vec<f32>, MaeError> {
        let batch = self.batch_of(imgs)?;
        let mut out = vec![0f32; imgs.len()];
        self.for_each_pixel(batch, false, |i, o| out[o] = imgs[i]);
        Ok(out)
    }

    /// `[N, L, p·p·C]` patches in `(p, q, c)` order → NCHW images (`unpatchify`).
    pub fn unpatchify(&self, patches: &[f32]) -> Result<Vec<f32>, MaeError> {
        let batch = self.batch_of(patches)?;
        let mut out = vec![0f32; patches.len()];
        self.for_each_pixel(batch, false, |i, o| out[i] = patches[o]);
        Ok(out)
    }
}

/// Per-patch normalization of reconstruction targets (`norm_pix_loss`): each patch vector becomes
/// `(t − mean) / sqrt(var + 1e-6)` with the unbiased variance, computed in f64.
pub fn normalize_patches(target: &mut [f32], patch_dim: usize) {
    if patch_dim < 2 {
        return;
    }
    for patch in target.chunks_exact_mut(patch_dim) {
        let n = patch_dim as f64;
        let mean = patch.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = patch
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        let inv = 1.0 / (var + 1e-6).sqrt();
        for v in patch.iter_mut() {
            *v = ((*v as f64 - mean) * inv) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> PatchGeometry {
        PatchGeometry {
            in_chans: 3,
            img_size: 4,
            patch_size: 2,
        }
    }

    #[test]
    fn patchify_orders_values_p_q_c_and_unpatchify_inverts_it() {
        let g = geometry();
        let imgs: Vec<f32> = (0..2 * g.image_numel()).map(|v| v as f32).collect();
        let p = g.patchify(&imgs).expect("whole images");
        // sample 0, patch (0, 1) = columns 2..4 of rows 0..2; first vector entries are channel
        // 0, 1, 2 of pixel (0, 2)
        let patch = &p[g.patch_dim()..][..g.patch_dim()];
        assert_eq!(&patch[..3], &[2.0, 18.0, 34.0]);
        // pixel (0, 3) next
        assert_eq!(&patch[3..6], &[3.0, 19.0, 35.0]);
        assert_eq!(g.unpatchify(&p).expect("whole"), imgs);
    }

    #[test]
    fn patch_embed_input_orders_values_c_p_q() {
        let g = geometry();
        let imgs: Vec<f32> = (0..g.image_numel()).map(|v| v as f32).collect();
        let p = g.patch_embed_input(&imgs).expect("whole images");
        let patch = &p[g.patch_dim()..][..g.patch_dim()];
        assert_eq!(
            patch,
            &[2.0, 3.0, 6.0, 7.0, 18.0, 19.0, 22.0, 23.0, 34.0, 35.0, 38.0, 39.0]
        );
    }

    #[test]
    fn partial_images_are_an_error() {
        let g = geometry();
        assert!(g.patchify(&[0.0; 47]).is_err());
        assert!(g.patchify(&[]).is_err());
    }

    #[test]
    fn normalized_patches_have_zero_mean_and_unit_unbiased_variance() {
        let mut t = vec![1.0f32, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
        normalize_patches(&mut t, 4);
        let var = (1.5f64.powi(2) * 2.0 + 0.5f64.powi(2) * 2.0) / 3.0;
        let s = (var + 1e-6).sqrt();
        assert!((t[0] as f64 + 1.5 / s).abs() < 1e-6);
        assert!((t[3] as f64 - 1.5 / s).abs() < 1e-6);
        assert!(t[4..].iter().all(|&v| v == 0.0));
    }
}
