//! Reconstructions in the layout of the paper's Figure 2 — original | masked | reconstruction |
//! reconstruction with the visible patches pasted in — as a PNG, one row per image.
//!
//! PyTorch counterpart: `demo/mae_visualize.ipynb` (`run_one_image`): for `norm_pix_loss` models
//! the predicted patches are un-normalized with the true patches' mean and variance before
//! display, which the image's caption says.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use mae_core::dfdx::prelude::*;
use mae_core::{Mae, MaePreset, Masking, PatchGeometry};
use mae_data::augment::{normalization, Augment, Transform};
use mae_data::preview::{draw_text, wrap, GLYPH};
use mae_data::resize::Resizer;
use mae_data::Dataset;
use rand::SeedableRng;

use crate::checkpoint::preset_of;
use crate::config::PretrainConfig;
use crate::device::{dispatch, Job, RunDevice};
use crate::error::TrainError;

/// Where the images come from.
#[derive(Debug, Clone)]
pub enum ImagesFrom {
    /// The first images of a prepared dataset's validation split (train if it has none).
    Data(PathBuf),
    /// Image files.
    Files(Vec<PathBuf>),
}

/// Options of [`reconstruct`].
#[derive(Debug, Clone)]
pub struct ReconstructOptions {
    /// Model checkpoint (`checkpoint-<step>.safetensors`).
    pub checkpoint: PathBuf,
    /// The images.
    pub images: ImagesFrom,
    /// Output PNG.
    pub out: PathBuf,
    /// Mask ratio (default: the checkpoint's).
    pub mask_ratio: Option<f64>,
    /// Seed of the masks.
    pub seed: u64,
    /// Number of images (for `Data`).
    pub count: usize,
    /// Where the model runs.
    pub device: crate::device::DeviceKind,
}

/// What [`reconstruct`] did.
#[derive(Debug, Clone)]
pub struct ReconstructSummary {
    /// Images shown.
    pub count: usize,
    /// Loss on them.
    pub loss: f32,
    /// Whether predictions were un-normalized with the true patch statistics.
    pub norm_pix: bool,
}

/// The most images one grid shows (one row each).
pub const MAX_IMAGES: usize = 256;

/// Writes the reconstruction grid.
pub fn reconstruct(opts: &ReconstructOptions) -> Result<ReconstructSummary, TrainError> {
    let count = match &opts.images {
        ImagesFrom::Data(_) => opts.count,
        ImagesFrom::Files(files) => files.len(),
    };
    crate::config::check_count("count", count, 1, MAX_IMAGES)?;
    if let Some(r) = opts.mask_ratio {
        mae_core::masking::check_mask_ratio(r)?;
    }
    dispatch(preset_of(&opts.checkpoint)?, opts.device, 0, Draw(opts))
}

/// The grid, as a [`Job`].
struct Draw<'a>(&'a ReconstructOptions);

impl Job for Draw<'_> {
    type Output = ReconstructSummary;
    fn run<P: MaePreset, D: RunDevice>(self, dev: D) -> Result<ReconstructSummary, TrainError> {
        let opts = self.0;
        let mut model = Mae::<P, f32, D>::new(&dev)?;
        let (file, _) = mae_core::model_files::open_weights(&opts.checkpoint)?;
        model.load_from(&file, "")?;
        let config: Option<PretrainConfig> = file
            .metadata()?
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok());
        let norm_pix = config.as_ref().is_some_and(|c| c.model.norm_pix_loss);
        let mask_ratio = opts
            .mask_ratio
            .or(config.as_ref().map(|c| c.model.mask_ratio))
            .unwrap_or(mae_core::masking::DEFAULT_MASK_RATIO);
        mae_core::masking::check_len_keep(P::num_patches(), mask_ratio)?;
        let (c, s) = (P::IN_CHANS, P::IMG_SIZE);

        // the images as u8 HWC (with their width and height), and the normalization of training
        type Source = (Vec<u8>, usize, usize);
        let (sources, mean, std): (Vec<Source>, _, _) = match &opts.images {
            ImagesFrom::Data(dir) => {
                let data = Dataset::open(dir)?;
                if data.channels() != c {
                    return Err(TrainError::Config(format!(
                        "{}: {} channel(s), the checkpoint's preset {} takes {c}",
                        dir.display(),
                        data.channels(),
                        P::PRESET
                    )));
                }
                let split = if data.val().is_empty() {
                    data.train()
                } else {
                    data.val()
                };
                let mut decoded = Vec::new();
                let sources = (0..opts.count.min(split.len()))
                    .filter_map(|i| split.get(i))
                    .map(|sample| {
                        let pixels = sample.pixels(&mut decoded)?.to_vec();
                        Ok((pixels, sample.width, sample.height))
                    })
                    .collect::<Result<Vec<_>, TrainError>>()?;
                let (mean, std) = normalization(data.manifest(), false);
                (sources, mean, std)
            }
            ImagesFrom::Files(files) => {
                // the statistics of the training data: its manifest is enough (no shard is read)
                let (mean, std) = crate::features::training_normalization(&file, c)?;
                let sources = files
                    .iter()
                    .map(|f| Ok(mae_data::prepare::load_image(f, s, c)?))
                    .collect::<Result<Vec<_>, TrainError>>()?;
                (sources, mean, std)
            }
        };
        let eval = Augment::new(Transform::Eval { crop_pct: 1.0 }, s, &mean, &std, 0)?;
        let per = c * s * s;
        let mut pixels = vec![0f32; sources.len() * per];
        let mut resizer = Resizer::new();
        let mut scratch = Vec::new();
        for (i, (img, w, h)) in sources.iter().enumerate() {
            eval.apply(
                &mut resizer,
                &mut scratch,
                img,
                (*w, *h),
                0,
                i as u64,
                &mut pixels[i * per..(i + 1) * per],
            )?;
        }
        let n = pixels.len() / (c * s * s);
        if n == 0 {
            return Err(TrainError::Config("no image to reconstruct".into()));
        }
        let geometry = PatchGeometry::of::<P>();
        let l = geometry.num_patches();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
        let masking = Masking::random(&mut rng, n, l, mask_ratio)?;
        let out = model.forward(&pixels, &masking, norm_pix, NoneTape)?;
        let loss = out.loss.as_vec()[0];
        let mut pred = out.pred.as_vec();
        let target = geometry.patchify(&pixels)?;
        let pd = geometry.patch_dim();
        if norm_pix {
            for (p, t) in pred.chunks_exact_mut(pd).zip(target.chunks_exact(pd)) {
                let mean = t.iter().map(|&v| v as f64).sum::<f64>() / pd as f64;
                let var =
                    t.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (pd as f64 - 1.0);
                let scale = (var + 1e-6).sqrt();
                for v in p.iter_mut() {
                    *v = (*v as f64 * scale + mean) as f32;
                }
            }
        }
        // masked view (removed patches at 0 = the mean colour) and the pasted reconstruction
        let mut masked = target.clone();
        let mut pasted = target.clone();
        for i in 0..n * l {
            if masking.mask[i] == 1.0 {
                masked[i * pd..(i + 1) * pd]
                    .iter_mut()
                    .for_each(|v| *v = 0.0);
                pasted[i * pd..(i + 1) * pd].copy_from_slice(&pred[i * pd..(i + 1) * pd]);
            }
        }
        let columns = [
            pixels.clone(),
            geometry.unpatchify(&masked)?,
            geometry.unpatchify(&pred)?,
            geometry.unpatchify(&pasted)?,
        ];
        let titles = ["original", "masked", "reconstruction", "+ visible"];
        write_grid(
            &opts.out, &columns, &titles, n, c, s, &mean, &std, norm_pix, mask_ratio,
        )?;
        Ok(ReconstructSummary {
            count: n,
            loss,
            norm_pix,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn write_grid(
    out: &Path,
    columns: &[Vec<f32>],
    titles: &[&str],
    n: usize,
    c: usize,
    s: usize,
    mean: &[f64],
    std: &[f64],
    norm_pix: bool,
    mask_ratio: f64,
) -> Result<(), TrainError> {
    let zoom = (128 / s).max(1);
    let cell = (s * zoom) as u32;
    let gap = 4u32;
    let header = 2 * GLYPH + 4;
    let width = (columns.len() as u32 * (cell + gap) + gap).max(40 * GLYPH);
    // the footer's lines, wrapped to the picture's width
    let mut notes = vec![format!("mask ratio {:.0}%", mask_ratio * 100.0)];
    if norm_pix {
        notes.push("norm-pix: predictions un-normalized with the true patch mean/var".into());
    }
    let per_line = ((width - gap) / GLYPH) as usize;
    let footer_lines: Vec<String> = notes.iter().flat_map(|n| wrap(n, per_line)).collect();
    let footer = footer_lines.len() as u32 * (GLYPH + 1) + 4;
    let height = header + n as u32 * (cell + gap) + footer;
    let mut img = RgbImage::from_pixel(width, height, Rgb([24, 24, 24]));
    for (col, title) in titles.iter().enumerate() {
        draw_text(
            &mut img,
            gap + col as u32 * (cell + gap),
            4,
            title,
            (cell / GLYPH) as usize,
        );
    }
    for (col, data) in columns.iter().enumerate() {
        for i in 0..n {
            let (x0, y0) = (
                gap + col as u32 * (cell + gap),
                header + i as u32 * (cell + gap),
            );
            for y in 0..cell {
                for x in 0..cell {
                    let (py, px) = (y as usize / zoom, x as usize / zoom);
                    let mut rgb = [0u8; 3];
                    for (ch, out) in rgb.iter_mut().enumerate() {
                        let cc = ch.min(c - 1);
                        let v = data[((i * c + cc) * s + py) * s + px] as f64 * std[cc] + mean[cc];
                        *out = (v * 255.0).round().clamp(0.0, 255.0) as u8;
                    }
                    img.put_pixel(x0 + x, y0 + y, Rgb(rgb));
                }
            }
        }
    }
    for (k, line) in footer_lines.iter().enumerate() {
        let y = height - footer + 2 + k as u32 * (GLYPH + 1);
        draw_text(&mut img, gap, y, line, per_line);
    }
    let png = mae_data::png::encode(&img, "reconstruct")?;
    Ok(mae_core::weights::write_atomic(out, &png)?)
}
