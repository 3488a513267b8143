//! Batch-level augmentation for fine-tuning: mixup, cutmix, label smoothing and random erasing.
//!
//! PyTorch counterparts: timm's `data/mixup.py` (`Mixup` in `mode='batch'`: one λ per batch,
//! mixing each image with the batch flipped; cutmix or mixup chosen with `switch_prob`;
//! `correct_lam=True`; `mixup_target` with label smoothing) and `data/random_erasing.py`
//! (`RandomErasing(probability, mode='pixel', max_count=1)`, as `main_finetune.py` sets it up
//! with `--reprob 0.25`). Images are normalized NCHW `f32`.

use rand::Rng;
use rand_distr::{Beta, Distribution};

use crate::error::DataError;

/// Mixup/cutmix settings (`--mixup`, `--cutmix`, `--mixup-prob`, `--mixup-switch-prob`,
/// `--smoothing`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mixup {
    /// Mixup's Beta(α, α) parameter; 0 turns mixup off.
    pub mixup_alpha: f64,
    /// Cutmix's Beta(α, α) parameter; 0 turns cutmix off.
    pub cutmix_alpha: f64,
    /// Probability that a batch is mixed at all.
    pub prob: f64,
    /// Probability of cutmix instead of mixup when both are on.
    pub switch_prob: f64,
    /// Label smoothing folded into the targets.
    pub label_smoothing: f64,
    /// Number of classes.
    pub num_classes: usize,
}

/// What was drawn for one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixParams {
    /// Weight of each image's own label (after the cutmix area correction).
    pub lam: f64,
    /// The cutmix box `(y0, y1, x0, x1)` (end-exclusive), when cutmix was drawn.
    pub cutmix_box: Option<(usize, usize, usize, usize)>,
}

/// timm's `rand_bbox` + `correct_lam`: a box of side `sqrt(1 − λ)` of the image around a uniform
/// centre, clipped to the image; λ becomes one minus the box's share of the area.
pub fn cutmix_box(
    rng: &mut impl Rng,
    height: usize,
    width: usize,
    lam: f64,
) -> ((usize, usize, usize, usize), f64) {
    let ratio = (1.0 - lam).max(0.0).sqrt();
    let (cut_h, cut_w) = (
        (height as f64 * ratio) as i64,
        (width as f64 * ratio) as i64,
    );
    let cy = rng.gen_range(0..height as i64);
    let cx = rng.gen_range(0..width as i64);
    let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
    let (y0, y1) = (clip(cy - cut_h / 2, height), clip(cy + cut_h / 2, height));
    let (x0, x1) = (clip(cx - cut_w / 2, width), clip(cx + cut_w / 2, width));
    let area = ((y1 - y0) * (x1 - x0)) as f64;
    ((y0, y1, x0, x1), 1.0 - area / (height * width) as f64)
}

/// timm's `mixup_target`: smoothed one-hot targets (`off = s / C`, `on = 1 − s + off`) of the
/// labels, mixed with those of the flipped batch: `λ·y + (1 − λ)·flip(y)`. `[N, C]` row-major.
pub fn mixup_targets(
    labels: &[i64],
    num_classes: usize,
    lam: f64,
    smoothing: f64,
) -> Result<Vec<f32>, DataError> {
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= num_classes) {
        return Err(DataError::Option(format!(
            "label {bad} is outside 0..{num_classes} (fine-tuning needs labeled data)"
        )));
    }
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    let n = labels.len();
    let mut out = vec![0f32; n * num_classes];
    for (i, row) in out.chunks_exact_mut(num_classes).enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            let own = if labels[i] as usize == c { on } else { off };
            let other = if labels[n - 1 - i] as usize == c {
                on
            } else {
                off
            };
            *v = (lam * own + (1.0 - lam) * other) as f32;
        }
    }
    Ok(out)
}

impl Mixup {
    /// Whether mixup or cutmix is on.
    pub fn active(&self) -> bool {
        self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0
    }

    /// `_params_per_batch`: whether to mix, which of the two, and λ (cutmix box drawn and λ
    /// corrected for images of `height × width`).
    pub fn sample(&self, rng: &mut impl Rng, height: usize, width: usize) -> MixParams {
        let none = MixParams {
            lam: 1.0,
            cutmix_box: None,
        };
        if !self.active() || rng.gen::<f64>() >= self.prob {
            return none;
        }
        let beta = |a: f64, rng: &mut dyn rand::RngCore| match Beta::new(a, a) {
            Ok(b) => b.sample(rng),
            Err(_) => 1.0,
        };
        let use_cutmix = if self.mixup_alpha > 0.0 && self.cutmix_alpha > 0.0 {
            rng.gen::<f64>() < self.switch_prob
        } else {
            self.cutmix_alpha > 0.0
        };
        if use_cutmix {
            let lam = beta(self.cutmix_alpha, rng);
            let (bbox, lam) = cutmix_box(rng, height, width, lam);
            MixParams {
                lam,
                cutmix_box: Some(bbox),
            }
        } else {
            MixParams {
                lam: beta(self.mixup_alpha, rng),
                cutmix_box: None,
            }
        }
    }

    /// Mixes a batch of `[N, C, H, W]` images in place with the flipped batch and returns the soft
    /// targets `[N, classes]`. The batch must be even, as timm requires (`drop_last`).
    pub fn apply(
        &self,
        rng: &mut impl Rng,
        images: &mut [f32],
        labels: &[i64],
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<(Vec<f32>, MixParams), DataError> {
        let n = labels.len();
        let per = channels * height * width;
        if images.len() != n * per {
            return Err(DataError::Option(format!(
                "mixup: {} values for {n} images of {channels}×{height}×{width}",
                images.len()
            )));
        }
        if self.active() && !n.is_multiple_of(2) {
            return Err(DataError::Option(format!(
                "mixup/cutmix need an even batch, got {n}"
            )));
        }
        let params = self.sample(rng, height, width);
        if params.lam < 1.0 {
            let original = images.to_vec();
            for i in 0..n {
                let (dst, src) = (
                    &mut images[i * per..(i + 1) * per],
                    &original[(n - 1 - i) * per..][..per],
                );
                match params.cutmix_box {
                    Some((y0, y1, x0, x1)) => {
                        for c in 0..channels {
                            for y in y0..y1 {
                                let row = (c * height + y) * width;
                                dst[row + x0..row + x1].copy_from_slice(&src[row + x0..row + x1]);
                            }
                        }
                    }
                    None => {
                        let lam = params.lam as f32;
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d = *d * lam + s * (1.0 - lam);
                        }
                    }
                }
            }
        }
        let targets = mixup_targets(labels, self.num_classes, params.lam, self.label_smoothing)?;
        Ok((targets, params))
    }
}

/// timm's `RandomErasing(probability, mode='pixel', max_count=1)` on one normalized `[C, H, W]`
/// image: with `probability`, up to 10 tries to place a box of 2–33% of the area with a
/// log-uniform aspect ratio in 0.3–3.3, filled with N(0, 1) values per pixel and channel.
/// Returns whether a box was erased.
pub fn random_erase(
    rng: &mut impl Rng,
    image: &mut [f32],
    channels: usize,
    height: usize,
    width: usize,
    probability: f64,
) -> bool {
    if rng.gen::<f64>() > probability {
        return false;
    }
    let area = (height * width) as f64;
    let (lr0, lr1) = (0.3f64.ln(), (1.0f64 / 0.3).ln());
    for _ in 0..10 {
        let target = rng.gen_range(0.02..1.0 / 3.0) * area;
        let aspect = rng.gen_range(lr0..lr1).exp();
        let h = (target * aspect).sqrt().round() as usize;
        let w = (target / aspect).sqrt().round() as usize;
        if w < width && h < height && w > 0 && h > 0 {
            let top = rng.gen_range(0..=height - h);
            let left = rng.gen_range(0..=width - w);
            for c in 0..channels {
                for y in top..top + h {
                    for x in left..left + w {
                        let z: f32 = rand_distr::StandardNormal.sample(rng);
                        image[(c * height + y) * width + x] = z;
                    }
                }
            }
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn targets_are_smoothed_and_mixed_with_the_flipped_batch() {
        let t = mixup_targets(&[0, 2, 1], 3, 0.7, 0.1).expect("valid labels");
        let (off, on) = (0.1 / 3.0, 1.0 - 0.1 + 0.1 / 3.0);
        // sample 0 (label 0) mixes with sample 2 (label 1)
        let expect0 = [0.7 * on + 0.3 * off, 0.7 * off + 0.3 * on, off];
        for (a, b) in t[..3].iter().zip(expect0) {
            assert!((*a as f64 - b).abs() < 1e-6, "{t:?}");
        }
        // the middle sample mixes with itself: a plain smoothed one-hot
        assert!((t[5] as f64 - on).abs() < 1e-6 && (t[3] as f64 - off).abs() < 1e-6);
        for row in t.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!(mixup_targets(&[0, 3], 3, 1.0, 0.0).is_err());
    }

    #[test]
    fn cutmix_pastes_the_flipped_batch_inside_the_box_and_corrects_lambda() {
        let m = Mixup {
            mixup_alpha: 0.0,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.0,
            num_classes: 2,
        };
        let (c, h, w) = (2, 8, 8);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut seen_box = false;
        for _ in 0..20 {
            let mut imgs: Vec<f32> = (0..2 * c * h * w)
                .map(|i| (i / (c * h * w)) as f32)
                .collect();
            let (targets, p) = m
                .apply(&mut rng, &mut imgs, &[0, 1], c, h, w)
                .expect("even");
            let Some((y0, y1, x0, x1)) = p.cutmix_box else {
                panic!("cutmix only")
            };
            let pasted = imgs[..c * h * w].iter().filter(|&&v| v == 1.0).count();
            assert_eq!(pasted, c * (y1 - y0) * (x1 - x0));
            let lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
            assert!((p.lam - lam).abs() < 1e-12);
            assert!(
                (targets[0] as f64 - lam).abs() < 1e-6
                    && (targets[1] as f64 - (1.0 - lam)).abs() < 1e-6
            );
            seen_box |= pasted > 0;
        }
        assert!(seen_box);
        let mut odd = vec![0f32; 3 * c * h * w];
        assert!(m.apply(&mut rng, &mut odd, &[0, 1, 0], c, h, w).is_err());
    }

    #[test]
    fn mixup_blends_pixels_and_labels_with_the_same_lambda() {
        let m = Mixup {
            mixup_alpha: 0.8,
            cutmix_alpha: 0.0,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
            num_classes: 4,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut imgs = vec![0.0f32, 0.0, 1.0, 1.0];
        let (targets, p) = m
            .apply(&mut rng, &mut imgs, &[3, 0], 1, 1, 2)
            .expect("even");
        assert!(p.cutmix_box.is_none() && p.lam > 0.0 && p.lam < 1.0);
        let lam = p.lam as f32;
        assert!((imgs[0] - (1.0 - lam)).abs() < 1e-6 && (imgs[2] - lam).abs() < 1e-6);
        let (off, on) = (0.025f32, 0.925f32);
        assert!((targets[3] - (lam * on + (1.0 - lam) * off)).abs() < 1e-6);
        assert!((targets[0] - (lam * off + (1.0 - lam) * on)).abs() < 1e-6);
    }

    #[test]
    fn random_erasing_fills_one_box_with_noise() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let (mut erased, trials) = (0, 400);
        for _ in 0..trials {
            let mut img = vec![7.0f32; 3 * 16 * 16];
            if random_erase(&mut rng, &mut img, 3, 16, 16, 0.25) {
                erased += 1;
                let changed = img.iter().filter(|&&v| v != 7.0).count();
                assert!(changed > 0 && changed <= 3 * 16 * 16 / 3 + 3 * 16);
            } else {
                assert!(img.iter().all(|&v| v == 7.0));
            }
        }
        let rate = erased as f64 / trials as f64;
        assert!((rate - 0.25).abs() < 0.07, "rate {rate}");
    }
}
