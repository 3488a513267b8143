//! A grid of samples with their class names as a PNG, for a person to look at
//! (`mae data show`).

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::dataset::{Dataset, SplitName};
use crate::error::DataError;

/// Width and height of one glyph of [`draw_text`].
pub const GLYPH: u32 = 8;

/// Draws `text` (at most `max_chars` characters, 8×8 bitmap font, yellow) with its top-left
/// corner at `(x0, y0)`; pixels outside the image are skipped.
pub fn draw_text(img: &mut RgbImage, x0: u32, y0: u32, text: &str, max_chars: usize) {
    use font8x8::UnicodeFonts;
    for (i, ch) in text.chars().take(max_chars).enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'));
        let Some(rows) = glyph else { continue };
        for (dy, row) in rows.iter().enumerate() {
            for dx in 0..8u32 {
                if row & (1 << dx) != 0 {
                    let (x, y) = (x0 + i as u32 * GLYPH + dx, y0 + dy as u32);
                    if x < img.width() && y < img.height() {
                        img.put_pixel(x, y, Rgb([255, 255, 0]));
                    }
                }
            }
        }
    }
}

/// Writes the first `count` samples of `split` as a grid (`cols` per row), each scaled up to at
/// least 96 pixels and captioned with its class name (or index when unlabeled).
pub fn write_grid(
    dataset: &Dataset,
    split: SplitName,
    count: usize,
    cols: usize,
    out: &Path,
) -> Result<usize, DataError> {
    let data = dataset.split(split);
    let n = count.min(data.len());
    if n == 0 || cols == 0 {
        return Err(DataError::Option("nothing to show".into()));
    }
    let s = dataset.image_size();
    let c = dataset.channels();
    let zoom = (96 / s).max(1);
    let cell = (s * zoom) as u32;
    let caption = 2 * GLYPH;
    let rows = n.div_ceil(cols);
    let mut img = RgbImage::new(cols as u32 * (cell + 4), rows as u32 * (cell + caption + 4));
    let classes = &dataset.manifest().classes;
    for i in 0..n {
        let Some(sample) = data.get(i) else { break };
        let (cx, cy) = (
            (i % cols) as u32 * (cell + 4),
            (i / cols) as u32 * (cell + caption + 4),
        );
        for y in 0..cell {
            for x in 0..cell {
                let p = ((y as usize / zoom) * s + x as usize / zoom) * c;
                let px = if c == 1 {
                    let v = sample.pixels[p];
                    [v, v, v]
                } else {
                    [sample.pixels[p], sample.pixels[p + 1], sample.pixels[p + 2]]
                };
                img.put_pixel(cx + x, cy + y, Rgb(px));
            }
        }
        let name = usize::try_from(sample.label)
            .ok()
            .and_then(|l| classes.get(l).cloned())
            .unwrap_or_else(|| format!("#{i}"));
        draw_text(&mut img, cx, cy + cell + 2, &name, (cell / GLYPH) as usize);
    }
    img.save(out).map_err(|e| DataError::Io {
        path: out.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(n)
}
