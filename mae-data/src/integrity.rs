//! Is an image file whole? Decoders fill what is missing of a truncated JPEG with grey and report
//! success (the `image` crate's zune-jpeg, in its lenient mode, does), so a download cut short
//! would become a training image that is two-thirds grey. This walks the file's structure
//! instead.
//!
//! PyTorch counterpart: PIL's `ImageFile.load`, which raises "image file is truncated" unless
//! `LOAD_TRUNCATED_IMAGES` is set.

/// `Ok` when a JPEG stream reaches its end-of-image marker (EOI, `FF D9`); the error says where
/// it ends instead. Segments are skipped by their lengths (so an EXIF thumbnail's own EOI inside
/// APP1 does not count), entropy-coded data is scanned past byte stuffing (`FF 00`), restart
/// markers and fill bytes, and whatever follows the EOI (camera trailers, a motion photo's video)
/// is not looked at.
pub fn jpeg_is_complete(bytes: &[u8]) -> Result<(), String> {
    let truncated = |at: usize| {
        Err(format!(
            "truncated: the JPEG data stops after {at} bytes, before its end-of-image marker"
        ))
    };
    if bytes.len() < 2 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return Err("not a JPEG (no start-of-image marker)".into());
    }
    let mut i = 2;
    loop {
        // the next marker: lenient decoders skip stray bytes between segments, so do we
        while i < bytes.len() && bytes[i] != 0xFF {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return truncated(bytes.len());
        };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // markers without a length: TEM, RSTn, SOI, and a stray stuffed zero
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(len) = bytes.get(i..i + 2) else {
            return truncated(bytes.len());
        };
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        if len < 2 {
            return Err(format!("corrupt: a segment at byte {i} has length {len}"));
        }
        i += len;
        if i > bytes.len() {
            return truncated(bytes.len());
        }
        if marker == 0xDA {
            match end_of_scan(bytes, i) {
                Some(next) => i = next,
                None => return truncated(bytes.len()),
            }
        }
    }
}

/// The offset of the first marker after entropy-coded data that starts at `from` (`None` when
/// the data runs to the end of the file).
fn end_of_scan(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        i += bytes.get(i..)?.iter().position(|&b| b == 0xFF)?;
        match *bytes.get(i + 1)? {
            // stuffing or a restart marker: still in the scan
            0x00 | 0xD0..=0xD7 => i += 2,
            // a fill byte: the marker follows
            0xFF => i += 1,
            _ => return Some(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .expect("encoded");
        out.into_inner()
    }

    #[test]
    fn a_whole_jpeg_passes_and_every_cut_of_it_fails() {
        let whole = jpeg(64, 48);
        assert_eq!(jpeg_is_complete(&whole), Ok(()));
        // a trailer after the end-of-image marker is fine
        let mut trailer = whole.clone();
        trailer.extend_from_slice(b"\x00\x00ftypmp42 trailing video");
        assert_eq!(jpeg_is_complete(&trailer), Ok(()));
        for cut in (2..whole.len() - 1).step_by(7) {
            let err = jpeg_is_complete(&whole[..cut]).expect_err("cut short");
            assert!(err.starts_with("truncated"), "cut at {cut}: {err}");
        }
        assert!(jpeg_is_complete(b"\x89PNG").is_err());
    }

    #[test]
    fn a_thumbnails_end_marker_inside_app1_does_not_count() {
        let main = jpeg(32, 32);
        let thumb = jpeg(8, 8);
        // SOI, APP1 holding a whole JPEG (its own FF D9 included), then the main image's segments
        let mut file = vec![0xFF, 0xD8, 0xFF, 0xE1];
        file.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
        file.extend_from_slice(&thumb);
        file.extend_from_slice(&main[2..]);
        assert_eq!(jpeg_is_complete(&file), Ok(()));
        let cut = &file[..file.len() - 40];
        assert!(jpeg_is_complete(cut).is_err());
    }
}
