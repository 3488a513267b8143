//! RandAugment as timm builds it for fine-tuning (`--aa rand-m9-mstd0.5-inc1`), on `u8` HWC
//! images before normalization.
//!
//! PyTorch counterpart: `timm.data.auto_augment.rand_augment_transform` as `create_transform`
//! calls it from `main_finetune.py`: two ops drawn with replacement from the 15 of
//! `_RAND_INCREASING_TRANSFORMS` (`inc1`; `_RAND_TRANSFORMS` without it), each applied with
//! probability 0.5 at a magnitude drawn from `N(9, 0.5)` clamped to `[0, 10]`, the signed ops
//! negated half the time; geometric ops resample bicubically and fill with the normalization mean
//! in bytes (`img_mean`). Every op computes what Pillow computes (the same lookup tables, the
//! float blend of `ImageEnhance` truncated as `ImagingBlend` does, the 3×3 `SMOOTH` filter with
//! copied borders, the affine transform sampled at pixel centres with Pillow's `a = −1` bicubic
//! and edge clamping): `mae-data/tests/randaugment.rs` checks each op byte for byte against
//! timm's own op functions (fixtures by `tools/reference/randaugment_fixture.py`).
//!
//! One difference, kept on purpose: Posterize to 0 bits (`PosterizeIncreasing` at magnitude 10,
//! which the magnitude noise reaches) makes the image black, as Pillow did when the official
//! runs were made; Pillow 11 and later raise an error there instead.

use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::error::DataError;

/// timm's `_LEVEL_DENOM`: magnitudes are tenths of an op's full strength.
const LEVEL_DENOM: f64 = 10.0;

/// One RandAugment op, by timm's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    PosterizeIncreasing,
    Solarize,
    SolarizeIncreasing,
    SolarizeAdd,
    Color,
    ColorIncreasing,
    Contrast,
    ContrastIncreasing,
    Brightness,
    BrightnessIncreasing,
    Sharpness,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

impl Op {
    /// timm's `_RAND_TRANSFORMS`.
    pub const RAND: [Op; 15] = [
        Op::AutoContrast,
        Op::Equalize,
        Op::Invert,
        Op::Rotate,
        Op::Posterize,
        Op::Solarize,
        Op::SolarizeAdd,
        Op::Color,
        Op::Contrast,
        Op::Brightness,
        Op::Sharpness,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateXRel,
        Op::TranslateYRel,
    ];

    /// timm's `_RAND_INCREASING_TRANSFORMS` (`inc1`).
    pub const RAND_INCREASING: [Op; 15] = [
        Op::AutoContrast,
        Op::Equalize,
        Op::Invert,
        Op::Rotate,
        Op::PosterizeIncreasing,
        Op::SolarizeIncreasing,
        Op::SolarizeAdd,
        Op::ColorIncreasing,
        Op::ContrastIncreasing,
        Op::BrightnessIncreasing,
        Op::SharpnessIncreasing,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateXRel,
        Op::TranslateYRel,
    ];

    /// Whether timm's level function negates the argument half the time (`_randomly_negate`).
    pub fn signed(self) -> bool {
        matches!(
            self,
            Op::Rotate
                | Op::ColorIncreasing
                | Op::ContrastIncreasing
                | Op::BrightnessIncreasing
                | Op::SharpnessIncreasing
                | Op::ShearX
                | Op::ShearY
                | Op::TranslateXRel
                | Op::TranslateYRel
        )
    }

    /// The op's argument at `magnitude` (0–10), negated where `negative` and the op is signed:
    /// timm's `LEVEL_TO_ARG[name]` (degrees, bits, a threshold, an enhancement factor, a shear, a
    /// fraction of the image side), computed in the same order of operations.
    pub fn arg(self, magnitude: f64, negative: bool) -> f64 {
        let level = magnitude / LEVEL_DENOM;
        let sign = |v: f64| if negative { -v } else { v };
        let posterize = (level * 4.0).trunc();
        let solarize = (level * 256.0).trunc().min(256.0);
        match self {
            Op::AutoContrast | Op::Equalize | Op::Invert => 0.0,
            Op::Rotate => sign(level * 30.0),
            Op::Posterize => posterize,
            Op::PosterizeIncreasing => 4.0 - posterize,
            Op::Solarize => solarize,
            Op::SolarizeIncreasing => 256.0 - solarize,
            Op::SolarizeAdd => (level * 110.0).trunc().min(128.0),
            Op::Color | Op::Contrast | Op::Brightness | Op::Sharpness => level * 1.8 + 0.1,
            Op::ColorIncreasing
            | Op::ContrastIncreasing
            | Op::BrightnessIncreasing
            | Op::SharpnessIncreasing => (1.0 + sign(level * 0.9)).max(0.1),
            Op::ShearX | Op::ShearY => sign(level * 0.3),
            Op::TranslateXRel | Op::TranslateYRel => sign(level * 0.45),
        }
    }
}

/// A `width × height × channels` (1 or 3) image in HWC bytes.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The pixels.
    pub pixels: &'a [u8],
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Channels (1 or 3).
    pub channels: usize,
}

/// Applies `op` with argument `arg` ([`Op::arg`]) to `img`, writing the result into `out`
/// (resized to fit); `fill` (one byte per channel) colours what a geometric op uncovers. An empty
/// image, one whose bytes do not fit its size, or one of other than 1 to 4 channels is an error.
pub fn apply_op(
    op: Op,
    arg: f64,
    img: View<'_>,
    fill: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), DataError> {
    let fits = img
        .width
        .checked_mul(img.height)
        .and_then(|n| n.checked_mul(img.channels))
        == Some(img.pixels.len());
    let empty = img.width == 0 || img.height == 0;
    if !fits || empty || !(1..=4).contains(&img.channels) || fill.len() < img.channels {
        return Err(DataError::Option(format!(
            "RandAugment: {} bytes with a fill of {} for a {}×{}×{} image (1 to 4 channels)",
            img.pixels.len(),
            fill.len(),
            img.width,
            img.height,
            img.channels
        )));
    }
    out.clear();
    out.extend_from_slice(img.pixels);
    match op {
        Op::AutoContrast => per_channel_lut(img, out, autocontrast_lut),
        Op::Equalize => per_channel_lut(img, out, equalize_lut),
        Op::Invert => lut(out, |v| 255 - v),
        Op::Posterize | Op::PosterizeIncreasing => {
            // 0 bits: black, as Pillow < 11 (see the module docs)
            let mask = if arg >= 8.0 {
                0xff
            } else {
                !((1u32 << (8 - arg.max(0.0) as u32)) - 1) as u8
            };
            lut(out, |v| v & mask)
        }
        Op::Solarize | Op::SolarizeIncreasing => {
            lut(out, |v| if (v as f64) < arg { v } else { 255 - v })
        }
        Op::SolarizeAdd => lut(out, |v| {
            if v < 128 {
                (v as f64 + arg).min(255.0) as u8
            } else {
                v
            }
        }),
        Op::Color | Op::ColorIncreasing => {
            if img.channels == 3 {
                let grey: Vec<u8> = img
                    .pixels
                    .chunks_exact(3)
                    .flat_map(|p| [l24(p); 3])
                    .collect();
                blend(&grey, img.pixels, arg, out);
            }
        }
        Op::Contrast | Op::ContrastIncreasing => {
            let mean = grey_mean(img);
            let degenerate = vec![mean; img.pixels.len()];
            blend(&degenerate, img.pixels, arg, out);
        }
        Op::Brightness | Op::BrightnessIncreasing => {
            let black = vec![0; img.pixels.len()];
            blend(&black, img.pixels, arg, out);
        }
        Op::Sharpness | Op::SharpnessIncreasing => {
            let smooth = smooth3x3(img);
            blend(&smooth, img.pixels, arg, out);
        }
        Op::Rotate => rotate(img, arg, fill, out),
        Op::ShearX => affine(img, [1.0, arg, 0.0, 0.0, 1.0, 0.0], fill, out),
        Op::ShearY => affine(img, [1.0, 0.0, 0.0, arg, 1.0, 0.0], fill, out),
        Op::TranslateXRel => {
            let pixels = arg * img.width as f64;
            affine(img, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], fill, out)
        }
        Op::TranslateYRel => {
            let pixels = arg * img.height as f64;
            affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], fill, out)
        }
    }
    Ok(())
}

fn lut(out: &mut [u8], f: impl Fn(u8) -> u8) {
    let table: [u8; 256] = std::array::from_fn(|v| f(v as u8));
    for v in out.iter_mut() {
        *v = table[*v as usize];
    }
}

/// Each channel of `out` through the table `make` builds from that channel's histogram.
fn per_channel_lut(img: View<'_>, out: &mut [u8], make: fn(&[u64; 256]) -> [u8; 256]) {
    let c = img.channels;
    for ch in 0..c {
        let mut hist = [0u64; 256];
        for &v in img.pixels.iter().skip(ch).step_by(c) {
            hist[v as usize] += 1;
        }
        let table = make(&hist);
        for v in out.iter_mut().skip(ch).step_by(c) {
            *v = table[*v as usize];
        }
    }
}

/// `ImageOps.autocontrast` without cutoff: the lowest value present to 0, the highest to 255.
fn autocontrast_lut(h: &[u64; 256]) -> [u8; 256] {
    let lo = h.iter().position(|&n| n > 0).unwrap_or(0);
    let hi = h.iter().rposition(|&n| n > 0).unwrap_or(0);
    if hi <= lo {
        return std::array::from_fn(|i| i as u8);
    }
    let scale = 255.0 / (hi - lo) as f64;
    let offset = -(lo as f64) * scale;
    std::array::from_fn(|i| ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8)
}

/// `ImageOps.equalize`: Pillow's cumulative-histogram table.
fn equalize_lut(h: &[u64; 256]) -> [u8; 256] {
    let present: Vec<u64> = h.iter().copied().filter(|&n| n > 0).collect();
    let identity = std::array::from_fn(|i| i as u8);
    let Some(&last) = present.last() else {
        return identity;
    };
    if present.len() <= 1 {
        return identity;
    }
    let step = (present.iter().sum::<u64>() - last) / 255;
    if step == 0 {
        return identity;
    }
    let mut n = step / 2;
    std::array::from_fn(|i| {
        let v = (n / step).min(255) as u8;
        n += h[i];
        v
    })
}

/// Pillow's RGB → L (`L24`): ITU-R 601-2 luma in 16-bit fixed point, rounded.
fn l24(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `ImageEnhance.Contrast`'s grey level: the mean of the L image, rounded half up.
fn grey_mean(img: View<'_>) -> u8 {
    let n = (img.width * img.height).max(1) as f64;
    let sum: u64 = if img.channels == 3 {
        img.pixels.chunks_exact(3).map(|p| l24(p) as u64).sum()
    } else {
        img.pixels.iter().map(|&v| v as u64).sum()
    };
    (sum as f64 / n + 0.5) as u8
}

/// `Image.blend(a, b, alpha)` (`ImagingBlend`): `a + alpha·(b − a)` in f32, truncated, clipped
/// when `alpha` extrapolates.
fn blend(a: &[u8], b: &[u8], alpha: f64, out: &mut [u8]) {
    let alpha = alpha as f32;
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        let v = a as i32 as f32 + alpha * (b as i32 - a as i32) as f32;
        *o = if v <= 0.0 {
            0
        } else if v >= 255.0 {
            255
        } else {
            v as u8
        };
    }
}

/// `ImageFilter.SMOOTH` (3×3 kernel 1 1 1 / 1 5 1 / 1 1 1 over 13), as `ImagingFilter3x3`: f32
/// sums row by row (the row below first), rounded; the outermost rows and columns copied.
fn smooth3x3(img: View<'_>) -> Vec<u8> {
    let (w, h, c) = (img.width, img.height, img.channels);
    let mut out = img.pixels.to_vec();
    if w < 3 || h < 3 {
        return out;
    }
    let (k1, k5) = (1.0f32 / 13.0, 5.0f32 / 13.0);
    let line = w * c;
    for y in 1..h - 1 {
        let up = &img.pixels[(y - 1) * line..y * line];
        let mid = &img.pixels[y * line..(y + 1) * line];
        let down = &img.pixels[(y + 1) * line..(y + 2) * line];
        let o = &mut out[y * line..(y + 1) * line];
        for i in c..line - c {
            let row = |r: &[u8], centre: f32| {
                r[i - c] as f32 * k1 + r[i] as f32 * centre + r[i + c] as f32 * k1
            };
            let mut ss = 0.0f32;
            ss += row(down, k1);
            ss += row(mid, k5);
            ss += row(up, k1);
            o[i] = clip8(ss);
        }
    }
    out
}

/// Pillow's `clip8` of Filter.c: rounded to the nearest byte.
fn clip8(v: f32) -> u8 {
    if v <= 0.0 {
        0
    } else if v >= 255.0 {
        255
    } else {
        (v + 0.5) as u8
    }
}

/// Python's `round(v, 15)`: the nearest double to `v` rounded to 15 decimals.
fn round15(v: f64) -> f64 {
    format!("{v:.15}").parse().unwrap_or(v)
}

/// `Image.rotate(degrees, BICUBIC, fillcolor=fill)` about the centre, the size kept.
fn rotate(img: View<'_>, degrees: f64, fill: &[u8], out: &mut [u8]) {
    if degrees % 360.0 == 0.0 {
        return;
    }
    let (cx, cy) = (img.width as f64 / 2.0, img.height as f64 / 2.0);
    let angle = -degrees.to_radians();
    let (cos, sin) = (round15(angle.cos()), round15(angle.sin()));
    let mut m = [cos, sin, 0.0, round15(-angle.sin()), cos, 0.0];
    m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx;
    m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy;
    affine(img, m, fill, out)
}

/// `Image.transform(size, AFFINE, m, BICUBIC, fillcolor=fill)`: output pixel `(x, y)` samples the
/// source at `(m0·(x+½) + m1·(y+½) + m2, m3·(x+½) + m4·(y+½) + m5)` with Pillow's
/// `bicubic_filter8/32RGB` (the 4×4 neighbourhood clamped to the edges, each channel truncated to
/// a byte); outside the source, `fill`.
fn affine(img: View<'_>, m: [f64; 6], fill: &[u8], out: &mut [u8]) {
    let (w, h, c) = (img.width, img.height, img.channels);
    let (wf, hf) = (w as f64, h as f64);
    let (x_last, y_last) = (w as isize - 1, h as isize - 1);
    for y in 0..h {
        let yo = y as f64 + 0.5;
        for x in 0..w {
            let xo = x as f64 + 0.5;
            let xin = m[0] * xo + m[1] * yo + m[2];
            let yin = m[3] * xo + m[4] * yo + m[5];
            let o = &mut out[(y * w + x) * c..][..c];
            if !(xin >= 0.0 && xin < wf && yin >= 0.0 && yin < hf) {
                o.copy_from_slice(&fill[..c]);
                continue;
            }
            let (xs, ys) = (xin - 0.5, yin - 0.5);
            let (fx, fy) = (xs.floor(), ys.floor());
            let (dx, dy) = (xs - fx, ys - fy);
            let (x0, y0) = (fx as isize - 1, fy as isize - 1);
            let cols: [usize; 4] =
                std::array::from_fn(|i| (x0 + i as isize).clamp(0, x_last) as usize * c);
            let rows: [usize; 4] =
                std::array::from_fn(|i| (y0 + i as isize).clamp(0, y_last) as usize * w * c);
            // the cubic at d = 0 is its second value exactly: a shear or translation along one
            // axis samples whole rows or columns, and skips three of the four cubics
            // the horizontal cubic of each of the 4 rows, every channel (at most 4)
            let mut across = [[0f64; 4]; 4];
            for (k, &r) in rows.iter().enumerate() {
                if dy == 0.0 && k != 1 {
                    continue;
                }
                let line = &img.pixels[r..r + w * c];
                for (ch, a) in across[k].iter_mut().take(c).enumerate() {
                    let v = |i: usize| line[cols[i] + ch] as f64;
                    *a = match dx == 0.0 {
                        true => v(1),
                        false => cubic(v(0), v(1), v(2), v(3), dx),
                    };
                }
            }
            for (ch, o) in o.iter_mut().enumerate() {
                let a = |k: usize| across[k][ch];
                let v = match dy == 0.0 {
                    true => a(1),
                    false => cubic(a(0), a(1), a(2), a(3), dy),
                };
                *o = if v <= 0.0 {
                    0
                } else if v >= 255.0 {
                    255
                } else {
                    v as u8
                };
            }
        }
    }
}

/// Pillow's `a = −1` cubic through `v1..v4` at `d` (between `v2` and `v3`).
fn cubic(v1: f64, v2: f64, v3: f64, v4: f64, d: f64) -> f64 {
    let p1 = v2;
    let p2 = -v1 + v3;
    let p3 = 2.0 * (v1 - v2) + v3 - v4;
    let p4 = -v1 + v2 - v3 + v4;
    p1 + d * (p2 + d * (p3 + d * p4))
}

/// A RandAugment policy: `num_layers` ops a sample, each applied with probability `prob` at a
/// magnitude around `magnitude`.
#[derive(Debug, Clone, PartialEq)]
pub struct RandAugment {
    /// The ops drawn from (with replacement, uniformly).
    pub ops: Vec<Op>,
    /// Ops a sample (`n`, 2).
    pub num_layers: usize,
    /// Probability of applying each drawn op (`p`, 0.5).
    pub prob: f64,
    /// Magnitude (`m`, 10 unless given; the recipe's 9).
    pub magnitude: f64,
    /// Std of the magnitude's noise (`mstd`): 0 none, infinite for uniform in `[0, m]`.
    pub magnitude_std: f64,
    /// Upper clamp of the magnitude (`mmax`, 10).
    pub magnitude_max: f64,
    /// The spec it was parsed from.
    pub spec: String,
}

impl FromStr for RandAugment {
    type Err = DataError;

    /// timm's `rand_augment_transform` config string: `rand` then `-`-separated sections `mN`,
    /// `nN`, `pF`, `mstdF` (over 100: uniform), `mmaxN`, `incB`.
    fn from_str(spec: &str) -> Result<Self, DataError> {
        let bad = |why: String| DataError::Option(format!("--aa {spec}: {why}"));
        let mut sections = spec.split('-');
        if sections.next() != Some("rand") {
            return Err(bad(
                "only RandAugment (`rand-...`, e.g. the recipe's rand-m9-mstd0.5-inc1) is supported"
                    .into(),
            ));
        }
        let mut ra = RandAugment {
            ops: Op::RAND.to_vec(),
            num_layers: 2,
            prob: 0.5,
            magnitude: LEVEL_DENOM,
            magnitude_std: 0.0,
            magnitude_max: LEVEL_DENOM,
            spec: spec.to_string(),
        };
        for section in sections {
            let split = section
                .find(|ch: char| ch.is_ascii_digit())
                .ok_or_else(|| bad(format!("section `{section}` has no number")))?;
            let (key, value) = section.split_at(split);
            let num = |what: &str| -> Result<f64, DataError> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad(format!("`{section}`: {what} must be a number ≥ 0")))
            };
            match key {
                "m" => ra.magnitude = num("the magnitude")?.trunc(),
                "n" => ra.num_layers = num("the number of ops")?.min(64.0) as usize,
                "p" => ra.prob = num("the probability")?.min(1.0),
                "mstd" => {
                    let std = num("the magnitude std")?;
                    ra.magnitude_std = if std > 100.0 { f64::INFINITY } else { std };
                }
                "mmax" => ra.magnitude_max = num("the magnitude bound")?.trunc(),
                "inc" => {
                    ra.ops = if num("inc")? != 0.0 {
                        Op::RAND_INCREASING.to_vec()
                    } else {
                        Op::RAND.to_vec()
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "unknown section `{section}` (m, n, p, mstd, mmax, inc)"
                    )))
                }
            }
        }
        Ok(ra)
    }
}

/// What one sample's RandAugment chose: per drawn op, whether it ran, its magnitude and sign.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawn {
    /// The op.
    pub op: Op,
    /// Whether it was applied (probability `prob`).
    pub applied: bool,
    /// Its magnitude, after the noise and the clamp.
    pub magnitude: f64,
    /// Whether a signed op's argument was negated.
    pub negative: bool,
}

impl RandAugment {
    /// The draws of one sample, in timm's order: the ops, then for each the coin, the magnitude
    /// (`gauss(m, mstd)` or `uniform(0, m)`, clamped to `[0, mmax]`) and the sign.
    pub fn draw(&self, rng: &mut impl Rng) -> Vec<Drawn> {
        if self.ops.is_empty() {
            return Vec::new();
        }
        let picks: Vec<Op> = (0..self.num_layers)
            .map(|_| self.ops[rng.gen_range(0..self.ops.len())])
            .collect();
        picks
            .into_iter()
            .map(|op| {
                let applied = self.prob >= 1.0 || rng.gen::<f64>() <= self.prob;
                let mut magnitude = self.magnitude;
                if applied {
                    if self.magnitude_std.is_infinite() {
                        magnitude = rng.gen::<f64>() * self.magnitude;
                    } else if self.magnitude_std > 0.0 {
                        if let Ok(n) = Normal::new(self.magnitude, self.magnitude_std) {
                            magnitude = n.sample(rng);
                        }
                    }
                }
                let magnitude = magnitude.min(self.magnitude_max).max(0.0);
                let negative = applied && op.signed() && rng.gen::<f64>() > 0.5;
                Drawn {
                    op,
                    applied,
                    magnitude,
                    negative,
                }
            })
            .collect()
    }

    /// Applies the ops `drawn` to the `width × height × channels` image in `pixels` (in place;
    /// `scratch` is reused), filling uncovered pixels with `fill` ([`apply_op`]'s errors).
    pub fn apply(
        drawn: &[Drawn],
        pixels: &mut Vec<u8>,
        (width, height, channels): (usize, usize, usize),
        fill: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), DataError> {
        for d in drawn.iter().filter(|d| d.applied) {
            let img = View {
                pixels,
                width,
                height,
                channels,
            };
            apply_op(d.op, d.op.arg(d.magnitude, d.negative), img, fill, scratch)?;
            std::mem::swap(pixels, scratch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_recipe_spec_parses_as_timm_reads_it() {
        let ra: RandAugment = "rand-m9-mstd0.5-inc1".parse().expect("the recipe");
        assert_eq!(ra.ops, Op::RAND_INCREASING.to_vec());
        assert_eq!((ra.num_layers, ra.prob, ra.magnitude), (2, 0.5, 9.0));
        assert_eq!((ra.magnitude_std, ra.magnitude_max), (0.5, 10.0));
        let plain: RandAugment = "rand-m7-n3-p0.8-mstd101".parse().expect("parses");
        assert_eq!(plain.ops, Op::RAND.to_vec());
        assert_eq!((plain.num_layers, plain.prob), (3, 0.8));
        assert!(plain.magnitude_std.is_infinite());
        for bad in [
            "autoaug",
            "rand-x9",
            "rand-m",
            "rand-mNaN",
            "rand-p-1",
            "augmix-m3",
        ] {
            let err = bad.parse::<RandAugment>().expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn draws_follow_the_policy() {
        let ra: RandAugment = "rand-m9-mstd0.5-inc1".parse().expect("the recipe");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (mut applied, mut n, mut sum, mut sq, mut neg, mut signed) = (0, 0, 0.0, 0.0, 0, 0);
        let mut seen = std::collections::HashSet::new();
        let mut at_max = 0;
        for _ in 0..20_000 {
            let d = ra.draw(&mut rng);
            assert_eq!(d.len(), 2);
            for d in d {
                seen.insert(format!("{:?}", d.op));
                if !d.applied {
                    continue;
                }
                applied += 1;
                assert!((0.0..=10.0).contains(&d.magnitude));
                at_max += (d.magnitude == 10.0) as usize;
                n += 1;
                sum += d.magnitude;
                sq += d.magnitude * d.magnitude;
                if d.op.signed() {
                    signed += 1;
                    neg += d.negative as usize;
                }
            }
        }
        assert_eq!(seen.len(), 15);
        let rate = applied as f64 / 40_000.0;
        assert!((rate - 0.5).abs() < 0.02, "{rate}");
        let mean = sum / n as f64;
        let std = (sq / n as f64 - mean * mean).sqrt();
        assert!(
            (mean - 9.0).abs() < 0.03 && (std - 0.5).abs() < 0.03,
            "{mean} {std}"
        );
        // N(9, 0.5) is above 10 2.3% of the time: clamped there
        let clamped = at_max as f64 / n as f64;
        assert!((clamped - 0.0228).abs() < 0.006, "{clamped}");
        let neg = neg as f64 / signed as f64;
        assert!((neg - 0.5).abs() < 0.03, "{neg}");
        // no ops to draw from: nothing drawn, no panic
        let none = RandAugment {
            ops: Vec::new(),
            ..ra
        };
        assert!(none.draw(&mut rng).is_empty());
    }

    #[test]
    fn images_that_do_not_fit_are_errors() {
        let mut out = Vec::new();
        let view = |pixels: &'static [u8], width, height, channels| View {
            pixels,
            width,
            height,
            channels,
        };
        let fill = [0u8; 5];
        for bad in [
            view(&[0; 11], 2, 2, 3),
            view(&[0; 10], 1, 2, 5),
            view(&[0; 0], 0, usize::MAX, 3),
        ] {
            assert!(apply_op(Op::Rotate, 9.0, bad, &fill, &mut out).is_err());
        }
        assert!(apply_op(
            Op::Rotate,
            9.0,
            view(&[0; 12], 2, 2, 3),
            &fill[..2],
            &mut out
        )
        .is_err());
        assert!(apply_op(Op::Rotate, 9.0, view(&[7; 12], 2, 2, 3), &fill, &mut out).is_ok());
        assert_eq!(out.len(), 12);
    }

    #[test]
    fn args_are_timms_levels() {
        // at the recipe's magnitude 9
        assert_eq!(Op::PosterizeIncreasing.arg(9.0, false), 1.0);
        assert_eq!(Op::PosterizeIncreasing.arg(10.0, false), 0.0);
        assert_eq!(Op::SolarizeIncreasing.arg(9.0, false), 26.0);
        assert_eq!(Op::SolarizeAdd.arg(9.0, false), 99.0);
        assert!((Op::Rotate.arg(9.0, true) + 27.0).abs() < 1e-12);
        assert!((Op::ContrastIncreasing.arg(9.0, true) - 0.19).abs() < 1e-12);
        assert!((Op::ContrastIncreasing.arg(10.0, true) - 0.1).abs() < 1e-12);
        assert!((Op::Color.arg(9.0, false) - 1.72).abs() < 1e-12);
    }
}
