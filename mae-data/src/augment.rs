//! The paper's image transforms, from a `u8` HWC shard sample to a normalized `f32` CHW image.
//!
//! PyTorch counterpart (`main_pretrain.py`): `RandomResizedCrop(input_size, scale=(0.2, 1.0),
//! interpolation=BICUBIC)`, `RandomHorizontalFlip()`, `ToTensor()`, `Normalize(mean, std)`; for
//! evaluation (`util/datasets.py`) `Resize(int(input_size / 0.875), BICUBIC)` + `CenterCrop`.
//!
//! The crop and flip of a sample depend only on `(seed, epoch, index)`, never on the thread or the
//! batch that processes it.

use fast_image_resize::Resizer;
use rand::{Rng, SeedableRng};

use crate::error::DataError;
use crate::format::Manifest;
use crate::randaugment::RandAugment;
use crate::resize::{resize_crop_into, CropBox, Interpolation};

/// ImageNet per-channel mean (RGB), the recipe's normalization.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation (RGB).
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// The normalization for a dataset: ImageNet's mean/std for RGB data (the recipe's), unless
/// `dataset_stats` asks for the manifest's own; grayscale data always uses its own statistics.
pub fn normalization(manifest: &Manifest, dataset_stats: bool) -> (Vec<f64>, Vec<f64>) {
    if manifest.channels == 3 && !dataset_stats {
        (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
    } else {
        (
            manifest.mean.clone(),
            manifest.std.iter().map(|s| s.max(1e-3)).collect(),
        )
    }
}

/// Which transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// RandomResizedCrop + random horizontal flip.
    Pretrain {
        /// Range of the crop's area as a fraction of the image (0.2–1.0 in the paper).
        scale: (f64, f64),
        /// Range of the crop's aspect ratio (3/4–4/3).
        ratio: (f64, f64),
        /// Flip with probability 1/2.
        hflip: bool,
    },
    /// Resize so that a centred crop of `crop_pct` of the view is taken (0.875 in the official
    /// evaluation), no randomness.
    Eval {
        /// Fraction of the resized image kept by the centre crop.
        crop_pct: f64,
    },
}

impl Transform {
    /// The fine-tuning crop of `main_finetune.py` (timm's `create_transform` for training:
    /// RandomResizedCrop with the default scale 0.08–1, ratio 3/4–4/3, horizontal flip; its
    /// RandAugment is not implemented here).
    pub fn finetune() -> Self {
        Transform::Pretrain {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
        }
    }

    /// The evaluation transform for images of side `size`, as `util/datasets.py`'s
    /// `build_transform` at every size: `crop_pct` 224/256 up to 224 px (`Resize(256)` +
    /// `CenterCrop(224)`; `Resize(32)` + `CenterCrop(28)` for Fashion-MNIST), 1.0 above (a
    /// 448-px model sees the whole resized image).
    pub fn eval_for(size: usize) -> Self {
        Transform::Eval {
            crop_pct: if size <= 224 { 224.0 / 256.0 } else { 1.0 },
        }
    }

    /// The paper's pretraining augmentation.
    pub fn pretrain() -> Self {
        Transform::Pretrain {
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
        }
    }
}

/// A transform with its output size, interpolation, normalization and seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Augment {
    /// The transform.
    pub transform: Transform,
    /// Output side.
    pub out_size: usize,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// Per-channel mean subtracted (in `[0, 1]` units).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f32>,
    /// Seed of the random crops and flips.
    pub seed: u64,
    /// RandAugment after the crop and flip, before normalization (fine-tuning's `--aa`), with
    /// the bytes geometric ops fill uncovered pixels with.
    pub rand_augment: Option<(RandAugment, Vec<u8>)>,
}

/// What the random transform chose for one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropParams {
    /// The region of the source image.
    pub crop: CropBox,
    /// Whether the output is mirrored.
    pub flip: bool,
}

/// SplitMix64 finalizer: mixes `(seed, epoch, index)` into one RNG seed.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Augment {
    /// `transform` to `out_size`, normalized with `mean`/`std` (one value per channel).
    pub fn new(
        transform: Transform,
        out_size: usize,
        mean: &[f64],
        std: &[f64],
        seed: u64,
    ) -> Result<Self, DataError> {
        if out_size == 0 {
            return Err(DataError::Option("output size must be at least 1".into()));
        }
        if mean.len() != std.len()
            || mean.is_empty()
            || std.iter().any(|&s| s <= 0.0 || !s.is_finite())
        {
            return Err(DataError::Option(format!(
                "normalization needs one mean and one positive std per channel (got {mean:?} / {std:?})"
            )));
        }
        if let Transform::Pretrain { scale, ratio, .. } = transform {
            if !(0.0 < scale.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
                return Err(DataError::Option(format!(
                    "crop scale {scale:?} must satisfy 0 < min ≤ max ≤ 1"
                )));
            }
            if !(0.0 < ratio.0 && ratio.0 <= ratio.1) {
                return Err(DataError::Option(format!(
                    "crop ratio {ratio:?} must satisfy 0 < min ≤ max"
                )));
            }
        }
        if let Transform::Eval { crop_pct } = transform {
            if !(0.0 < crop_pct && crop_pct <= 1.0) {
                return Err(DataError::Option(format!(
                    "crop_pct {crop_pct} must be in (0, 1]"
                )));
            }
        }
        Ok(Augment {
            transform,
            out_size,
            interpolation: Interpolation::Bicubic,
            mean: mean.iter().map(|&v| v as f32).collect(),
            std: std.iter().map(|&v| v as f32).collect(),
            seed,
            rand_augment: None,
        })
    }

    /// The same augmentation with `ra` applied to each random crop (after the flip, before
    /// normalization, as timm's `create_transform` orders them); its fill colour is the
    /// normalization mean in bytes (timm's `img_mean`). Only for the random transform of 1- or
    /// 3-channel images.
    pub fn with_rand_augment(mut self, ra: RandAugment) -> Result<Self, DataError> {
        if !matches!(self.transform, Transform::Pretrain { .. }) {
            return Err(DataError::Option(format!(
                "--aa {}: RandAugment is for training crops, not the evaluation transform",
                ra.spec
            )));
        }
        if !matches!(self.channels(), 1 | 3) {
            return Err(DataError::Option(format!(
                "--aa {}: RandAugment takes 1- or 3-channel images, not {}",
                ra.spec,
                self.channels()
            )));
        }
        let fill = self
            .mean
            .iter()
            .map(|&m| (255.0 * m as f64).round_ties_even().clamp(0.0, 255.0) as u8)
            .collect();
        self.rand_augment = Some((ra, fill));
        Ok(self)
    }

    /// Channels this augmentation normalizes.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// The crop and flip for sample `index` of `epoch`, for a `width × height` source: the
    /// evaluation transform's centre crop, or [`random_resized_crop`] with draws keyed by
    /// `(seed, epoch, index)` and then the flip.
    pub fn params(&self, width: usize, height: usize, epoch: u64, index: u64) -> CropParams {
        match self.transform {
            Transform::Eval { crop_pct } => CropParams {
                crop: eval_crop(width, height, self.out_size, crop_pct),
                flip: false,
            },
            Transform::Pretrain {
                scale,
                ratio,
                hflip,
            } => {
                let mut rng = self.rng(epoch, index);
                let (left, top, w, h) = random_resized_crop(width, height, scale, ratio, &mut rng);
                let flip = hflip && rng.gen::<bool>();
                CropParams {
                    crop: CropBox {
                        left: left as f64,
                        top: top as f64,
                        width: w as f64,
                        height: h as f64,
                    },
                    flip,
                }
            }
        }
    }

    /// Transforms one `width × height × C` HWC image into `out` (`C × out_size × out_size`, CHW,
    /// normalized). `scratch` is reused between calls.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        resizer: &mut Resizer,
        scratch: &mut Vec<u8>,
        pixels: &[u8],
        (width, height): (usize, usize),
        epoch: u64,
        index: u64,
        out: &mut [f32],
    ) -> Result<CropParams, DataError> {
        let c = self.channels();
        let o = self.out_size;
        if width == 0 || height == 0 || pixels.len() != width * height * c || out.len() != c * o * o
        {
            return Err(DataError::Option(format!(
                "augment: sample of {} bytes / output of {} values do not fit {width}×{height}×{c} → {c}×{o}×{o}",
                pixels.len(),
                out.len()
            )));
        }
        let params = self.params(width, height, epoch, index);
        scratch.resize(o * o * c, 0);
        resize_crop_into(
            resizer,
            pixels,
            width,
            height,
            c,
            params.crop,
            scratch,
            o,
            o,
            self.interpolation,
        )?;
        let luts: Vec<[f32; 256]> = (0..c).map(|ch| self.lut(ch)).collect();
        let mut flip = params.flip;
        if let Some((ra, fill)) = &self.rand_augment {
            if flip {
                mirror_rows(scratch, o, c);
                flip = false;
            }
            let drawn = ra.draw(&mut self.rng(epoch, index ^ RAND_AUGMENT_STREAM));
            RandAugment::apply(&drawn, scratch, (o, o, c), fill, &mut Vec::new())?;
        }
        to_planes(scratch, o, &luts, flip, out);
        Ok(params)
    }
}

/// Keys RandAugment's draws of a sample apart from its crop's.
const RAND_AUGMENT_STREAM: u64 = 0x5241_4e44_4155_4700;

/// Mirrors each row of an `o × o × c` HWC image.
fn mirror_rows(hwc: &mut [u8], o: usize, c: usize) {
    for row in hwc.chunks_exact_mut(o * c) {
        for x in 0..o / 2 {
            for ch in 0..c {
                row.swap(x * c + ch, (o - 1 - x) * c + ch);
            }
        }
    }
}

impl Augment {
    /// The random draws of sample `index` of `epoch`: keyed by `(seed, epoch, index)` alone.
    fn rng(&self, epoch: u64, index: u64) -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(mix(mix(self.seed)
            ^ mix(epoch.wrapping_add(0x1234_5678))
            ^ index))
    }

    /// Channel `ch`'s normalization of every byte value: `v / (255 std) − mean / std`.
    fn lut(&self, ch: usize) -> [f32; 256] {
        let scale = 1.0 / (255.0 * self.std[ch]);
        let shift = self.mean[ch] / self.std[ch];
        std::array::from_fn(|v| v as f32 * scale - shift)
    }
}

/// `o × o` HWC bytes (`luts.len()` channels) into `C × o × o` planes, each byte through its
/// channel's table, mirrored when `flip`. One pass over the pixels (the channel-at-a-time strided
/// loop it replaces was a third of the raw loader's time).
fn to_planes(hwc: &[u8], o: usize, luts: &[[f32; 256]], flip: bool, out: &mut [f32]) {
    let c = luts.len();
    let plane = o * o;
    for y in 0..o {
        let row = &hwc[y * o * c..(y + 1) * o * c];
        let at = y * o;
        if let [l0, l1, l2] = luts {
            let (r, rest) = out.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            let (r, g, b) = (&mut r[at..at + o], &mut g[at..at + o], &mut b[at..at + o]);
            for (x, px) in row.chunks_exact(3).enumerate() {
                let d = if flip { o - 1 - x } else { x };
                r[d] = l0[px[0] as usize];
                g[d] = l1[px[1] as usize];
                b[d] = l2[px[2] as usize];
            }
        } else {
            for (x, px) in row.chunks_exact(c).enumerate() {
                let d = at + if flip { o - 1 - x } else { x };
                for (ch, (&v, lut)) in px.iter().zip(luts).enumerate() {
                    out[ch * plane + d] = lut[v as usize];
                }
            }
        }
    }
}

/// The random numbers `RandomResizedCrop.get_params` consumes, in its order: per try an area
/// fraction (`torch.empty(1).uniform_(*scale)`) and an aspect ratio
/// (`torch.exp(torch.empty(1).uniform_(*log(ratio)))`), then on success the top and left offsets
/// (`torch.randint(0, n)`). The loader's draws come from a ChaCha8 stream; tests feed torch's.
pub trait CropDraws {
    /// A uniform number in `[lo, hi)`: the crop's fraction of the image's area.
    fn area_fraction(&mut self, lo: f64, hi: f64) -> f64;
    /// `exp` of a uniform number in `[log_lo, log_hi)`: the crop's aspect ratio (w / h).
    fn aspect(&mut self, log_lo: f64, log_hi: f64) -> f64;
    /// A uniform integer in `0..n` (`n ≥ 1`).
    fn below(&mut self, n: usize) -> usize;
}

impl<R: Rng> CropDraws for R {
    fn area_fraction(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.gen::<f64>()
    }
    fn aspect(&mut self, log_lo: f64, log_hi: f64) -> f64 {
        (log_lo + (log_hi - log_lo) * self.gen::<f64>()).exp()
    }
    fn below(&mut self, n: usize) -> usize {
        self.gen_range(0..n.max(1))
    }
}

/// torchvision's `RandomResizedCrop.get_params` on a `width × height` image: ten tries of a
/// random area in `scale` and a log-uniform aspect ratio in `ratio`, the first crop that fits
/// taken at a uniform position; else the centre crop of the whole image clamped to the ratio
/// range. Returns `(left, top, w, h)`. Rounding is Python's `round` (half to even).
pub fn random_resized_crop(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    draws: &mut impl CropDraws,
) -> (usize, usize, usize, usize) {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * draws.area_fraction(scale.0, scale.1);
        let aspect = draws.aspect(log_lo, log_hi);
        let w = (target * aspect).sqrt().round_ties_even() as usize;
        let h = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = draws.below(height - h + 1);
            let left = draws.below(width - w + 1);
            return (left, top, w, h);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0.min(ratio.1) {
        (
            width,
            (width as f64 / ratio.0.min(ratio.1)).round_ties_even() as usize,
        )
    } else if in_ratio > ratio.0.max(ratio.1) {
        (
            (height as f64 * ratio.0.max(ratio.1)).round_ties_even() as usize,
            height,
        )
    } else {
        (width, height)
    };
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// The side the evaluation transform resizes the shorter side to before its centre crop of `out`:
/// `int(out / crop_pct)` (`util/datasets.py`), 256 for 224 at 0.875.
pub fn eval_resize(out: usize, crop_pct: f64) -> usize {
    (out as f64 / crop_pct) as usize
}

/// The evaluation transform of `util/datasets.py` on a `width × height` image, as a region of the
/// source: `Resize(int(out / crop_pct))` (shorter side to that, the longer side
/// `int(size · long / short)`, torchvision's rule) then `CenterCrop(out)` (offsets
/// `int(round((side - out) / 2))`), mapped back through the resize's scale per axis.
pub fn eval_crop(width: usize, height: usize, out: usize, crop_pct: f64) -> CropBox {
    let size = eval_resize(out, crop_pct);
    let (short, long) = (width.min(height), width.max(height));
    let resized_long = (size as f64 * long as f64 / short as f64) as usize;
    let (rw, rh) = if width <= height {
        (size, resized_long)
    } else {
        (resized_long, size)
    };
    let (sx, sy) = (rw as f64 / width as f64, rh as f64 / height as f64);
    let offset = |side: usize| {
        ((side as f64 - out as f64) / 2.0)
            .round_ties_even()
            .max(0.0)
    };
    let (cw, ch) = ((out as f64).min(rw as f64), (out as f64).min(rh as f64));
    CropBox {
        left: offset(rw) / sx,
        top: offset(rh) / sy,
        width: cw / sx,
        height: ch / sy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretrain() -> Augment {
        Augment::new(Transform::pretrain(), 16, &[0.5], &[0.25], 7).expect("valid")
    }

    #[test]
    fn crops_are_deterministic_and_within_the_scale_bounds() {
        let a = pretrain();
        let mut flips = 0;
        for index in 0..2000u64 {
            let p = a.params(64, 64, 3, index);
            assert_eq!(p, a.params(64, 64, 3, index));
            let area = p.crop.width * p.crop.height / (64.0 * 64.0);
            // rounding of w and h moves the area a little past the bounds
            assert!((0.2 - 0.02..=1.0).contains(&area), "area {area}");
            let r = p.crop.width / p.crop.height;
            assert!(r > 0.7 && r < 1.4, "ratio {r}");
            assert!(p.crop.left + p.crop.width <= 64.0 && p.crop.top + p.crop.height <= 64.0);
            flips += p.flip as usize;
        }
        assert!((900..1100).contains(&flips), "{flips} flips of 2000");
        // another epoch or seed gives other crops
        assert_ne!(a.params(64, 64, 3, 5), a.params(64, 64, 4, 5));
    }

    #[test]
    fn eval_is_a_centre_crop_and_normalizes() {
        let a = Augment::new(
            Transform::Eval { crop_pct: 0.875 },
            224,
            &[0.0; 3],
            &[1.0; 3],
            0,
        )
        .expect("valid");
        let p = a.params(256, 256, 0, 0);
        assert_eq!(
            p.crop,
            CropBox {
                left: 16.0,
                top: 16.0,
                width: 224.0,
                height: 224.0
            }
        );
        let a =
            Augment::new(Transform::Eval { crop_pct: 1.0 }, 4, &[0.5], &[0.5], 0).expect("valid");
        let pixels: Vec<u8> = (0..16).map(|v| (v * 17) as u8).collect();
        let mut out = vec![0f32; 16];
        let mut r = Resizer::new();
        a.apply(&mut r, &mut Vec::new(), &pixels, (4, 4), 0, 0, &mut out)
            .expect("fits");
        for (o, p) in out.iter().zip(&pixels) {
            assert!((o - ((*p as f32 / 255.0 - 0.5) / 0.5)).abs() < 1e-6);
        }
    }

    #[test]
    fn flip_mirrors_rows() {
        let a = Augment::new(
            Transform::Pretrain {
                scale: (1.0, 1.0),
                ratio: (1.0, 1.0),
                hflip: true,
            },
            4,
            &[0.0],
            &[1.0],
            1,
        )
        .expect("valid");
        let pixels: Vec<u8> = (0..16).map(|v| v as u8).collect();
        let mut r = Resizer::new();
        let (mut seen_flip, mut seen_plain) = (false, false);
        for index in 0..20 {
            let mut out = vec![0f32; 16];
            let p = a
                .apply(&mut r, &mut Vec::new(), &pixels, (4, 4), 0, index, &mut out)
                .expect("fits");
            let first_row: Vec<u8> = out[..4].iter().map(|v| (v * 255.0).round() as u8).collect();
            if p.flip {
                seen_flip = true;
                assert_eq!(first_row, vec![3, 2, 1, 0]);
            } else {
                seen_plain = true;
                assert_eq!(first_row, vec![0, 1, 2, 3]);
            }
        }
        assert!(seen_flip && seen_plain);
    }

    #[test]
    fn planes_hold_every_channel_normalized_and_mirrored() {
        let (mean, std) = (IMAGENET_MEAN, IMAGENET_STD);
        let a = Augment::new(Transform::pretrain(), 5, &mean, &std, 0).expect("valid");
        let hwc: Vec<u8> = (0..5 * 5 * 3).map(|v| (v * 37 % 256) as u8).collect();
        let luts: Vec<[f32; 256]> = (0..3).map(|ch| a.lut(ch)).collect();
        for flip in [false, true] {
            let mut out = vec![f32::NAN; 3 * 25];
            to_planes(&hwc, 5, &luts, flip, &mut out);
            for (ch, y, x) in
                (0..3).flat_map(|c| (0..5).flat_map(move |y| (0..5).map(move |x| (c, y, x))))
            {
                let sx = if flip { 4 - x } else { x };
                let v = hwc[(y * 5 + sx) * 3 + ch] as f64;
                let want = (v / 255.0 - mean[ch]) / std[ch];
                let got = out[ch * 25 + y * 5 + x] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "c{ch} y{y} x{x} flip {flip}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn the_eval_crop_is_the_official_one_at_every_size() {
        // util/datasets.py: crop_pct 224/256 up to 224 px, 1.0 above
        for (size, pct, resize) in [
            (28, 0.875, 32),
            (224, 0.875, 256),
            (225, 1.0, 225),
            (448, 1.0, 448),
        ] {
            assert_eq!(
                Transform::eval_for(size),
                Transform::Eval { crop_pct: pct },
                "{size}"
            );
            assert_eq!(eval_resize(size, pct), resize, "{size}");
        }
        // 28 px: Resize(32) then CenterCrop(28) cuts 2 resized pixels (1.75 source pixels) a side
        let c = eval_crop(28, 28, 28, 0.875);
        assert!(
            (c.left - 1.75).abs() < 1e-12 && (c.width - 24.5).abs() < 1e-12,
            "{c:?}"
        );
    }

    #[test]
    fn rand_augment_runs_on_the_flipped_crop_before_normalization() {
        let ra: RandAugment = "rand-m9-mstd0.5-inc1-p1".parse().expect("spec");
        let (mean, std) = (IMAGENET_MEAN, IMAGENET_STD);
        let plain = Augment::new(Transform::pretrain(), 12, &mean, &std, 5).expect("valid");
        let a = plain.clone().with_rand_augment(ra.clone()).expect("rgb");
        assert_eq!(
            a.rand_augment.as_ref().map(|r| r.1.clone()),
            Some(vec![124, 116, 104])
        );
        let pixels: Vec<u8> = (0..20 * 16 * 3).map(|v| (v * 29 % 251) as u8).collect();
        let mut r = Resizer::new();
        let mut changed = 0;
        for index in 0..16 {
            let mut out = vec![0f32; 3 * 144];
            let p = a
                .apply(
                    &mut r,
                    &mut Vec::new(),
                    &pixels,
                    (20, 16),
                    2,
                    index,
                    &mut out,
                )
                .expect("fits");
            // by hand: the crop, mirrored, then the ops drawn for this sample, then the planes
            let mut hwc = vec![0u8; 144 * 3];
            resize_crop_into(
                &mut r,
                &pixels,
                20,
                16,
                3,
                p.crop,
                &mut hwc,
                12,
                12,
                a.interpolation,
            )
            .expect("crop");
            if p.flip {
                mirror_rows(&mut hwc, 12, 3);
            }
            let mut before = vec![0f32; 3 * 144];
            let luts: Vec<[f32; 256]> = (0..3).map(|ch| a.lut(ch)).collect();
            to_planes(&hwc, 12, &luts, false, &mut before);
            let drawn = ra.draw(&mut a.rng(2, index ^ RAND_AUGMENT_STREAM));
            RandAugment::apply(
                &drawn,
                &mut hwc,
                (12, 12, 3),
                &[124, 116, 104],
                &mut Vec::new(),
            )
            .expect("fits");
            let mut want = vec![0f32; 3 * 144];
            to_planes(&hwc, 12, &luts, false, &mut want);
            assert_eq!(out, want, "sample {index}");
            changed += (out != before) as usize;
            // the crop and flip are the plain augmentation's
            let mut plain_out = vec![0f32; 3 * 144];
            let q = plain
                .apply(
                    &mut r,
                    &mut Vec::new(),
                    &pixels,
                    (20, 16),
                    2,
                    index,
                    &mut plain_out,
                )
                .expect("fits");
            assert_eq!(p, q);
        }
        assert!(changed >= 12, "{changed} of 16 samples changed");
        let eval =
            Augment::new(Transform::Eval { crop_pct: 1.0 }, 8, &mean, &std, 0).expect("eval");
        assert!(eval.with_rand_augment(ra.clone()).is_err());
        let two = Augment::new(Transform::pretrain(), 8, &[0.5; 2], &[0.5; 2], 0).expect("2 ch");
        assert!(two.with_rand_augment(ra).is_err());
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(Augment::new(Transform::pretrain(), 0, &[0.5], &[0.5], 0).is_err());
        assert!(Augment::new(Transform::pretrain(), 8, &[0.5], &[0.0], 0).is_err());
        assert!(Augment::new(Transform::Eval { crop_pct: 1.5 }, 8, &[0.5], &[0.5], 0).is_err());
    }
}
