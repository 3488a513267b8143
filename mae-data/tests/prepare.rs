//! Preparing datasets: the bundled idx files, generated image folders with odd sizes, modes and
//! broken files, CIFAR-10 records; and what happens when shards are damaged.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use mae_data::{
    prepare, prepare_with, DataError, Dataset, PrepareOptions, SourceKind, SplitName, Verify,
};

/// A fresh directory `name` inside the test's scratch directory (which is removed when the test
/// ends, pass or fail).
fn tmp(scratch: &tempfile::TempDir, name: &str) -> PathBuf {
    let dir = scratch.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist")
}

fn read_gz(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn bundled_fashion_mnist_prepares_exactly() {
    let scratch = tempfile::tempdir().unwrap();
    let out = tmp(&scratch, "fmnist-all").join("ds");
    let mut opts = PrepareOptions::new(SourceKind::Idx, bundled(), &out);
    opts.val_fraction = Some(0.0);
    opts.shard_samples = Some(3000); // several shards, to exercise the index lookup
                                     // progress is reported to the caller: from 0 when listed, rising, to every image
    let mut seen = Vec::new();
    let summary = prepare_with(&opts, &mut |p| seen.push(p)).unwrap();
    assert_eq!(summary.manifest.count, 10_000);
    assert!(seen.iter().all(|p| p.total == 10_000), "{seen:?}");
    assert_eq!(seen.first().map(|p| p.done), Some(0));
    assert_eq!(seen.last().map(|p| p.done), Some(10_000));
    assert!(seen.windows(2).all(|w| w[0].done < w[1].done), "{seen:?}");
    assert!(seen.len() > 2, "reported in chunks: {seen:?}");
    assert_eq!(summary.manifest.train.shards.len(), 4);
    assert_eq!(summary.manifest.classes[0], "T-shirt/top");

    let images = read_gz(&bundled().join("t10k-images-idx3-ubyte.gz"));
    let labels = read_gz(&bundled().join("t10k-labels-idx1-ubyte.gz"));
    let ds = Dataset::open(&out).unwrap();
    let train = ds.train();
    assert_eq!(train.len(), 10_000);
    let mut per_class = [0usize; 10];
    for i in 0..10_000 {
        let s = train.get(i).unwrap();
        assert_eq!(
            s.data,
            &images[16 + i * 784..16 + (i + 1) * 784],
            "sample {i}"
        );
        assert_eq!(s.label, labels[8 + i] as i32);
        per_class[s.label as usize] += 1;
    }
    assert_eq!(per_class, [1000; 10]);
    assert!(train.get(10_000).is_none());
}

#[test]
fn single_split_sources_get_a_stratified_validation_split() {
    let scratch = tempfile::tempdir().unwrap();
    let out = tmp(&scratch, "fmnist-split").join("ds");
    let mut opts = PrepareOptions::new(SourceKind::Idx, bundled(), &out);
    opts.seed = 3;
    prepare(&opts).unwrap();
    let ds = Dataset::open(&out).unwrap();
    assert_eq!((ds.train().len(), ds.val().len()), (9000, 1000));
    let mut val_per_class = [0usize; 10];
    for i in 0..1000 {
        val_per_class[ds.val().get(i).unwrap().label as usize] += 1;
    }
    assert_eq!(val_per_class, [100; 10]);
    // the same seed gives the same split; the statistics are of the train split
    let again = tmp(&scratch, "fmnist-split-2").join("ds");
    let mut opts2 = PrepareOptions::new(SourceKind::Idx, bundled(), &again);
    opts2.seed = 3;
    prepare(&opts2).unwrap();
    let ds2 = Dataset::open(&again).unwrap();
    assert_eq!(
        ds.val().get(17).unwrap().data,
        ds2.val().get(17).unwrap().data
    );
    let m = ds.manifest();
    assert!(
        m.mean[0] > 0.2 && m.mean[0] < 0.4 && m.std[0] > 0.2,
        "{:?} {:?}",
        m.mean,
        m.std
    );
}

/// A JPEG with an EXIF orientation tag: the APP1 segment is inserted after SOI.
fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    DynamicImage::ImageRgb8(img.clone())
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let mut tiff = b"II*\0\x08\0\0\0".to_vec(); // little-endian TIFF, IFD at 8
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes()); // count
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn save(img: DynamicImage, path: &Path) {
    img.save(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn image_folders_of_odd_files_prepare_and_report_what_they_skip() {
    let scratch = tempfile::tempdir().unwrap();
    let src = tmp(&scratch, "folder");
    let (cats, dogs) = (src.join("cats"), src.join("dogs"));
    std::fs::create_dir_all(&cats).unwrap();
    std::fs::create_dir_all(dogs.join("nested")).unwrap();
    // an image already at the target size reads back exactly
    let exact = RgbImage::from_fn(16, 16, |x, y| Rgb([(x * 16) as u8, (y * 16) as u8, 77]));
    save(
        DynamicImage::ImageRgb8(exact.clone()),
        &cats.join("a_exact.png"),
    );
    // odd sizes and modes
    save(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 30, Rgb([200, 10, 10]))),
        &cats.join("b_wide.bmp"),
    );
    let gray16: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_pixel(17, 33, Luma([40000]));
    save(
        DynamicImage::ImageLuma16(gray16),
        &cats.join("c_gray16.png"),
    );
    save(
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(20, 20, Rgba([0, 255, 0, 128]))),
        &dogs.join("d_alpha.png"),
    );
    save(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(9, 12, Rgb([0, 0, 250]))),
        &dogs.join("e.tiff"),
    );
    save(
        DynamicImage::ImageLuma8(GrayImage::from_pixel(21, 21, Luma([99]))),
        &dogs.join("nested/f.pgm"),
    );
    save(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(12, 12, Rgb([9, 9, 9]))),
        &dogs.join("g.gif"),
    );
    save(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(12, 12, Rgb([1, 2, 3]))),
        &dogs.join("h.webp"),
    );
    // EXIF orientation 6 (rotate 90° clockwise): the left half (black) ends up on top
    let halves = RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    std::fs::write(dogs.join("i_exif.jpg"), jpeg_with_orientation(&halves, 6)).unwrap();
    // broken and irrelevant files
    std::fs::write(cats.join("empty.png"), b"").unwrap();
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(exact.clone())
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(cats.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(
        dogs.join("garbage.jpg"),
        b"this is not a jpeg at all, just text",
    )
    .unwrap();
    std::fs::write(dogs.join("README.txt"), b"notes").unwrap();
    save(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(300, 300, Rgb([5, 5, 5]))),
        &dogs.join("j_big.png"),
    );

    let out = tmp(&scratch, "folder-out").join("ds");
    let mut opts = PrepareOptions::new(SourceKind::ImageFolder, &src, &out);
    opts.size = Some(16);
    opts.val_fraction = Some(0.0);
    opts.max_pixels = 200 * 200;
    let summary = prepare(&opts).unwrap();
    let m = &summary.manifest;
    assert_eq!(m.classes, vec!["cats", "dogs"]);
    assert_eq!(m.count, 9, "{summary}");
    let mut skipped: Vec<(String, String)> = m
        .skipped
        .iter()
        .map(|s| (s.path.clone(), s.reason.clone()))
        .collect();
    skipped.sort();
    let names: Vec<&str> = skipped.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "cats/empty.png",
            "cats/truncated.png",
            "dogs/garbage.jpg",
            "dogs/j_big.png"
        ],
        "{summary}"
    );
    assert!(skipped[0].1.contains("empty"));
    assert!(
        skipped[3].1.contains("exceeds the limit"),
        "{}",
        skipped[3].1
    );
    assert!(summary.to_string().contains("4 skipped"));

    let ds = Dataset::open(&out).unwrap();
    let get = |i: usize| ds.train().get(i).unwrap();
    assert_eq!(get(0).data, exact.as_raw().as_slice());
    assert_eq!(get(0).label, 0);
    // 40×30 red: the whole image, shorter side to 16, aspect kept, still red
    assert_eq!((get(1).width, get(1).height), (21, 16));
    assert_eq!(get(1).data.len(), 21 * 16 * 3);
    assert!(get(1).data.chunks(3).all(|p| p[0] > 190 && p[1] < 20));
    // 17×33 gray: 16×31; 9×12 (smaller than --size): kept at 9×12, never enlarged
    assert_eq!((get(2).width, get(2).height), (16, 31));
    assert_eq!((get(4).width, get(4).height), (9, 12));
    // 16-bit gray 40000/65535 → about 155 in every channel
    assert!(
        get(2).data.iter().all(|&v| (150..=160).contains(&v)),
        "{:?}",
        &get(2).data[..6]
    );
    // labels follow the class folders; the nested image comes last
    assert_eq!(get(3).label, 1);
    assert!(get(8).data.iter().all(|&v| v == 99));
    // EXIF: after rotation (40×20 → 20×40, stored 16×32) the top rows are dark, the bottom light
    assert_eq!((get(7).width, get(7).height), (16, 32));
    let exif = get(7).data; // sorted: d, e, g, h, i_exif, then nested/f
    let row_mean = |y: usize| {
        exif[y * 48..(y + 1) * 48]
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>()
            / 48.0
    };
    assert!(
        row_mean(1) < 60.0 && row_mean(30) > 190.0,
        "{} {}",
        row_mean(1),
        row_mean(30)
    );

    // strict mode fails on the skipped files; an existing output needs --force
    opts.strict = true;
    opts.force = true;
    assert!(matches!(
        prepare(&opts),
        Err(DataError::Strict { skipped: 4, .. })
    ));
    opts.strict = false;
    opts.force = false;
    assert!(matches!(
        prepare(&opts),
        Err(DataError::OutputExists { .. })
    ));
    opts.force = true;
    prepare(&opts).unwrap();
    // nothing left behind next to the output
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "ds")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_folder_of_only_broken_files_is_an_error_and_writes_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let src = tmp(&scratch, "broken");
    std::fs::write(src.join("a.png"), b"").unwrap();
    std::fs::write(src.join("b.jpg"), b"nope").unwrap();
    let out = tmp(&scratch, "broken-out").join("ds");
    let err = prepare(&PrepareOptions::new(SourceKind::ImageFolder, &src, &out)).unwrap_err();
    assert!(
        matches!(err, DataError::NothingRead { skipped: 2, .. }),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn loose_images_give_an_unlabeled_dataset() {
    let scratch = tempfile::tempdir().unwrap();
    let src = tmp(&scratch, "loose");
    for i in 0..5 {
        save(
            DynamicImage::ImageRgb8(RgbImage::from_pixel(10, 10, Rgb([i * 40, 0, 0]))),
            &src.join(format!("{i}.png")),
        );
    }
    let out = tmp(&scratch, "loose-out").join("ds");
    let mut opts = PrepareOptions::new(SourceKind::ImageFolder, &src, &out);
    opts.size = Some(8);
    opts.val_fraction = Some(0.2);
    let m = prepare(&opts).unwrap().manifest;
    assert!(m.classes.is_empty());
    assert_eq!((m.train.count, m.val.count), (4, 1));
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.train().get(0).unwrap().label, -1);
}

#[test]
fn cifar10_records_become_hwc_images() {
    let scratch = tempfile::tempdir().unwrap();
    let src = tmp(&scratch, "cifar");
    let record = |label: u8, r: u8, g: u8, b: u8| {
        let mut rec = vec![label];
        rec.extend(std::iter::repeat_n(r, 1024));
        rec.extend(std::iter::repeat_n(g, 1024));
        rec.extend(std::iter::repeat_n(b, 1024));
        rec
    };
    for i in 1..=5 {
        let mut bytes = record(i as u8, 10, 20, 30);
        bytes.extend(record(0, 1, 2, 3));
        std::fs::write(src.join(format!("data_batch_{i}.bin")), bytes).unwrap();
    }
    std::fs::write(src.join("test_batch.bin"), record(9, 7, 8, 9)).unwrap();
    let out = tmp(&scratch, "cifar-out").join("ds");
    let m = prepare(&PrepareOptions::new(SourceKind::Cifar10, &src, &out))
        .unwrap()
        .manifest;
    assert_eq!(
        (m.train.count, m.val.count, m.image_size, m.channels),
        (10, 1, 32, 3)
    );
    assert_eq!(m.classes[9], "truck");
    let ds = Dataset::open(&out).unwrap();
    let s = ds.train().get(0).unwrap();
    assert_eq!((s.label, &s.data[..6]), (1, &[10, 20, 30, 10, 20, 30][..]));
    assert_eq!(ds.val().get(0).unwrap().label, 9);
    // a truncated batch is an error naming the file
    std::fs::write(src.join("test_batch.bin"), &record(9, 7, 8, 9)[..100]).unwrap();
    let err = prepare(&PrepareOptions::new(
        SourceKind::Cifar10,
        &src,
        tmp(&scratch, "cifar-bad").join("ds"),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("test_batch.bin"), "{err}");
}

fn prepared(scratch: &tempfile::TempDir, name: &str) -> PathBuf {
    let out = tmp(scratch, name).join("ds");
    let mut opts = PrepareOptions::new(SourceKind::Idx, bundled(), &out);
    opts.shard_samples = Some(5000);
    prepare(&opts).unwrap();
    out
}

#[test]
fn a_flipped_byte_fails_verify_and_reading_naming_the_shard() {
    let scratch = tempfile::tempdir().unwrap();
    let out = prepared(&scratch, "flip");
    assert_eq!(mae_data::dataset::verify(&out).unwrap(), 3);
    let shard = out.join("train-00001.shard");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&shard, bytes).unwrap();
    let err = mae_data::dataset::verify(&out).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }));
    assert!(err.to_string().contains("train-00001.shard"), "{err}");
    // opening checks the structure only; the background verification finds the mismatch, and a
    // loader over the data stops with it
    let ds = std::sync::Arc::new(Dataset::open(&out).unwrap());
    let err = ds.wait_verified().unwrap_err();
    assert!(err.to_string().contains("train-00001.shard"), "{err}");
    assert!(ds.integrity().is_err());
    let err = first_train_batch(ds, 16, 8, 1).unwrap_err();
    assert!(err.to_string().contains("train-00001.shard"), "{err}");
    // the structure alone is still sound, and reports nothing
    let ds = Dataset::open_with(&out, Verify::Structure).unwrap();
    assert!(ds.wait_verified().is_ok());
    // opened again in this process: the changed file is hashed again, not taken as verified
    let err = Dataset::open(&out).unwrap().wait_verified().unwrap_err();
    assert!(err.to_string().contains("train-00001.shard"), "{err}");
}

#[test]
fn truncated_shards_and_inconsistent_manifests_are_errors() {
    let scratch = tempfile::tempdir().unwrap();
    let out = prepared(&scratch, "truncate");
    let shard = out.join("val-00000.shard");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let err = Dataset::open_with(&out, Verify::Structure).unwrap_err();
    assert!(
        err.to_string().contains("val-00000.shard") && err.to_string().contains("truncated"),
        "{err}"
    );
    std::fs::write(&shard, &bytes[..30]).unwrap();
    assert!(Dataset::open_with(&out, Verify::Structure).is_err());
    std::fs::write(&shard, &bytes).unwrap();
    assert!(Dataset::open(&out).is_ok());

    let manifest = out.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("\"count\": 10000", "\"count\": 10001"),
    )
    .unwrap();
    let err = Dataset::open(&out).unwrap_err();
    assert!(err.to_string().contains("manifest.json"), "{err}");
    std::fs::write(
        &manifest,
        text.replace("train-00000.shard", "../etc/passwd"),
    )
    .unwrap();
    assert!(Dataset::open(&out).is_err());
    std::fs::write(&manifest, "{ not json").unwrap();
    assert!(matches!(
        Dataset::open(&out),
        Err(DataError::Manifest { .. })
    ));
    std::fs::remove_file(&manifest).unwrap();
    assert!(matches!(Dataset::open(&out), Err(DataError::Io { .. })));
}

#[test]
fn a_split_lookup_is_consistent_across_shards() {
    let scratch = tempfile::tempdir().unwrap();
    let out = prepared(&scratch, "lookup");
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.manifest().train.shards.len(), 2);
    // samples on both sides of the shard boundary are distinct records
    let a = ds.split(SplitName::Train).get(4999).unwrap();
    let b = ds.split(SplitName::Train).get(5000).unwrap();
    assert_ne!(a.data, b.data);
}

/// Every file (relative path → bytes) under `dir`, for before/after comparisons.
fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// The decoders report a truncated PNG, GIF, WebP, BMP, TIFF or PNM themselves; a truncated JPEG
/// they fill with grey, so `prepare` checks its structure. Every one is skipped with a reason.
#[test]
fn truncated_images_of_every_format_are_skipped_with_the_reason() {
    let scratch = tempfile::tempdir().unwrap();
    let src = tmp(&scratch, "cut");
    let img = RgbImage::from_fn(97, 61, |x, y| {
        Rgb([(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8])
    });
    let formats = [
        ("jpg", image::ImageFormat::Jpeg),
        ("png", image::ImageFormat::Png),
        ("gif", image::ImageFormat::Gif),
        ("webp", image::ImageFormat::WebP),
        ("bmp", image::ImageFormat::Bmp),
        ("tiff", image::ImageFormat::Tiff),
        ("ppm", image::ImageFormat::Pnm),
    ];
    for (ext, format) in formats {
        let mut bytes = Vec::new();
        DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap();
        std::fs::write(src.join(format!("whole.{ext}")), &bytes).unwrap();
        // the first third, as an interrupted download leaves it
        std::fs::write(src.join(format!("third.{ext}")), &bytes[..bytes.len() / 3]).unwrap();
        // the JPEG cut just before its end-of-image marker too
        if ext == "jpg" {
            std::fs::write(src.join("almost.jpg"), &bytes[..bytes.len() - 2]).unwrap();
        }
    }
    let out = tmp(&scratch, "cut-out").join("ds");
    let mut opts = PrepareOptions::new(SourceKind::ImageFolder, &src, &out);
    opts.size = Some(16);
    opts.val_fraction = Some(0.0);
    let summary = prepare(&opts).unwrap();
    assert_eq!(summary.manifest.count, formats.len(), "{summary}");
    let mut skipped: Vec<String> = summary
        .manifest
        .skipped
        .iter()
        .map(|s| s.path.clone())
        .collect();
    skipped.sort();
    let mut expected: Vec<String> = formats.iter().map(|f| format!("third.{}", f.0)).collect();
    expected.push("almost.jpg".into());
    expected.sort();
    assert_eq!(skipped, expected, "{summary}");
    let jpeg = summary
        .manifest
        .skipped
        .iter()
        .find(|s| s.path == "third.jpg")
        .unwrap();
    assert!(jpeg.reason.contains("truncated"), "{}", jpeg.reason);
}

/// `--force` replaces a prepared dataset and nothing else: not the source, not a folder that holds
/// the source, not a folder of someone's files, not a dataset with an unrelated file in it. Each
/// refusal comes before any work and leaves every file as it was.
#[test]
fn force_replaces_a_prepared_dataset_and_nothing_else() {
    let scratch = tempfile::tempdir().unwrap();
    let src = tmp(&scratch, "photos");
    std::fs::create_dir_all(src.join("cats")).unwrap();
    save(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(20, 20, Rgb([1, 2, 3]))),
        &src.join("cats/a.png"),
    );
    // refused, naming why, with every file under the scratch folder as it was
    let refused = |out: &Path, what: &str| {
        let before = tree(scratch.path());
        let mut opts = PrepareOptions::new(SourceKind::ImageFolder, &src, out);
        opts.force = true;
        let err = prepare(&opts).unwrap_err().to_string();
        assert!(err.contains(what), "{}: {err}", out.display());
        assert_eq!(tree(scratch.path()), before, "{}", out.display());
    };
    refused(&src, "is the source folder");
    refused(scratch.path(), "contains the source folder");
    refused(&src.join("cats"), "is inside the source folder");
    let theirs = tmp(&scratch, "theirs");
    std::fs::write(theirs.join("thesis.tex"), "years of work").unwrap();
    refused(&theirs, "manifest.json");
    // a real dataset is replaced; with a stranger's file in it, it is not
    let out = tmp(&scratch, "prepared").join("ds");
    let mut opts = PrepareOptions::new(SourceKind::ImageFolder, &src, &out);
    opts.force = true;
    prepare(&opts).unwrap();
    prepare(&opts).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let before = tree(scratch.path());
    let err = prepare(&opts).unwrap_err().to_string();
    assert!(err.contains("notes.txt"), "{err}");
    assert_eq!(tree(scratch.path()), before);
}

/// The hidden work folder of a run that was killed is removed by the next run for the same
/// output, which says so; one of a live process, or holding anything but shards, is left.
#[test]
fn an_interrupted_runs_work_folder_is_cleaned_by_the_next_run() {
    let scratch = tempfile::tempdir().unwrap();
    let parent = tmp(&scratch, "out");
    let dead = parent.join(".ds.partial-4294967290");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("train-00000.shard"), vec![0u8; 1000]).unwrap();
    let summary = prepare(&PrepareOptions::new(
        SourceKind::Idx,
        bundled(),
        parent.join("ds"),
    ))
    .unwrap();
    assert_eq!(summary.cleaned, vec![dead.clone()]);
    assert!(!dead.exists());
    assert!(summary.to_string().contains("interrupted"), "{summary}");
}

/// A shard and a manifest that agree on 2^62 samples: the length check must not overflow into
/// a pass (a reader would then index past the file or allocate for 2^62 samples).
#[test]
fn absurd_sample_counts_are_errors_not_overflows() {
    let scratch = tempfile::tempdir().unwrap();
    let out = prepared(&scratch, "absurd");
    let shard = out.join("val-00000.shard");
    let mut bytes = std::fs::read(&shard).unwrap();
    let count: u64 = 1 << 62;
    bytes[24..32].copy_from_slice(&count.to_le_bytes());
    std::fs::write(&shard, &bytes).unwrap();
    let manifest = out.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["val"]["count"] = count.into();
    m["val"]["shards"][0]["samples"] = count.into();
    m["count"] = (count + 9000).into();
    std::fs::write(&manifest, m.to_string()).unwrap();
    let err = Dataset::open(&out).unwrap_err().to_string();
    assert!(err.contains("val-00000.shard"), "{err}");
    // an image side that would make records of exabytes
    m["image_size"] = (1u64 << 40).into();
    std::fs::write(&manifest, m.to_string()).unwrap();
    let err = Dataset::open(&out).unwrap_err().to_string();
    assert!(err.contains("image size"), "{err}");
}

#[test]
fn a_version_1_dataset_still_opens_verifies_and_loads() {
    use mae_data::format::{
        Checksum, Encoding, Manifest, ShardEntry, ShardHeader, SplitEntry, FORMAT_NAME,
    };
    let scratch = tempfile::tempdir().unwrap();
    let dir = tmp(&scratch, "v1").join("ds");
    std::fs::create_dir_all(&dir).unwrap();
    // a v1 shard written by hand: 64-byte header, then fixed records of label + 6×6 gray pixels
    let (s, n) = (6usize, 5usize);
    let header = ShardHeader {
        version: 1,
        image_size: s as u32,
        channels: 1,
        encoding: Encoding::Raw,
        count: n as u64,
    };
    let mut bytes = header.to_bytes().to_vec();
    for i in 0..n {
        bytes.extend_from_slice(&(i as i32 % 2).to_le_bytes());
        bytes.extend(std::iter::repeat_n((i * 40) as u8, s * s));
    }
    std::fs::write(dir.join("train-00000.shard"), &bytes).unwrap();
    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        format_version: 1,
        image_size: s,
        encoding: Encoding::Raw,
        quality: None,
        channels: 1,
        count: n,
        classes: vec!["a".into(), "b".into()],
        mean: vec![0.3],
        std: vec![0.2],
        source: "written by hand".into(),
        train: SplitEntry {
            count: n,
            shards: vec![ShardEntry {
                file: "train-00000.shard".into(),
                samples: n,
                bytes: bytes.len() as u64,
                checksum: Checksum::of(&bytes),
            }],
        },
        val: SplitEntry::default(),
        skipped: vec![],
    };
    // the manifest as v1 wrote it: no encoding or quality field
    let mut json: serde_json::Value = serde_json::to_value(&manifest).unwrap();
    json.as_object_mut().unwrap().remove("encoding");
    std::fs::write(dir.join("manifest.json"), json.to_string()).unwrap();

    let ds = std::sync::Arc::new(Dataset::open(&dir).unwrap());
    ds.wait_verified().unwrap();
    assert_eq!(ds.manifest().format_version, 1);
    for i in 0..n {
        let sample = ds.train().get(i).unwrap();
        assert_eq!((sample.width, sample.height), (s, s));
        assert_eq!(sample.label, i as i32 % 2);
        let mut buf = Vec::new();
        assert!(sample
            .pixels(&mut buf)
            .unwrap()
            .iter()
            .all(|&v| v == (i * 40) as u8));
    }
    assert!(ds.train().get(n).is_none());
    let batch = first_train_batch(ds, 4, 5, 1).unwrap();
    assert_eq!(batch.images.len(), 5 * 16);
    // a byte flipped in the v1 shard: the background verification names it
    let mut bad = bytes.clone();
    bad[70] ^= 1;
    std::fs::write(dir.join("train-00000.shard"), &bad).unwrap();
    let err = Dataset::open(&dir).unwrap().wait_verified().unwrap_err();
    assert!(err.to_string().contains("train-00000.shard"), "{err}");
}

#[test]
fn jpeg_and_png_records_decode_to_the_source_pixels() {
    let scratch = tempfile::tempdir().unwrap();
    // a smooth non-square image, so JPEG's error stays small
    let img = RgbImage::from_fn(48, 30, |x, y| Rgb([(x * 5) as u8, (y * 8) as u8, 128]));
    let src = tmp(&scratch, "enc-src");
    std::fs::create_dir_all(src.join("only")).unwrap();
    save(
        DynamicImage::ImageRgb8(img.clone()),
        &src.join("only/a.png"),
    );
    let mut decoded = Vec::new();
    for (encoding, tolerance) in [("raw", 0u8), ("png", 0), ("jpeg", 12)] {
        let out = tmp(&scratch, encoding).join("ds");
        let mut opts = PrepareOptions::new(SourceKind::ImageFolder, &src, &out);
        opts.size = Some(64); // larger than the image: stored as it is
        opts.encoding = encoding.parse().unwrap();
        prepare(&opts).unwrap();
        let ds = Dataset::open(&out).unwrap();
        ds.wait_verified().unwrap();
        assert_eq!(ds.manifest().encoding.as_str(), encoding);
        let sample = ds.train().get(0).unwrap();
        assert_eq!((sample.width, sample.height), (48, 30));
        let pixels = sample.pixels(&mut decoded).unwrap();
        assert_eq!(pixels.len(), img.as_raw().len());
        let worst = pixels
            .iter()
            .zip(img.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= tolerance, "{encoding}: worst difference {worst}");
        if encoding != "raw" {
            assert!(
                sample.data.len() < img.as_raw().len(),
                "{encoding} is not smaller"
            );
        }
    }
}

#[test]
fn a_csv_file_list_prepares_with_its_labels_and_reports_missing_files() {
    let scratch = tempfile::tempdir().unwrap();
    let src = tmp(&scratch, "csv-src");
    std::fs::create_dir_all(src.join("imgs")).unwrap();
    save(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 20, Rgb([10, 20, 30]))),
        &src.join("imgs/a, with comma.png"),
    );
    save(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(20, 40, Rgb([200, 0, 0]))),
        &src.join("imgs/b.png"),
    );
    let list = src.join("list.csv");
    std::fs::write(
        &list,
        "path,label\nimgs/a, with comma.png,zebra\r\nimgs/b.png,ant\n\nimgs/gone.png,ant\n",
    )
    .unwrap();
    let out = tmp(&scratch, "csv-out").join("ds");
    let mut opts = PrepareOptions::new(SourceKind::Csv, &list, &out);
    opts.size = Some(10);
    let summary = prepare(&opts).unwrap();
    let m = &summary.manifest;
    assert_eq!(m.classes, vec!["ant", "zebra"]);
    assert_eq!((m.train.count, m.val.count), (2, 0), "{summary}");
    assert_eq!(m.skipped.len(), 1);
    assert_eq!(m.skipped[0].path, "imgs/gone.png");
    assert!(
        summary.to_string().contains("val: none held out"),
        "{summary}"
    );
    let ds = Dataset::open(&out).unwrap();
    let (a, b) = (ds.train().get(0).unwrap(), ds.train().get(1).unwrap());
    assert_eq!((a.label, a.width, a.height), (1, 20, 10));
    assert_eq!((b.label, b.width, b.height), (0, 10, 20));
    // a list where some rows have a label and others not is refused, naming the list
    std::fs::write(&list, "imgs/b.png,ant\nimgs/b.png\n").unwrap();
    opts.out = tmp(&scratch, "csv-out2").join("ds");
    let err = prepare(&opts).unwrap_err();
    assert!(
        err.to_string().contains("list.csv") && err.to_string().contains("line 2"),
        "{err}"
    );
}

/// The first pretraining batch of the train split: `size`-px crops of one channel, normalised
/// with mean and std 0.5.
fn first_train_batch(
    ds: std::sync::Arc<Dataset>,
    size: usize,
    batch_size: usize,
    workers: usize,
) -> Result<mae_data::loader::Batch, DataError> {
    let augment = mae_data::augment::Augment::new(
        mae_data::augment::Transform::pretrain(),
        size,
        &[0.5],
        &[0.5],
        0,
    )
    .unwrap();
    let config = mae_data::loader::LoaderConfig {
        batch_size,
        workers,
        ..Default::default()
    };
    let loader =
        mae_data::loader::Loader::new(ds, mae_data::SplitName::Train, augment, config).unwrap();
    loader.epoch(0, 0).next().unwrap()
}
