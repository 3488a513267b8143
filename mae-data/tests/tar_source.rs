//! `prepare --from tar`: WebDataset tar shards against the same images as a folder, `.cls`
//! labels, broken, truncated and absurd members, and sources that are not tars.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use mae_data::{prepare, DataError, Dataset, PrepareOptions, SourceKind};

/// A non-square image `i`, encoded as `ext`.
fn image_bytes(i: u32, ext: &str) -> Vec<u8> {
    let (w, h) = (40 + 7 * i, 30 + 3 * (i % 4));
    let img = RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 6) as u8, (y * 8) as u8, (i * 30) as u8])
    });
    let format = match ext {
        "png" => image::ImageFormat::Png,
        _ => image::ImageFormat::Jpeg,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A tar of `members` (name, bytes), in that order.
fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &bytes[..]).unwrap();
    }
    b.finish().unwrap();
}

fn opts(source: &Path, out: &Path) -> PrepareOptions {
    let mut o = PrepareOptions::new(SourceKind::Tar, source, out);
    o.size = Some(24);
    o
}

/// Every record of the train split as (pixels, width, height, label).
fn records(out: &Path) -> Vec<(Vec<u8>, usize, usize, i32)> {
    let ds = Dataset::open(out).unwrap();
    ds.wait_verified().unwrap();
    let train = ds.train();
    (0..train.len())
        .map(|i| {
            let s = train.get(i).unwrap();
            let mut buf = Vec::new();
            let px = s.pixels(&mut buf).unwrap().to_vec();
            (px, s.width, s.height, s.label)
        })
        .collect()
}

#[test]
fn class_folders_in_keys_give_what_the_same_image_folder_gives() {
    let scratch = tempfile::tempdir().unwrap();
    let folder = scratch.path().join("folder");
    let mut members = Vec::new();
    for (class, n) in [("cat", 3u32), ("dog", 2)] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        for i in 0..n {
            let ext = if i % 2 == 0 { "jpg" } else { "png" };
            let k = i + if class == "dog" { 10 } else { 0 };
            let bytes = image_bytes(k, ext);
            std::fs::write(folder.join(class).join(format!("img{k}.{ext}")), &bytes).unwrap();
            members.push((format!("train/{class}/img{k}.{ext}"), bytes));
            // other members of the sample are ignored
            members.push((format!("train/{class}/img{k}.json"), b"{}".to_vec()));
        }
    }
    // two shards, read in name order
    let tars = scratch.path().join("tars");
    std::fs::create_dir_all(&tars).unwrap();
    write_tar(&tars.join("shard-000001.tar"), &members[6..]);
    write_tar(&tars.join("shard-000000.tar"), &members[..6]);
    std::fs::write(tars.join("README.txt"), b"not a tar").unwrap();

    let from_folder = scratch.path().join("ds-folder");
    let mut o = opts(&folder, &from_folder);
    o.kind = SourceKind::ImageFolder;
    let a = prepare(&o).unwrap().manifest;
    let from_tar = scratch.path().join("ds-tar");
    let summary = prepare(&opts(&tars, &from_tar)).unwrap();
    let b = &summary.manifest;
    assert_eq!(b.count, 5);
    assert_eq!(b.classes, vec!["cat", "dog"]);
    assert_eq!(a.classes, b.classes);
    assert!(b.skipped.is_empty(), "{:?}", b.skipped);
    assert!(summary.val_note.unwrap().contains("none held out"));
    let (ra, rb) = (records(&from_folder), records(&from_tar));
    assert_eq!(ra.len(), rb.len());
    for (i, (x, y)) in ra.iter().zip(&rb).enumerate() {
        assert_eq!((x.1, x.2, x.3), (y.1, y.2, y.3), "record {i}");
        assert!(x.0 == y.0, "record {i}: pixels differ");
    }
    // the aspect ratio is kept: img0 is 40×30, stored 32×24
    assert_eq!((rb[0].1, rb[0].2), (32, 24));
}

#[test]
fn cls_labels_and_broken_members_are_reported_not_fatal() {
    let scratch = tempfile::tempdir().unwrap();
    let tar = scratch.path().join("data.tar");
    let m = |name: &str, bytes: Vec<u8>| (name.to_string(), bytes);
    let mut broken_jpeg = image_bytes(2, "jpg");
    broken_jpeg.truncate(broken_jpeg.len() / 2);
    write_tar(
        &tar,
        &[
            m("000.jpg", image_bytes(0, "jpg")),
            m("000.cls", b"2\n".to_vec()),
            m("001.cls", b"0".to_vec()),
            m("001.PNG", image_bytes(1, "png")),
            m("002.jpg", broken_jpeg),
            m("002.cls", b"1".to_vec()),
            m("003.jpg", image_bytes(3, "jpg")),
            m("004.cls", b"1".to_vec()),
            m("005.jpg", image_bytes(5, "jpg")),
            m("005.cls", b"cat".to_vec()),
            m("006.jpg", image_bytes(6, "jpg")),
            m("006.png", image_bytes(6, "png")),
            m("006.cls", b"0".to_vec()),
            m("007.jpg", Vec::new()),
            m("007.cls", b"0".to_vec()),
        ],
    );
    let out = scratch.path().join("ds");
    let manifest = prepare(&opts(&tar, &out)).unwrap().manifest;
    assert_eq!(manifest.classes, vec!["0", "1", "2"]);
    let labels: Vec<i32> = records(&out).iter().map(|r| r.3).collect();
    assert_eq!(labels, vec![2, 0, 0]);
    let reason = |key: &str| {
        manifest
            .skipped
            .iter()
            .find(|s| s.path.starts_with(&format!("data.tar:{key}")))
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{key} not reported: {:?}", manifest.skipped))
    };
    assert!(reason("002.jpg").contains("truncated"), "{}", reason("002"));
    assert!(reason("003.jpg").contains("no KEY.cls"));
    assert!(reason("004.cls").contains("without an image"));
    assert!(reason("005.jpg").contains("not a class index"));
    assert!(reason("006.png").contains("second image"));
    assert!(reason("007.jpg").contains("empty"));
    assert_eq!(manifest.skipped.len(), 6, "{:?}", manifest.skipped);
}

#[test]
fn truncated_tars_and_absurd_member_sizes_keep_what_is_readable() {
    let scratch = tempfile::tempdir().unwrap();
    let full = scratch.path().join("full.tar");
    let members: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("k{i}.png"), image_bytes(i, "png")))
        .collect();
    write_tar(&full, &members);
    let bytes = std::fs::read(&full).unwrap();
    // cut inside the last member's data
    let cut = bytes.len() - 1024 - members[2].1.len() / 2;
    let tars = scratch.path().join("tars");
    std::fs::create_dir_all(&tars).unwrap();
    std::fs::write(tars.join("a.tar"), &bytes[..cut]).unwrap();
    // a header that claims a terabyte, with nothing after it
    let mut h = tar::Header::new_gnu();
    h.set_path("huge.jpg").unwrap();
    h.set_size(1 << 40);
    h.set_mode(0o644);
    h.set_cksum();
    std::fs::write(tars.join("b.tar"), h.as_bytes()).unwrap();
    // bytes that are not a tar at all
    std::fs::write(tars.join("c.tar"), [0x55u8; 1500]).unwrap();
    let out = scratch.path().join("ds");
    let manifest = prepare(&opts(&tars, &out)).unwrap().manifest;
    assert_eq!(manifest.count, 2);
    let reasons: Vec<String> = manifest
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.path, s.reason))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    let has = |start: &str, part: &str| {
        reasons
            .iter()
            .any(|r| r.starts_with(start) && r.contains(part))
    };
    assert!(has("a.tar:k2.png", "truncated tar"), "{reasons:?}");
    assert!(has("b.tar:huge.jpg", "more than"), "{reasons:?}");
    assert!(has("c.tar: not a readable tar", "header"), "{reasons:?}");
    assert!(reasons.iter().all(|r| r.len() < 300), "{reasons:?}");
    // --strict turns them into one error naming the first
    let mut o = opts(&tars, &scratch.path().join("strict"));
    o.strict = true;
    let err = prepare(&o).unwrap_err();
    assert!(
        err.to_string().contains("c.tar: not a readable tar"),
        "{err}"
    );
}

#[test]
fn sources_that_hold_no_tar_say_so() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("ds");
    let gz = scratch.path().join("data.tar.gz");
    std::fs::write(&gz, b"\x1f\x8b").unwrap();
    let err = prepare(&opts(&gz, &out)).unwrap_err().to_string();
    assert!(
        err.contains("data.tar.gz") && err.contains("decompress"),
        "{err}"
    );
    let dir = scratch.path().join("gz-only");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("x.tgz"), b"\x1f\x8b").unwrap();
    let err = prepare(&opts(&dir, &out)).unwrap_err().to_string();
    assert!(
        err.contains("gz-only") && err.contains("decompress"),
        "{err}"
    );
    // one file that is no tar: nothing read, and the reason in the error
    let junk = scratch.path().join("junk.tar");
    std::fs::write(&junk, [7u8; 700]).unwrap();
    let err = prepare(&opts(&junk, &out)).unwrap_err();
    assert!(matches!(err, DataError::NothingRead { .. }), "{err}");
    assert!(err.to_string().contains("not a readable tar"), "{err}");
    assert!(!out.exists(), "a failed prepare left {}", out.display());
    let missing: PathBuf = scratch.path().join("nope.tar");
    let err = prepare(&opts(&missing, &out)).unwrap_err().to_string();
    assert!(err.contains("nope.tar"), "{err}");
}

#[test]
fn the_listing_of_an_archive_points_at_each_image_members_bytes() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("s.tar");
    let members: Vec<(String, Vec<u8>)> = vec![
        ("a/0.jpg".into(), image_bytes(0, "jpg")),
        ("a/0.cls".into(), b"2".to_vec()),
        ("a/0.json".into(), b"{}".to_vec()),
        ("b/1.png".into(), image_bytes(1, "png")),
        ("b/1.cls".into(), b"0\n".to_vec()),
        ("c/2.cls".into(), b"1".to_vec()),
    ];
    write_tar(&path, &members);
    let bytes = std::fs::read(&path).unwrap();
    let (found, skipped) =
        prepare::scan_tar_members(std::io::Cursor::new(&bytes), Path::new("s.tar")).unwrap();
    let names: Vec<_> = found.iter().map(|m| (m.name.as_str(), m.label)).collect();
    assert_eq!(names, [("s.tar:a/0.jpg", 2), ("s.tar:b/1.png", 0)]);
    for (m, source) in found.iter().zip([&members[0].1, &members[3].1]) {
        let at = m.offset as usize;
        assert_eq!(&bytes[at..at + m.len as usize], &source[..], "{}", m.name);
    }
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].path.ends_with("c/2.cls") && skipped[0].reason.contains("without an image"));
}
