//! Crop-and-resize of `u8` images with a convolution filter (fast_image_resize, SIMD).
//!
//! PyTorch counterpart: PIL's antialiased `Image.resize` as torchvision's `Resize`,
//! `CenterCrop` and `RandomResizedCrop` use it (bilinear / bicubic).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions};

/// The resizer whose buffers are reused between calls (one per thread).
pub use fast_image_resize::Resizer;

use crate::error::DataError;

/// The resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interpolation {
    /// Triangle filter (PIL/torchvision `BILINEAR`).
    Bilinear,
    /// Catmull-Rom cubic (PIL/torchvision `BICUBIC`, the MAE recipe's choice).
    #[default]
    Bicubic,
}

impl std::str::FromStr for Interpolation {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bilinear" => Ok(Interpolation::Bilinear),
            "bicubic" => Ok(Interpolation::Bicubic),
            _ => Err(DataError::Option(format!(
                "interpolation `{s}`: bilinear or bicubic"
            ))),
        }
    }
}

/// A rectangle of the source image, in pixels (fractions allowed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    /// Left edge.
    pub left: f64,
    /// Top edge.
    pub top: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

impl CropBox {
    /// The centred square of side `min(w, h)`: "resize the shorter side, then centre crop".
    pub fn center_square(width: usize, height: usize) -> Self {
        let side = width.min(height) as f64;
        CropBox {
            left: (width as f64 - side) / 2.0,
            top: (height as f64 - side) / 2.0,
            width: side,
            height: side,
        }
    }
}

fn pixel_type(channels: usize) -> Result<PixelType, DataError> {
    match channels {
        1 => Ok(PixelType::U8),
        3 => Ok(PixelType::U8x3),
        4 => Ok(PixelType::U8x4),
        c => Err(DataError::Option(format!("{c} channels cannot be resized"))),
    }
}

/// Resizes the `crop` of a `width × height × channels` HWC image into `dst` (`out_w × out_h ×
/// channels`). A crop covering the whole image at the same size is a plain copy.
#[allow(clippy::too_many_arguments)]
pub fn resize_crop_into(
    resizer: &mut Resizer,
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    crop: CropBox,
    dst: &mut [u8],
    out_w: usize,
    out_h: usize,
    interpolation: Interpolation,
) -> Result<(), DataError> {
    let whole = crop.left == 0.0
        && crop.top == 0.0
        && crop.width == width as f64
        && crop.height == height as f64;
    if whole && width == out_w && height == out_h {
        dst.copy_from_slice(&src[..dst.len()]);
        return Ok(());
    }
    let pt = pixel_type(channels)?;
    let bad = |e: String| DataError::Option(format!("resize: {e}"));
    let src =
        ImageRef::new(width as u32, height as u32, src, pt).map_err(|e| bad(e.to_string()))?;
    let mut out = Image::from_slice_u8(out_w as u32, out_h as u32, dst, pt)
        .map_err(|e| bad(e.to_string()))?;
    let filter = match interpolation {
        Interpolation::Bilinear => FilterType::Bilinear,
        Interpolation::Bicubic => FilterType::CatmullRom,
    };
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(filter))
        .crop(crop.left, crop.top, crop.width, crop.height);
    resizer
        .resize(&src, &mut out, &options)
        .map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_images_stay_constant_and_crops_select_regions() {
        let mut r = Resizer::new();
        let src = vec![77u8; 40 * 30 * 3];
        let mut dst = vec![0u8; 16 * 16 * 3];
        resize_crop_into(
            &mut r,
            &src,
            40,
            30,
            3,
            CropBox::center_square(40, 30),
            &mut dst,
            16,
            16,
            Interpolation::Bicubic,
        )
        .expect("resize");
        assert!(dst.iter().all(|&v| v == 77));
        // left half black, right half white: a crop of the right half is white
        let mut src = vec![0u8; 20 * 10];
        for y in 0..10 {
            for x in 10..20 {
                src[y * 20 + x] = 255;
            }
        }
        let mut dst = vec![0u8; 5 * 5];
        let crop = CropBox {
            left: 12.0,
            top: 0.0,
            width: 8.0,
            height: 10.0,
        };
        resize_crop_into(
            &mut r,
            &src,
            20,
            10,
            1,
            crop,
            &mut dst,
            5,
            5,
            Interpolation::Bilinear,
        )
        .expect("resize");
        assert!(dst.iter().all(|&v| v == 255), "{dst:?}");
    }
}
