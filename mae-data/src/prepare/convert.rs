//! One source image to one record: decode (the format from the contents, EXIF orientation,
//! truncated JPEGs refused), convert to the channel count, resize the shorter side to `--size`
//! keeping the aspect ratio (never enlarging; the longer side capped at [`MAX_ASPECT`]·S by a
//! centre crop), encode.
//!
//! PyTorch counterpart: `PIL.Image.open(path).convert("RGB")` in `ImageFolder`'s loader, then
//! `transforms.Resize(S)` (the shorter side), done once instead of every epoch.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use fast_image_resize::Resizer;
use image::{DynamicImage, ImageReader, Limits};

use crate::error::DataError;
use crate::format::{Encoding, MAX_ASPECT, UNLABELED};
use crate::resize::{resize_crop_into, CropBox, Interpolation};
use crate::writer::{encode_record, Record};

use super::{Item, DEFAULT_MAX_PIXELS};

/// How items become records.
pub(super) struct Convert {
    pub size: usize,
    pub channels: usize,
    pub max_pixels: u64,
    pub encoding: Encoding,
    pub quality: u8,
}

/// The stored size of a `width × height` image at `--size`: the shorter side `min(short, size)`,
/// the longer side scaled alike (rounded) and capped at [`MAX_ASPECT`] times the shorter; and the
/// region of the source that is kept (all of it unless the cap cuts the longer side).
pub fn stored_size(width: usize, height: usize, size: usize) -> (usize, usize, CropBox) {
    let (short, long) = (width.min(height), width.max(height));
    let new_short = short.min(size).max(1);
    let scale = new_short as f64 / short as f64;
    let cap = new_short.saturating_mul(MAX_ASPECT);
    let scaled = ((long as f64 * scale).round() as usize).max(1);
    let new_long = scaled.min(cap);
    // the part of the longer side kept: all of it unless the cap cuts it
    let kept = if scaled > cap {
        (new_long as f64 / scale).min(long as f64)
    } else {
        long as f64
    };
    let (w, h) = if width <= height {
        (new_short, new_long)
    } else {
        (new_long, new_short)
    };
    let crop = if width <= height {
        CropBox {
            left: 0.0,
            top: (height as f64 - kept) / 2.0,
            width: width as f64,
            height: kept,
        }
    } else {
        CropBox {
            left: (width as f64 - kept) / 2.0,
            top: 0.0,
            width: kept,
            height: height as f64,
        }
    };
    (w, h, crop)
}

impl Convert {
    /// The record for `item`; the error is the reason to report.
    pub fn item(&self, resizer: &mut Resizer, item: &Item) -> Result<Record, String> {
        let (pixels, w, h) = self.pixels(resizer, item)?;
        encode_record(
            pixels,
            w,
            h,
            self.channels,
            self.encoding,
            self.quality,
            item.label(),
        )
        .map_err(|e| e.to_string())
    }

    /// The stored pixels of `item` and their width and height.
    pub fn pixels(
        &self,
        resizer: &mut Resizer,
        item: &Item,
    ) -> Result<(Vec<u8>, usize, usize), String> {
        let image = match item {
            Item::File { path, .. } => self.decode(path)?,
            Item::Member {
                tar, offset, len, ..
            } => decode_image(&self.read_member(tar, *offset, *len)?, self.max_pixels)?,
            Item::Raw {
                pixels,
                width,
                height,
                channels,
                ..
            } => {
                let (w, h) = (*width as u32, *height as u32);
                let img = if *channels == 1 {
                    image::GrayImage::from_raw(w, h, pixels.clone()).map(DynamicImage::ImageLuma8)
                } else {
                    image::RgbImage::from_raw(w, h, pixels.clone()).map(DynamicImage::ImageRgb8)
                };
                img.ok_or("record has the wrong number of bytes")?
            }
        };
        let (w, h) = (image.width() as usize, image.height() as usize);
        let src = if self.channels == 1 {
            image.into_luma8().into_raw()
        } else {
            image.into_rgb8().into_raw()
        };
        let (out_w, out_h, crop) = stored_size(w, h, self.size);
        if (out_w, out_h) == (w, h) {
            return Ok((src, w, h));
        }
        let mut out = vec![0u8; out_w * out_h * self.channels];
        resize_crop_into(
            resizer,
            &src,
            w,
            h,
            self.channels,
            crop,
            &mut out,
            out_w,
            out_h,
            Interpolation::Bicubic,
        )
        .map_err(|e| e.to_string())?;
        Ok((out, out_w, out_h))
    }

    fn decode(&self, path: &Path) -> Result<DynamicImage, String> {
        let meta = fs::metadata(path).map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        if meta.len() == 0 {
            return Err("empty file".into());
        }
        let limit = max_alloc(self.max_pixels);
        if meta.len() > limit {
            return Err(format!(
                "{} bytes, more than the {limit} an image of at most {} pixels can need",
                meta.len(),
                self.max_pixels
            ));
        }
        let bytes = fs::read(path).map_err(|e| e.to_string())?;
        decode_image(&bytes, self.max_pixels)
    }
}

impl Convert {
    /// The `len` bytes at `offset` of a tar; the error is the reason to report.
    fn read_member(&self, tar: &Path, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        if len == 0 {
            return Err("empty member".into());
        }
        let limit = max_alloc(self.max_pixels);
        if len > limit {
            return Err(format!(
                "{len} bytes, more than the {limit} an image of at most {} pixels can need",
                self.max_pixels
            ));
        }
        let mut file = fs::File::open(tar).map_err(|e| e.to_string())?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| e.to_string())?;
        let mut bytes = vec![0u8; len as usize];
        file.read_exact(&mut bytes).map_err(|e| {
            format!("the member's {len} bytes at offset {offset} cannot be read (a truncated tar?): {e}")
        })?;
        Ok(bytes)
    }
}

/// The decoder's allocation limit for images of at most `max_pixels` pixels (also the largest
/// image file read).
pub(super) fn max_alloc(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(8).max(64 << 20)
}

/// Decodes an image file's bytes as `prepare` does: the format from the contents, at most
/// `max_pixels` pixels (decompression bombs), EXIF orientation applied, and a JPEG that ends
/// before its end-of-image marker refused as truncated (the decoder would fill the missing part
/// with grey and say nothing). The error is the reason to report.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = reader
        .format()
        .ok_or("not an image (unknown format)".to_string())?;
    if format == image::ImageFormat::Jpeg {
        crate::integrity::jpeg_is_complete(bytes)?;
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_alloc(max_pixels));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(format!(
            "{w}×{h} = {pixels} pixels exceeds the limit of {max_pixels} (decompression bomb?)"
        ));
    }
    if w == 0 || h == 0 {
        return Err(format!("{w}×{h} image"));
    }
    let orientation = image::ImageDecoder::orientation(&mut decoder).map_err(|e| e.to_string())?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// An image file as `prepare` would store it at `size`: decoded (EXIF orientation applied),
/// converted to `channels`, the shorter side resized to `size` (never enlarged), the aspect
/// ratio kept. Returns `(pixels HWC, width, height)`. For tools that take image files directly
/// (`mae reconstruct --image`, `mae embed`).
pub fn load_image(
    path: &Path,
    size: usize,
    channels: usize,
) -> Result<(Vec<u8>, usize, usize), DataError> {
    if size == 0 || !(channels == 1 || channels == 3) {
        return Err(DataError::Option(format!(
            "cannot load images at size {size} with {channels} channels"
        )));
    }
    let convert = Convert {
        size,
        channels,
        max_pixels: DEFAULT_MAX_PIXELS,
        encoding: Encoding::Raw,
        quality: crate::writer::DEFAULT_QUALITY,
    };
    let item = Item::File {
        path: path.to_path_buf(),
        rel: path.display().to_string(),
        label: UNLABELED,
    };
    convert
        .pixels(&mut Resizer::new(), &item)
        .map_err(|reason| DataError::source(path, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_sizes_keep_the_aspect_never_enlarge_and_cap_panoramas() {
        // a 4:3 photo at 256: the shorter side 256, the longer 341
        let (w, h, crop) = stored_size(640, 480, 256);
        assert_eq!((w, h), (341, 256));
        assert_eq!((crop.width, crop.height), (640.0, 480.0));
        // portrait
        assert_eq!(
            stored_size(480, 640, 256).0..=stored_size(480, 640, 256).1,
            256..=341
        );
        // smaller than --size: kept as is
        let (w, h, _) = stored_size(100, 60, 256);
        assert_eq!((w, h), (100, 60));
        // a 10:1 panorama keeps its centre 4:1
        let (w, h, crop) = stored_size(5000, 500, 256);
        assert_eq!((w, h), (1024, 256));
        assert!((crop.width - 2000.0).abs() < 1e-9 && (crop.left - 1500.0).abs() < 1e-9);
        // a 1-pixel-wide strip
        let (w, h, _) = stored_size(1, 1000, 256);
        assert_eq!((w, h), (1, 4));
    }
}
