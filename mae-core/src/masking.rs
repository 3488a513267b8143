//! Per-sample random masking: which patches the encoder sees.
//!
//! PyTorch counterpart: `MaskedAutoencoderViT.random_masking` in `models_mae.py`. The noise is an
//! input (as Hugging Face's `noise` argument), so masking is deterministic given it; training draws
//! it from an RNG with [`Masking::random`].

use rand::Rng;

use crate::error::MaeError;

/// The paper's mask ratio: 75% of the patches removed (`--mask_ratio 0.75` of `main_pretrain.py`),
/// the default of every command that masks.
pub const DEFAULT_MASK_RATIO: f64 = 0.75;
pub use crate::preset::check_mask_ratio;

/// The outcome of masking a batch: all index buffers are row-major `[batch, ·]` on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Masking {
    /// Number of samples.
    pub batch: usize,
    /// Patches per sample, `L`.
    pub num_patches: usize,
    /// Visible patches per sample, `floor(L·(1 − mask_ratio))`.
    pub len_keep: usize,
    /// `[batch, len_keep]`: the kept patch indices, in order of increasing noise.
    pub ids_keep: Vec<usize>,
    /// `[batch, L]`: `argsort(ids_shuffle)`, the position of each patch in the shuffled order.
    pub ids_restore: Vec<usize>,
    /// `[batch, L]`: 1 where the patch is removed, 0 where it is visible.
    pub mask: Vec<f32>,
}

/// `floor(L·(1 − mask_ratio))`, computed as the reference computes `int(L * (1 - mask_ratio))`.
pub fn len_keep(num_patches: usize, mask_ratio: f64) -> Result<usize, MaeError> {
    check_mask_ratio(mask_ratio)?;
    Ok((num_patches as f64 * (1.0 - mask_ratio)) as usize)
}

/// [`len_keep`] of a mask ratio that leaves at least one visible and one masked patch of
/// `num_patches`, as training, reconstruction and the step benchmark need (no visible patch gives
/// the encoder nothing to see; no masked one leaves the loss undefined).
pub fn check_len_keep(num_patches: usize, mask_ratio: f64) -> Result<usize, MaeError> {
    let keep = len_keep(num_patches, mask_ratio)?;
    if keep == 0 || keep >= num_patches {
        return Err(MaeError::MaskRatioLeaves {
            mask_ratio,
            num_patches,
            len_keep: keep,
        });
    }
    Ok(keep)
}

impl Masking {
    /// Masks from `noise` (`[batch, L]`, row-major): per sample, patches are sorted by ascending
    /// noise (ties by index) and the first `len_keep` are kept.
    pub fn from_noise(
        noise: &[f32],
        batch: usize,
        num_patches: usize,
        mask_ratio: f64,
    ) -> Result<Self, MaeError> {
        let len_keep = len_keep(num_patches, mask_ratio)?;
        if len_keep == 0 && num_patches > 0 {
            return Err(MaeError::MaskRatioLeaves {
                mask_ratio,
                num_patches,
                len_keep,
            });
        }
        if Some(noise.len()) != batch.checked_mul(num_patches) {
            return Err(MaeError::InputShape {
                what: "masking noise",
                expected: format!("{batch}×{num_patches} values"),
                got: format!("{} values", noise.len()),
            });
        }
        let mut ids_keep = Vec::with_capacity(batch * len_keep);
        let mut ids_restore = vec![0usize; batch * num_patches];
        let mut mask = vec![0f32; batch * num_patches];
        let mut ids_shuffle: Vec<usize> = Vec::with_capacity(num_patches);
        for n in 0..batch {
            let row = &noise[n * num_patches..][..num_patches];
            if let Some(patch) = row.iter().position(|v| !v.is_finite()) {
                return Err(MaeError::NonFiniteNoise { sample: n, patch });
            }
            ids_shuffle.clear();
            ids_shuffle.extend(0..num_patches);
            ids_shuffle.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
            ids_keep.extend_from_slice(&ids_shuffle[..len_keep]);
            for (rank, &patch) in ids_shuffle.iter().enumerate() {
                ids_restore[n * num_patches + patch] = rank;
                mask[n * num_patches + patch] = if rank < len_keep { 0.0 } else { 1.0 };
            }
        }
        Ok(Masking {
            batch,
            num_patches,
            len_keep,
            ids_keep,
            ids_restore,
            mask,
        })
    }

    /// Masks with noise drawn uniformly from `[0, 1)`, as `torch.rand` in training.
    pub fn random(
        rng: &mut impl Rng,
        batch: usize,
        num_patches: usize,
        mask_ratio: f64,
    ) -> Result<Self, MaeError> {
        let noise: Vec<f32> = (0..batch * num_patches).map(|_| rng.gen::<f32>()).collect();
        Self::from_noise(&noise, batch, num_patches, mask_ratio)
    }

    /// No masking: every patch visible, in order (feature extraction).
    pub fn keep_all(batch: usize, num_patches: usize) -> Self {
        let ids: Vec<usize> = (0..batch).flat_map(|_| 0..num_patches).collect();
        Masking {
            batch,
            num_patches,
            len_keep: num_patches,
            ids_keep: ids.clone(),
            ids_restore: ids,
            mask: vec![0.0; batch * num_patches],
        }
    }

    /// Number of removed patches in the batch.
    pub fn num_masked(&self) -> usize {
        self.batch * (self.num_patches - self.len_keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn len_keep_follows_the_reference() {
        assert_eq!(len_keep(196, 0.75).ok(), Some(49));
        assert_eq!(len_keep(49, 0.75).ok(), Some(12));
        assert_eq!(len_keep(64, 0.6).ok(), Some(25));
        assert_eq!(len_keep(49, 0.0).ok(), Some(49));
        assert!(len_keep(49, 1.0).is_err());
        assert!(len_keep(49, -0.5).is_err());
    }

    #[test]
    fn training_needs_a_visible_and_a_masked_patch() {
        assert_eq!(check_len_keep(49, 0.75).ok(), Some(12));
        assert_eq!(check_len_keep(49, 0.979).ok(), Some(1));
        for bad in [0.99, 0.0] {
            let err = check_len_keep(49, bad).expect_err("no visible or no masked patch");
            assert!(err.to_string().contains("49 patches"), "{err}");
        }
        assert!(check_len_keep(49, f64::NAN).is_err());
    }

    #[test]
    fn invariants_hold_for_random_masks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for ratio in [0.0, 0.5, 0.75, 0.9] {
            let (b, l) = (5, 49);
            let m = Masking::random(&mut rng, b, l, ratio).expect("valid ratio");
            let keep = len_keep(l, ratio).expect("valid ratio");
            assert_eq!(m.len_keep, keep);
            for n in 0..b {
                let mask = &m.mask[n * l..][..l];
                let restore = &m.ids_restore[n * l..][..l];
                let kept = &m.ids_keep[n * keep..][..keep];
                // exactly len_keep visible, and they are the kept ones
                assert_eq!(mask.iter().filter(|&&v| v == 0.0).count(), keep);
                for &k in kept {
                    assert_eq!(mask[k], 0.0);
                }
                // ids_restore is a permutation that sends kept patches to ranks < len_keep
                let mut seen = vec![false; l];
                for (patch, &rank) in restore.iter().enumerate() {
                    assert!(!seen[rank]);
                    seen[rank] = true;
                    assert_eq!(rank < keep, mask[patch] == 0.0);
                }
                // ids_keep[ids_restore[k]] == k for kept patches (restore inverts the shuffle)
                for (i, &k) in kept.iter().enumerate() {
                    assert_eq!(restore[k], i);
                }
            }
        }
    }

    #[test]
    fn noise_decides_and_bad_noise_is_an_error() {
        let noise = [0.9, 0.1, 0.5, 0.3];
        let m = Masking::from_noise(&noise, 1, 4, 0.5).expect("valid");
        assert_eq!(m.ids_keep, vec![1, 3]);
        assert_eq!(m.ids_restore, vec![3, 0, 2, 1]);
        assert_eq!(m.mask, vec![1.0, 0.0, 1.0, 0.0]);
        assert!(matches!(
            Masking::from_noise(&[0.1, f32::NAN], 1, 2, 0.5),
            Err(MaeError::NonFiniteNoise {
                sample: 0,
                patch: 1
            })
        ));
        assert!(Masking::from_noise(&noise, 2, 4, 0.5).is_err());
        // a ratio that leaves no visible patch is an error, not an empty encoder input
        assert!(matches!(
            Masking::from_noise(&noise, 1, 4, 0.9),
            Err(MaeError::MaskRatioLeaves { len_keep: 0, .. })
        ));
    }
}
