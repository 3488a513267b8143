//! PNG files that say who wrote them: every picture a `mae` command draws (`mae data show`,
//! `mae plot`, `mae reconstruct`) carries a tEXt chunk `Software` = `mae-rs <command>`, so that a
//! later run of the same command can tell its own earlier output (which it may replace) from a
//! file of the user's (which it may not, without `--force`).
//!
//! PyTorch counterpart: none (matplotlib's `savefig` replaces whatever is there; it writes its
//! own `Software` chunk too).

use std::fs;
use std::io::Write;
use std::path::Path;

use image::RgbImage;

use crate::error::DataError;

/// The tEXt keyword that names the writer (the one PNG defines for it).
pub const SOFTWARE: &str = "Software";

/// Writes `img` to `path` as a PNG whose `Software` chunk is `mae-rs {writer}`, atomically: the
/// pixels go to a synced temporary file in the same folder that is renamed over `path`, so a
/// failure (full disk, a signal) leaves any earlier file as it was. An existing `path` that is
/// not a regular file (a device, a FIFO, a folder) is an error and is left alone.
pub fn write_png(path: &Path, img: &RgbImage, writer: &str) -> Result<(), DataError> {
    let io = |e: std::io::Error| DataError::io(path, e);
    let mut bytes = Vec::new();
    {
        let mut enc = ::png::Encoder::new(&mut bytes, img.width(), img.height());
        enc.set_color(::png::ColorType::Rgb);
        enc.set_depth(::png::BitDepth::Eight);
        enc.add_text_chunk(SOFTWARE.into(), format!("mae-rs {writer}"))
            .and_then(|()| enc.write_header())
            .and_then(|mut w| w.write_image_data(img.as_raw()))
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
    }
    write_atomic(path, &bytes)
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

/// Writes `bytes` to `path` through a synced temporary file (`.NAME.XXXXXX.tmp`) in the same
/// folder, renamed into place; refuses to replace anything but a regular file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let io = |e: std::io::Error| DataError::io(path, e);
    if let Ok(meta) = fs::metadata(path) {
        if !meta.is_file() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "exists and is not a regular file; not replacing it",
            )));
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_png_of_ours_is_recognized_and_others_are_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ours = dir.path().join("grid.png");
        write_png(&ours, &RgbImage::new(3, 2), "data show").expect("written");
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
        // no temporary file is left behind
        let names: Vec<_> = fs::read_dir(dir.path()).expect("listed").collect();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn a_device_or_folder_is_never_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = write_atomic(dir.path(), b"x").expect_err("a folder");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(dir.path().is_dir());
    }
}
