//! Loss and learning-rate curves of a run, from `RUN_DIR/metrics.jsonl`, as a PNG.
//!
//! Drawn with the `image` crate and the 8×8 bitmap font of `mae-data` (plotters needs a TrueType
//! font from the system for its labels, which a fresh machine may not have).

use std::path::Path;

use image::{Rgb, RgbImage};
use mae_data::preview::{draw_text, GLYPH};

use crate::error::TrainError;
use crate::runlog::MetricsLine;

/// Reads every line of a `metrics.jsonl`; a malformed line is an error naming its number.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::ConfigFile {
                path: path.to_path_buf(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

fn panel(
    img: &mut RgbImage,
    top: u32,
    h: u32,
    title: &str,
    xs: &[f64],
    ys: &[f64],
    color: Rgb<u8>,
) {
    let (left, right) = (80u32, img.width() - 20);
    let (y_top, y_bottom) = (top + 2 * GLYPH + 6, top + h - 2 * GLYPH - 6);
    let (xmin, xmax) = (
        xs.iter().cloned().fold(f64::INFINITY, f64::min),
        xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    );
    let (ymin, ymax) = (
        ys.iter().cloned().fold(f64::INFINITY, f64::min),
        ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    );
    let xspan = (xmax - xmin).max(1e-12);
    let yspan = (ymax - ymin).max(1e-12 * ymax.abs().max(1e-12));
    let axis = Rgb([160, 160, 160]);
    for x in left..=right {
        img.put_pixel(x, y_bottom, axis);
    }
    for y in y_top..=y_bottom {
        img.put_pixel(left, y, axis);
    }
    draw_text(img, left, top + 2, title, 60);
    draw_text(img, 2, y_top, &format!("{ymax:.3e}"), 9);
    draw_text(img, 2, y_bottom - GLYPH, &format!("{ymin:.3e}"), 9);
    draw_text(img, left, y_bottom + 4, &format!("step {xmin:.0}"), 20);
    let last = format!("step {xmax:.0}");
    draw_text(
        img,
        right.saturating_sub(last.len() as u32 * GLYPH),
        y_bottom + 4,
        &last,
        20,
    );
    let to_px = |x: f64, y: f64| {
        let px = left as f64 + (x - xmin) / xspan * (right - left) as f64;
        let py = y_bottom as f64 - (y - ymin) / yspan * (y_bottom - y_top) as f64;
        (px, py)
    };
    for w in xs.iter().zip(ys).collect::<Vec<_>>().windows(2) {
        let (a, b) = (to_px(*w[0].0, *w[0].1), to_px(*w[1].0, *w[1].1));
        let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
        for k in 0..=steps {
            let t = k as f64 / steps as f64;
            let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
                img.put_pixel(x as u32, y as u32, color);
            }
        }
    }
    if xs.len() == 1 {
        let (x, y) = to_px(xs[0], ys[0]);
        img.put_pixel(x as u32, y as u32, color);
    }
}

/// Draws the loss and learning-rate curves of `run_dir` into `out`; returns the number of points.
pub fn plot_run(run_dir: &Path, out: &Path) -> Result<usize, TrainError> {
    let metrics = read_metrics(&run_dir.join("metrics.jsonl"))?;
    if metrics.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: metrics.jsonl has no line yet",
            run_dir.display()
        )));
    }
    let xs: Vec<f64> = metrics.iter().map(|m| m.step as f64).collect();
    let loss: Vec<f64> = metrics.iter().map(|m| m.loss).collect();
    let lr: Vec<f64> = metrics.iter().map(|m| m.lr).collect();
    let mut img = RgbImage::from_pixel(720, 520, Rgb([16, 16, 16]));
    panel(
        &mut img,
        0,
        260,
        "training loss",
        &xs,
        &loss,
        Rgb([80, 200, 255]),
    );
    panel(
        &mut img,
        260,
        260,
        "learning rate",
        &xs,
        &lr,
        Rgb([255, 160, 60]),
    );
    let png = mae_data::png::encode(&img, "plot")?;
    mae_core::weights::write_atomic(out, &png)?;
    Ok(metrics.len())
}
