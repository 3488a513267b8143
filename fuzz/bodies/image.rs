// An image file's bytes as `mae data prepare` decodes them: the format guessed from the
// contents, the JPEG completeness walk, the decoder under a pixel limit, EXIF orientation.

pub fn run(data: &[u8]) {
    let _ = mae_data::integrity::jpeg_is_complete(data);
    if let Ok(img) = mae_data::prepare::decode_image(data, 1 << 20) {
        assert!(img.width() as u64 * img.height() as u64 <= 1 << 20);
    }
}
