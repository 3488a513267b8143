// A prepared dataset as every command opens it: the input is split in two (a little-endian u32
// length, `manifest.json`, then one shard's bytes), written to a scratch folder as the manifest
// and `train-00000.shard`, opened (structure, then checksums), and every sample of both splits
// read.

pub fn run(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let rest = &data[4..];
    let (manifest, shard) = rest.split_at(n.min(rest.len()));
    let Ok(dir) = tempfile::tempdir() else { return };
    let d = dir.path();
    if std::fs::write(d.join("manifest.json"), manifest).is_err()
        || std::fs::write(d.join("train-00000.shard"), shard).is_err()
    {
        return;
    }
    let _ = mae_data::dataset::manifest_from_json(&d.join("manifest.json"), manifest);
    for verify in [mae_data::Verify::Structure, mae_data::Verify::Checksums] {
        let Ok(ds) = mae_data::Dataset::open_with(d, verify) else {
            continue;
        };
        for split in [ds.train(), ds.val()] {
            for i in 0..split.len().min(4096) {
                let _ = split.get(i).map(|s| s.data.len());
            }
            let _ = split.get(split.len());
        }
    }
}
