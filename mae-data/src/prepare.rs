//! Preparing a dataset: image folders, MNIST/Fashion-MNIST idx files and CIFAR-10 (binary) into
//! shards. Decoding runs on all cores; broken files are skipped and reported, never fatal.
//!
//! PyTorch counterpart: `torchvision.datasets.ImageFolder` + `transforms.Resize(S)` +
//! `CenterCrop(S)`, done once instead of every epoch; `datasets.FashionMNIST`, `datasets.CIFAR10`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fast_image_resize::Resizer;
use image::{DynamicImage, ImageReader, Limits};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::dataset::SplitName;
use crate::error::DataError;
use crate::format::{Manifest, Skipped, MAX_IMAGE_SIZE, UNLABELED};
use crate::resize::{resize_crop_into, CropBox, Interpolation};
use crate::walk::{list_dir, Walk};
use crate::writer::DatasetWriter;

/// File extensions taken as images; other files in an image folder are ignored (not reported).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "pnm", "pbm", "pgm", "ppm", "pam",
];

/// PIL's decompression-bomb threshold (`Image.MAX_IMAGE_PIXELS`).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// What a source directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `DIR/<class>/<image>` (or `DIR/train/<class>/…` + `DIR/val/<class>/…`); loose images give
    /// an unlabeled dataset.
    ImageFolder,
    /// MNIST-style `*-images-idx3-ubyte[.gz]` with `*-labels-idx1-ubyte[.gz]`; `train` and `t10k`
    /// become train and val. Class names from `classes.txt` (one per line) when present.
    Idx,
    /// The CIFAR-10 binary version (`data_batch_{1..5}.bin`, `test_batch.bin`,
    /// `batches.meta.txt`).
    Cifar10,
}

impl std::str::FromStr for SourceKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "imagefolder" => Ok(SourceKind::ImageFolder),
            "idx" => Ok(SourceKind::Idx),
            "cifar10" => Ok(SourceKind::Cifar10),
            _ => Err(DataError::Option(format!(
                "source kind `{s}`: imagefolder, idx or cifar10"
            ))),
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceKind::ImageFolder => "imagefolder",
            SourceKind::Idx => "idx",
            SourceKind::Cifar10 => "cifar10",
        })
    }
}

/// Options of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Kind of source.
    pub kind: SourceKind,
    /// Source directory.
    pub source: PathBuf,
    /// Output dataset directory.
    pub out: PathBuf,
    /// Image side; default 256 for image folders, native for idx (28) and CIFAR-10 (32).
    pub size: Option<usize>,
    /// Channels, 1 or 3; default 3 for image folders and CIFAR-10, 1 for idx.
    pub channels: Option<usize>,
    /// Fraction of a single-split source carved out as validation (stratified by class).
    pub val_fraction: f64,
    /// Seed of that split.
    pub seed: u64,
    /// Replace an existing output.
    pub force: bool,
    /// Fail if any file is skipped.
    pub strict: bool,
    /// Images with more pixels are skipped as decompression bombs.
    pub max_pixels: u64,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Samples per shard (default: shards of at most 256 MiB).
    pub shard_samples: Option<usize>,
    /// Class names, one per line, overriding the source's (for idx files without `classes.txt`).
    pub class_names: Option<PathBuf>,
}

impl PrepareOptions {
    /// Defaults for `kind` from `source` into `out`.
    pub fn new(kind: SourceKind, source: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        PrepareOptions {
            kind,
            source: source.into(),
            out: out.into(),
            size: None,
            channels: None,
            val_fraction: 0.1,
            seed: 0,
            force: false,
            strict: false,
            max_pixels: DEFAULT_MAX_PIXELS,
            progress: false,
            shard_samples: None,
            class_names: None,
        }
    }
}

/// What [`prepare`] did.
#[derive(Debug, Clone)]
pub struct PrepareSummary {
    /// The manifest written.
    pub manifest: Manifest,
    /// Wall time.
    pub seconds: f64,
    /// Leftovers of interrupted runs for the same output that were removed.
    pub cleaned: Vec<PathBuf>,
}

impl std::fmt::Display for PrepareSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.manifest;
        for c in &self.cleaned {
            writeln!(f, "removed {}, left by an interrupted run", c.display())?;
        }
        writeln!(
            f,
            "{} images ({} train, {} val), {}×{}×{}, {} classes, in {:.1}s ({:.0} images/s)",
            m.count,
            m.train.count,
            m.val.count,
            m.image_size,
            m.image_size,
            m.channels,
            m.classes.len(),
            self.seconds,
            (m.count + m.skipped.len()) as f64 / self.seconds.max(1e-9)
        )?;
        if m.skipped.is_empty() {
            write!(f, "nothing skipped")
        } else {
            writeln!(f, "{} skipped:", m.skipped.len())?;
            for (i, s) in m.skipped.iter().enumerate() {
                if i > 0 {
                    writeln!(f)?;
                }
                write!(f, "  {}: {}", s.path, s.reason)?;
            }
            Ok(())
        }
    }
}

/// An image to be written: a file to decode, or pixels already in memory.
enum Item {
    File {
        path: PathBuf,
        rel: String,
        label: i32,
    },
    Raw {
        pixels: Vec<u8>,
        width: usize,
        height: usize,
        channels: usize,
        label: i32,
    },
}

impl Item {
    fn label(&self) -> i32 {
        match self {
            Item::File { label, .. } | Item::Raw { label, .. } => *label,
        }
    }
}

/// A source read into items: either both splits, or one split to be divided.
struct Listing {
    train: Vec<Item>,
    val: Option<Vec<Item>>,
    classes: Vec<String>,
    skipped: Vec<Skipped>,
    native_size: Option<usize>,
    native_channels: usize,
}

impl PrepareOptions {
    /// Checks the numbers given, before anything is read or written.
    fn check(&self) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::Option(m));
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!(
                "--val-fraction {} is outside [0, 1)",
                self.val_fraction
            ));
        }
        if let Some(size) = self.size.filter(|s| !(1..=MAX_IMAGE_SIZE).contains(s)) {
            return bad(format!("--size {size} is outside 1..={MAX_IMAGE_SIZE}"));
        }
        if let Some(c) = self.channels.filter(|c| !(*c == 1 || *c == 3)) {
            return bad(format!("--channels {c}: 1 or 3"));
        }
        if self.shard_samples == Some(0) {
            return bad("--shard-samples must be at least 1".into());
        }
        if self.max_pixels == 0 {
            return bad("--max-pixels must be at least 1".into());
        }
        Ok(())
    }
}

/// Prepares a dataset directory; see [`PrepareOptions`]. Nothing is written until the options,
/// the source and the output folder have passed their checks: `--out` apart from the source, and
/// replaced (with `force`) only when it is a prepared dataset with nothing else in it.
pub fn prepare(opts: &PrepareOptions) -> Result<PrepareSummary, DataError> {
    let start = Instant::now();
    opts.check()?;
    if fs::metadata(&opts.source).is_err() {
        return Err(DataError::source(&opts.source, "not found"));
    }
    crate::outdir::check_apart(&opts.source, &opts.out)?;
    crate::outdir::check_replaceable(&opts.out, opts.force)?;
    let cleaned = crate::outdir::clean_leftovers(&opts.out)?;
    let listing = match opts.kind {
        SourceKind::ImageFolder => list_image_folder(&opts.source)?,
        SourceKind::Idx => list_idx(&opts.source)?,
        SourceKind::Cifar10 => list_cifar10(&opts.source)?,
    };
    let mut classes = listing.classes;
    if let Some(path) = &opts.class_names {
        let names = class_names_file(path)?
            .ok_or_else(|| DataError::source(path, "class names file not found"))?;
        if names.len() < classes.len() {
            return Err(DataError::source(
                path,
                format!("{} names for {} classes", names.len(), classes.len()),
            ));
        }
        classes = names;
    }
    let size = opts.size.or(listing.native_size).unwrap_or(256);
    let channels = opts.channels.unwrap_or(listing.native_channels);
    let (train, val) = match listing.val {
        Some(val) => (listing.train, val),
        None => stratified_split(listing.train, opts.val_fraction, opts.seed),
    };
    let mut writer = DatasetWriter::create(&opts.out, size, channels, opts.force)?;
    if let Some(n) = opts.shard_samples {
        writer = writer.with_shard_samples(n);
    }
    let total = (train.len() + val.len()) as u64;
    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images, {per_sec}, ETA {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut skipped = listing.skipped;
    let convert = Convert {
        size,
        channels,
        max_pixels: opts.max_pixels,
    };
    for (split, items) in [(SplitName::Train, train), (SplitName::Val, val)] {
        for chunk in items.chunks(256) {
            let results: Vec<Result<Vec<u8>, String>> = chunk
                .par_iter()
                .map_init(Resizer::new, |resizer, item| convert.item(resizer, item))
                .collect();
            for (item, result) in chunk.iter().zip(results) {
                match result {
                    Ok(pixels) => writer.push(split, &pixels, item.label())?,
                    Err(reason) => skipped.push(Skipped {
                        path: match item {
                            Item::File { rel, .. } => rel.clone(),
                            Item::Raw { .. } => "<in-memory record>".into(),
                        },
                        reason,
                    }),
                }
            }
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    let written = writer.count(SplitName::Train) + writer.count(SplitName::Val);
    if written == 0 {
        return Err(DataError::NothingRead {
            path: opts.source.clone(),
            skipped: skipped.len(),
        });
    }
    if opts.strict && !skipped.is_empty() {
        return Err(DataError::Strict {
            path: opts.source.clone(),
            skipped: skipped.len(),
            first: format!("{}: {}", skipped[0].path, skipped[0].reason),
        });
    }
    let source = format!("{} {}", opts.kind, opts.source.display());
    let manifest = writer.finish(classes, source, skipped)?;
    Ok(PrepareSummary {
        manifest,
        seconds: start.elapsed().as_secs_f64(),
        cleaned,
    })
}

/// Divides one list into train and val: per class, a seeded shuffle picks
/// `round(n_class · fraction)` samples for val. Both keep the source order.
fn stratified_split(items: Vec<Item>, fraction: f64, seed: u64) -> (Vec<Item>, Vec<Item>) {
    let mut by_class: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        by_class.entry(item.label()).or_default().push(i);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut is_val = vec![false; items.len()];
    for members in by_class.values_mut() {
        members.shuffle(&mut rng);
        let n_val = (members.len() as f64 * fraction).round() as usize;
        for &i in &members[..n_val.min(members.len())] {
            is_val[i] = true;
        }
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (item, v) in items.into_iter().zip(is_val) {
        if v {
            val.push(item)
        } else {
            train.push(item)
        }
    }
    (train, val)
}

struct Convert {
    size: usize,
    channels: usize,
    max_pixels: u64,
}

impl Convert {
    /// Decodes (if needed), converts to the channel count, and resizes the shorter side to `size`
    /// with a centre crop. The error is the reason to report.
    fn item(&self, resizer: &mut Resizer, item: &Item) -> Result<Vec<u8>, String> {
        let image = match item {
            Item::File { path, .. } => self.decode(path)?,
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
        let mut out = vec![0u8; self.size * self.size * self.channels];
        resize_crop_into(
            resizer,
            &src,
            w,
            h,
            self.channels,
            CropBox::center_square(w, h),
            &mut out,
            self.size,
            self.size,
            Interpolation::Bicubic,
        )
        .map_err(|e| e.to_string())?;
        Ok(out)
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

/// The decoder's allocation limit for images of at most `max_pixels` pixels (also the largest
/// image file read).
fn max_alloc(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(8).max(64 << 20)
}

/// Decodes an image file's bytes as `prepare` does: the format from the contents, at most
/// `max_pixels` pixels (decompression bombs), EXIF orientation applied, and a JPEG that ends
/// before its end-of-image marker refused as truncated (the decoder would fill the missing part
/// with grey and say nothing). The error is the reason to report.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, String> {
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

/// Decodes one image file (EXIF orientation applied), converts it to `channels` and resizes its
/// shorter side to `size` with a centre crop: the pixels `prepare` would store, `size × size ×
/// channels` HWC. For tools that take image files directly (`mae reconstruct --image`).
pub fn load_image(path: &Path, size: usize, channels: usize) -> Result<Vec<u8>, DataError> {
    if size == 0 || !(channels == 1 || channels == 3) {
        return Err(DataError::Option(format!(
            "cannot load images at size {size} with {channels} channels"
        )));
    }
    let convert = Convert {
        size,
        channels,
        max_pixels: DEFAULT_MAX_PIXELS,
    };
    let item = Item::File {
        path: path.to_path_buf(),
        rel: path.display().to_string(),
        label: UNLABELED,
    };
    convert
        .item(&mut Resizer::new(), &item)
        .map_err(|reason| DataError::source(path, reason))
}

fn list_image_folder(dir: &Path) -> Result<Listing, DataError> {
    let mut walk = Walk::new(dir, &list_dir)?;
    let top = walk.folders(dir);
    // DIR/train/<class>/… and DIR/val/<class>/…: both splits given
    let split_dirs = top.iter().any(|c| c.0 == "train") && top.iter().any(|c| c.0 == "val");
    let collect = |walk: &mut Walk<'_>,
                   class_dirs: Vec<(String, PathBuf)>,
                   classes: &[String]|
     -> Vec<Item> {
        let mut items = Vec::new();
        for (name, path) in class_dirs {
            let label = classes.iter().position(|c| *c == name).map(|i| i as i32);
            for f in walk.images_under(&path) {
                items.push(Item::File {
                    rel: walk.rel(&f),
                    path: f,
                    label: label.unwrap_or(UNLABELED),
                });
            }
        }
        items
    };
    let (train, val, classes) = if split_dirs {
        let train_dirs = walk.folders(&dir.join("train"));
        let classes: Vec<String> = train_dirs.iter().map(|c| c.0.clone()).collect();
        let train = collect(&mut walk, train_dirs, &classes);
        let val_dirs = walk.folders(&dir.join("val"));
        let val = collect(&mut walk, val_dirs, &classes);
        (train, Some(val), classes)
    } else {
        let mut classes: Vec<String> = top.iter().map(|c| c.0.clone()).collect();
        let mut items = collect(&mut walk, top, &classes);
        // loose images directly in DIR: unlabeled when there are no class folders
        let loose = walk.images_in(dir);
        if !loose.is_empty() && items.is_empty() {
            classes.clear();
        }
        for f in loose {
            let rel = walk.rel(&f);
            if classes.is_empty() {
                items.push(Item::File {
                    rel,
                    path: f,
                    label: UNLABELED,
                });
            } else {
                // images outside class folders of a labeled dataset: reported, not silently dropped
                walk.skipped.push(Skipped {
                    path: rel,
                    reason: "image outside the class folders".into(),
                });
            }
        }
        (items, None, classes)
    };
    Ok(Listing {
        train,
        val,
        classes,
        skipped: walk.skipped,
        native_size: None,
        native_channels: 3,
    })
}

/// Reads a file, un-gzipping it when its name ends in `.gz`.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = fs::read(path).map_err(|e| DataError::io(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::source(path, format!("gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Parses an idx file: magic `0 0 0x08 ndim`, big-endian `u32` dims, `u8` data. Returns the
/// dims and the data; the error says what is wrong.
pub fn parse_idx(bytes: &[u8], ndim: u8) -> Result<(Vec<usize>, &[u8]), String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] != ndim {
        return Err(format!(
            "not an idx file of unsigned bytes with {ndim} dimensions"
        ));
    }
    let header = 4 + 4 * ndim as usize;
    if bytes.len() < header {
        return Err("truncated idx header".into());
    }
    let dims: Vec<usize> = (0..ndim as usize)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_add(header));
    if n != Some(bytes.len()) {
        let need = n.map_or("more bytes than can exist".to_string(), |n| {
            format!("{n} bytes")
        });
        return Err(format!(
            "idx dims {dims:?} need {need}, the file has {}",
            bytes.len()
        ));
    }
    Ok((dims, &bytes[header..]))
}

/// One CIFAR-10 binary batch (records of a label byte and 3×32×32 planar pixels) as
/// `(label, HWC pixels)`; the error says what is wrong.
pub fn parse_cifar10_batch(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    const RECORD: usize = 1 + 3 * 32 * 32;
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(format!(
            "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(RECORD)
        .map(|r| {
            // planes R, G, B of 32×32 → HWC
            let mut hwc = vec![0u8; 3 * 1024];
            for (c, plane) in r[1..].chunks_exact(1024).enumerate() {
                for (i, &v) in plane.iter().enumerate() {
                    hwc[i * 3 + c] = v;
                }
            }
            (r[0], hwc)
        })
        .collect())
}

fn idx_split(dir: &Path, prefix: &str) -> Result<Option<(Vec<Item>, usize)>, DataError> {
    let Some(images_path) = find_file(dir, &format!("{prefix}-images-idx3-ubyte")) else {
        return Ok(None);
    };
    let labels_path = find_file(dir, &format!("{prefix}-labels-idx1-ubyte")).ok_or_else(|| {
        DataError::source(dir, format!("{prefix}-labels-idx1-ubyte[.gz] is missing"))
    })?;
    let image_bytes = read_maybe_gz(&images_path)?;
    let (dims, pixels) =
        parse_idx(&image_bytes, 3).map_err(|m| DataError::source(&images_path, m))?;
    let label_bytes = read_maybe_gz(&labels_path)?;
    let (ldims, labels) =
        parse_idx(&label_bytes, 1).map_err(|m| DataError::source(&labels_path, m))?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::source(
            &images_path,
            format!("{}×{} images", dims[1], dims[2]),
        ));
    }
    if ldims[0] != dims[0] {
        return Err(DataError::source(
            &labels_path,
            format!("{} labels for {} images", ldims[0], dims[0]),
        ));
    }
    let (h, w) = (dims[1], dims[2]);
    let items = pixels
        .chunks_exact(h * w)
        .zip(labels)
        .map(|(p, &l)| Item::Raw {
            pixels: p.to_vec(),
            width: w,
            height: h,
            channels: 1,
            label: l as i32,
        })
        .collect();
    Ok(Some((items, h.max(w))))
}

fn class_names_file(path: &Path) -> Result<Option<Vec<String>>, DataError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    ))
}

fn check_labels(path: &Path, items: &[Item], classes: &[String]) -> Result<(), DataError> {
    if let Some(bad) = items
        .iter()
        .map(Item::label)
        .find(|&l| l < 0 || l as usize >= classes.len())
    {
        return Err(DataError::source(
            path,
            format!("label {bad} but only {} class names", classes.len()),
        ));
    }
    Ok(())
}

fn list_idx(dir: &Path) -> Result<Listing, DataError> {
    let train = idx_split(dir, "train")?;
    let test = idx_split(dir, "t10k")?;
    let (train, val, size) = match (train, test) {
        (Some((t, s)), Some((v, _))) => (t, Some(v), s),
        (Some((t, s)), None) | (None, Some((t, s))) => (t, None, s),
        (None, None) => {
            return Err(DataError::source(
                dir,
                "no train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz] here",
            ))
        }
    };
    let max_label = train
        .iter()
        .chain(val.iter().flatten())
        .map(Item::label)
        .max()
        .unwrap_or(0);
    let classes = match class_names_file(&dir.join("classes.txt"))? {
        Some(c) => c,
        None => (0..=max_label).map(|l| l.to_string()).collect(),
    };
    check_labels(&dir.join("classes.txt"), &train, &classes)?;
    Ok(Listing {
        train,
        val,
        classes,
        skipped: Vec::new(),
        native_size: Some(size),
        native_channels: 1,
    })
}

fn list_cifar10(dir: &Path) -> Result<Listing, DataError> {
    let dir = if dir.join("cifar-10-batches-bin").is_dir() {
        dir.join("cifar-10-batches-bin")
    } else {
        dir.to_path_buf()
    };
    let read_batch = |name: &str| -> Result<Vec<Item>, DataError> {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let records = parse_cifar10_batch(&bytes).map_err(|m| DataError::source(&path, m))?;
        Ok(records
            .into_iter()
            .map(|(label, pixels)| Item::Raw {
                pixels,
                width: 32,
                height: 32,
                channels: 3,
                label: label as i32,
            })
            .collect())
    };
    let mut train = Vec::new();
    for i in 1..=5 {
        train.extend(read_batch(&format!("data_batch_{i}.bin"))?);
    }
    let val = read_batch("test_batch.bin")?;
    let classes = class_names_file(&dir.join("batches.meta.txt"))?.unwrap_or_else(|| {
        [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
        .map(String::from)
        .to_vec()
    });
    check_labels(&dir.join("batches.meta.txt"), &train, &classes)?;
    Ok(Listing {
        train,
        val: Some(val),
        classes,
        skipped: Vec::new(),
        native_size: Some(32),
        native_channels: 3,
    })
}
