//! PNG files that say who wrote them: every picture a `mae` command draws (`mae data show`,
//! `mae plot`, `mae reconstruct`) carries a tEXt chunk `Software` = `mae-rs <command>`, so that a
//! later run of the same command can tell its own earlier output (which it may replace) from a
//! file of the user's (which it may not, without `--force`).
//!
//! PyTorch counterpart: none (matplotlib's `savefig` replaces whatever is there; it writes its
//! own `Software` chunk too).

use std::fs;
use std::path::Path;

use image::RgbImage;

use crate::error::DataError;

/// The tEXt keyword that names the writer (the one PNG defines for it).
pub const SOFTWARE: &str = "Software";

/// `img` as the bytes of a PNG whose `Software` chunk is `mae-rs {writer}` (write them with
/// `mae_core::weights::write_atomic`: a failure then leaves any earlier file as it was).
pub fn encode(img: &RgbImage, writer: &str) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::new();
    let mut enc = ::png::Encoder::new(&mut bytes, img.width(), img.height());
    enc.set_color(::png::ColorType::Rgb);
    enc.set_depth(::png::BitDepth::Eight);
    enc.add_text_chunk(SOFTWARE.into(), format!("mae-rs {writer}"))
        .and_then(|()| enc.write_header())
        .and_then(|mut w| {
            w.write_image_data(img.as_raw())?;
            w.finish()
        })
        .map_err(|e| DataError::Option(format!("PNG encoding: {e}")))?;
    Ok(bytes)
}

/// The writer named in a PNG's `Software` chunk if it is one of ours (`mae-rs {writer}`):
/// `None` for anything else (no file, not a PNG, a picture from elsewhere).
pub fn written_by(path: &Path) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let file = std::io::BufReader::new(fs::File::open(path).ok()?);
    let reader = ::png::Decoder::new(file).read_info().ok()?;
    reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == SOFTWARE)
        .and_then(|t| t.text.strip_prefix("mae-rs "))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_png_of_ours_is_recognized_and_others_are_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ours = dir.path().join("grid.png");
        let bytes = encode(&RgbImage::new(3, 2), "data show").expect("encoded");
        fs::write(&ours, bytes).expect("written");
        assert_eq!(written_by(&ours).as_deref(), Some("data show"));
        assert_eq!(image::open(&ours).expect("a PNG").width(), 3);
        // a PNG from elsewhere, a text file, nothing at all
        let theirs = dir.path().join("photo.png");
        RgbImage::new(2, 2).save(&theirs).expect("written");
        assert_eq!(written_by(&theirs), None);
        let text = dir.path().join("notes.png");
        fs::write(&text, "not a picture").expect("written");
        assert_eq!(written_by(&text), None);
        assert_eq!(written_by(&dir.path().join("missing.png")), None);
    }
}
