//! A grid of samples with their class names as a PNG, for a person to look at
//! (`mae data show`).

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

/// `text` broken at spaces into lines of at most `max_chars` characters (a word longer than a
/// line is cut into pieces): what [`draw_text`] draws whole, one line under the other.
pub fn wrap(text: &str, max_chars: usize) -> Vec<String> {
    let max = max_chars.max(1);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let chars: Vec<char> = word.chars().collect();
        for piece in chars.chunks(max) {
            let piece: String = piece.iter().collect();
            let len = line.chars().count();
            if len > 0 && len + 1 + piece.chars().count() > max {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&piece);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The most pixels a picture drawn here may have (64 Mi: 192 MiB of RGB).
pub const MAX_PIXELS: u64 = 1 << 26;

/// Width and height of a grid of `n` cells of `cell_w × cell_h` pixels, `cols` to a row (at most
/// `n`), computed without overflow; an error above [`MAX_PIXELS`] or a PNG's side limit.
pub fn grid_size(n: usize, cols: usize, cell_w: u64, cell_h: u64) -> Result<(u32, u32), DataError> {
    let cols = cols.min(n).max(1) as u64;
    let rows = (n as u64).div_ceil(cols);
    let size = cols
        .checked_mul(cell_w)
        .zip(rows.checked_mul(cell_h))
        .filter(|&(w, h)| w.checked_mul(h).is_some_and(|p| p <= MAX_PIXELS));
    match size {
        Some((w, h)) => Ok((w as u32, h as u32)),
        None => Err(DataError::Option(format!(
            "a grid of {n} images, {cols} to a row, would be larger than {MAX_PIXELS} pixels: \
             show fewer (--count) or change --cols"
        ))),
    }
}

/// The first `count` samples of `split` as a grid (`cols` per row, at most `count`), each scaled
/// up to at least 96 pixels and captioned with its class name (or index when unlabeled), and the
/// number of samples shown. `mae data show` writes it as a PNG ([`crate::png::encode`]).
pub fn grid(
    dataset: &Dataset,
    split: SplitName,
    count: usize,
    cols: usize,
) -> Result<(RgbImage, usize), DataError> {
    let data = dataset.split(split);
    let n = count.min(data.len());
    if n == 0 || cols == 0 {
        return Err(DataError::Option("nothing to show".into()));
    }
    let cols = cols.min(n);
    let s = dataset.image_size();
    let c = dataset.channels();
    let zoom = (96 / s).max(1);
    let cell = (s * zoom) as u32;
    let caption = 2 * GLYPH;
    let (width, height) = grid_size(n, cols, cell as u64 + 4, (cell + caption) as u64 + 4)?;
    let mut img = RgbImage::new(width, height);
    let classes = &dataset.manifest().classes;
    let mut decoded = Vec::new();
    for i in 0..n {
        let Some(sample) = data.get(i) else { break };
        let pixels = sample.pixels(&mut decoded)?;
        // the centred square of each image, nearest-neighbour into the cell
        let (w, h) = (sample.width, sample.height);
        let side = w.min(h);
        let (left, top) = ((w - side) / 2, (h - side) / 2);
        let (cx, cy) = (
            (i % cols) as u32 * (cell + 4),
            (i / cols) as u32 * (cell + caption + 4),
        );
        for y in 0..cell {
            for x in 0..cell {
                let sy = top + y as usize * side / cell as usize;
                let sx = left + x as usize * side / cell as usize;
                let p = (sy * w + sx) * c;
                let px = if c == 1 {
                    let v = pixels[p];
                    [v, v, v]
                } else {
                    [pixels[p], pixels[p + 1], pixels[p + 2]]
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
    Ok((img, n))
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrapped_lines_fit_and_keep_every_word_in_order() {
        let text = "norm-pix: predictions un-normalized with the true patch mean/var";
        for max in [1, 5, 12, 20, 58, 200] {
            let lines = wrap(text, max);
            assert!(
                lines.iter().all(|l| l.chars().count() <= max),
                "{max}: {lines:?}"
            );
            let joined: String = lines.concat().split_whitespace().collect();
            let want: String = text.split_whitespace().collect();
            assert_eq!(joined, want, "{max}");
        }
        assert_eq!(wrap(text, 200), vec![text.to_string()]);
        assert_eq!(wrap("abcdefgh ij", 3), vec!["abc", "def", "gh", "ij"]);
        assert!(wrap("   ", 4).is_empty());
    }
}
