// `prepare --from tar`'s listing of a WebDataset archive on arbitrary bytes: tar headers (sizes,
// names, GNU/PAX extensions), keys, `.cls` labels. Headers only; members are not decoded here.

pub fn run(data: &[u8]) {
    let name = std::path::Path::new("fuzz.tar");
    if let Ok((members, skipped)) =
        mae_data::prepare::scan_tar_members(std::io::Cursor::new(data), name)
    {
        // every sample comes from a 512-byte header of its own
        assert!(members.len() + skipped.len() <= data.len() / 512 + 1);
        for m in &members {
            assert!(m.name.starts_with("fuzz.tar:"), "{}", m.name);
            assert!(m.label >= -1);
            assert!(m.offset <= data.len() as u64, "offset {} past the end", m.offset);
        }
    }
}
