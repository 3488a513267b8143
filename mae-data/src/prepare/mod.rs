//! Preparing a dataset: image folders, CSV file lists, MNIST/Fashion-MNIST idx files and CIFAR-10
//! (binary) into shards. Decoding, resizing and encoding run on all cores while the previous
//! chunk is written and hashed; broken files are skipped and reported, never fatal. Modules:
//! `sources` (what is read), `convert` (one image to one record).
//!
//! PyTorch counterpart: `torchvision.datasets.ImageFolder` + `transforms.Resize(S)` (the shorter
//! side; the crop is left to the loader, from the whole image), done once instead of every
//! epoch; `datasets.FashionMNIST`, `datasets.CIFAR10`.

mod convert;
mod sources;
mod webdataset;

pub use convert::{decode_image, load_image, stored_size};
pub use sources::{parse_cifar10_batch, parse_idx};
pub use webdataset::{scan_tar_members, TarMember};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fast_image_resize::Resizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::dataset::SplitName;
use crate::error::DataError;
use crate::format::{Encoding, Manifest, Skipped, MAX_IMAGE_SIZE};
use crate::writer::{DatasetWriter, Record, DEFAULT_QUALITY};
use convert::Convert;

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
    /// A CSV file list: `path,label` rows (or `path` alone), paths relative to the list's folder.
    Csv,
    /// Tar shards in the WebDataset layout: one `.tar` or a folder of them; `KEY.jpg|jpeg|png|webp`
    /// images with optional `KEY.cls` labels (else the folder in the key is the class).
    Tar,
}

impl std::str::FromStr for SourceKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "imagefolder" => Ok(SourceKind::ImageFolder),
            "idx" => Ok(SourceKind::Idx),
            "cifar10" => Ok(SourceKind::Cifar10),
            "csv" => Ok(SourceKind::Csv),
            "tar" => Ok(SourceKind::Tar),
            _ => Err(DataError::Option(format!(
                "source kind `{s}`: imagefolder, csv, tar, idx or cifar10"
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
            SourceKind::Csv => "csv",
            SourceKind::Tar => "tar",
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
    /// The shorter side images are resized to (never enlarged; the aspect ratio is kept);
    /// default 256 for image folders, lists and tars, native for idx (28) and CIFAR-10 (32).
    pub size: Option<usize>,
    /// How records are stored (default raw).
    pub encoding: Encoding,
    /// JPEG quality, 1–100.
    pub quality: u8,
    /// Channels, 1 or 3; default 3 for image folders and CIFAR-10, 1 for idx.
    pub channels: Option<usize>,
    /// Fraction of a single-split source carved out as validation (stratified by class). `None`:
    /// 0 for image folders, file lists and tars (the official pretraining trains on all of `train/`),
    /// 0.1 for an idx source with one split (the bundled Fashion-MNIST test set, so the demo can
    /// evaluate). A source with its own splits (`train/` + `val/`, idx train + t10k, CIFAR-10)
    /// keeps them whatever this is.
    pub val_fraction: Option<f64>,
    /// Seed of that split.
    pub seed: u64,
    /// Replace an existing output.
    pub force: bool,
    /// Fail if any file is skipped.
    pub strict: bool,
    /// Images with more pixels are skipped as decompression bombs.
    pub max_pixels: u64,
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
            encoding: Encoding::Raw,
            quality: DEFAULT_QUALITY,
            channels: None,
            val_fraction: None,
            seed: 0,
            force: false,
            strict: false,
            max_pixels: DEFAULT_MAX_PIXELS,
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
    /// Where the val split came from, when the source had none of its own.
    pub val_note: Option<String>,
}

impl std::fmt::Display for PrepareSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.manifest;
        for c in &self.cleaned {
            writeln!(f, "removed {}, left by an interrupted run", c.display())?;
        }
        let shape = if m.format_version >= 2 {
            format!(
                "shorter side {} (aspect kept), {} channel(s), {}",
                m.image_size, m.channels, m.encoding
            )
        } else {
            format!("{}×{}×{}", m.image_size, m.image_size, m.channels)
        };
        writeln!(
            f,
            "{} images ({} train, {} val), {shape}, {} classes, in {:.1}s ({:.0} images/s)",
            m.count,
            m.train.count,
            m.val.count,
            m.classes.len(),
            self.seconds,
            (m.count + m.skipped.len()) as f64 / self.seconds.max(1e-9)
        )?;
        if let Some(note) = &self.val_note {
            writeln!(f, "{note}")?;
        }
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

/// An image to be written: a file to decode, a tar member to read and decode, or pixels already
/// in memory.
enum Item {
    File {
        path: PathBuf,
        rel: String,
        label: i32,
    },
    Member {
        tar: std::sync::Arc<Path>,
        offset: u64,
        len: u64,
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
            Item::File { label, .. } | Item::Member { label, .. } | Item::Raw { label, .. } => {
                *label
            }
        }
    }

    /// The name reported when the item is skipped.
    fn name(&self) -> String {
        match self {
            Item::File { rel, .. } | Item::Member { rel, .. } => rel.clone(),
            Item::Raw { .. } => "<in-memory record>".into(),
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
        if let Some(f) = self.val_fraction.filter(|f| !(0.0..1.0).contains(f)) {
            return bad(format!("--val-fraction {f} is outside [0, 1)"));
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
        if !(1..=100).contains(&self.quality) {
            return bad(format!("--quality {} is outside 1..=100", self.quality));
        }
        Ok(())
    }
}

/// Prepares a dataset directory; see [`PrepareOptions`]. Nothing is written until the options,
/// the source and the output folder have passed their checks: `--out` apart from the source, and
/// replaced (with `force`) only when it is a prepared dataset with nothing else in it.
pub fn prepare(opts: &PrepareOptions) -> Result<PrepareSummary, DataError> {
    prepare_with(opts, &mut |_| {})
}

/// How far [`prepare_with`] is: `done` of `total` source images converted (written or skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareProgress {
    /// Images converted so far.
    pub done: u64,
    /// Images listed in the source.
    pub total: u64,
}

/// [`prepare`], telling `progress` how far it is: once when the source is listed (`done` 0),
/// then after each chunk of images. The library prints nothing; the caller draws a bar or logs.
pub fn prepare_with(
    opts: &PrepareOptions,
    progress: &mut (dyn FnMut(PrepareProgress) + Send),
) -> Result<PrepareSummary, DataError> {
    let start = Instant::now();
    opts.check()?;
    if fs::metadata(&opts.source).is_err() {
        return Err(DataError::source(&opts.source, "not found"));
    }
    crate::outdir::check_apart(&opts.source, &opts.out)?;
    crate::outdir::check_replaceable(&opts.out, opts.force)?;
    let cleaned = crate::outdir::clean_leftovers(&opts.out)?;
    let listing = match opts.kind {
        SourceKind::ImageFolder => sources::list_image_folder(&opts.source)?,
        SourceKind::Idx => sources::list_idx(&opts.source)?,
        SourceKind::Cifar10 => sources::list_cifar10(&opts.source)?,
        SourceKind::Csv => sources::list_csv(&opts.source)?,
        SourceKind::Tar => webdataset::list_tar(&opts.source)?,
    };
    let mut classes = listing.classes;
    if let Some(path) = &opts.class_names {
        let names = sources::class_names_file(path)?
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
    let (train, val, val_note) = match listing.val {
        Some(val) => (listing.train, val, None),
        None => {
            let fraction = opts.val_fraction.unwrap_or(match opts.kind {
                SourceKind::Idx => 0.1,
                _ => 0.0,
            });
            let (train, val) = stratified_split(listing.train, fraction, opts.seed);
            let note = if val.is_empty() {
                "val: none held out; all images train, as in the official pretraining \
                 (--val-fraction F holds out F of each class)"
                    .to_string()
            } else {
                format!(
                    "val: {} images held out by --val-fraction {} (stratified, seed {})",
                    val.len(),
                    fraction,
                    opts.seed
                )
            };
            (train, val, Some(note))
        }
    };
    let mut writer = DatasetWriter::create(&opts.out, size, channels, opts.force)?
        .with_encoding(opts.encoding, opts.quality)?;
    if let Some(n) = opts.shard_samples {
        writer = writer.with_shard_samples(n);
    }
    let total = (train.len() + val.len()) as u64;
    let mut done = 0u64;
    progress(PrepareProgress { done, total });
    let mut report = |n: usize| {
        done += n as u64;
        progress(PrepareProgress { done, total });
    };
    let mut skipped = listing.skipped;
    // the records are encoded as the writer will label them
    let (encoding, quality) = writer.encoding();
    let convert = Convert {
        size,
        channels,
        max_pixels: opts.max_pixels,
        encoding,
        quality,
    };
    for (split, items) in [(SplitName::Train, train), (SplitName::Val, val)] {
        write_pipelined(
            &convert,
            &items,
            &mut writer,
            split,
            &mut skipped,
            &mut report,
        )?;
    }
    let written = writer.count(SplitName::Train) + writer.count(SplitName::Val);
    if written == 0 {
        return Err(DataError::NothingRead {
            path: opts.source.clone(),
            skipped: skipped.len(),
            first: skipped.first().map_or(String::new(), |s| {
                format!("; the first: {}: {}", s.path, s.reason)
            }),
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
        val_note,
    })
}

/// A chunk of items and what each became.
type Converted<'a> = (&'a [Item], Vec<Result<Record, String>>);

/// Images converted per parallel round.
const CHUNK: usize = 256;

/// Converts `items` on all cores, chunk by chunk, while the previous chunk's records are written
/// and hashed on this thread: decode, resize, encode, checksum and write overlap.
fn write_pipelined(
    convert: &Convert,
    items: &[Item],
    writer: &mut DatasetWriter,
    split: SplitName,
    skipped: &mut Vec<Skipped>,
    report: &mut (dyn FnMut(usize) + Send),
) -> Result<(), DataError> {
    let run = |chunk: &[Item]| -> Vec<Result<Record, String>> {
        chunk
            .par_iter()
            .map_init(Resizer::new, |resizer, item| convert.item(resizer, item))
            .collect()
    };
    let mut pending: Option<Converted<'_>> = None;
    let mut chunks = items.chunks(CHUNK);
    loop {
        let next = chunks.next();
        let (written, converted) = rayon::join(
            || -> Result<(), DataError> {
                if let Some((chunk, results)) = pending.take() {
                    for (item, result) in chunk.iter().zip(results) {
                        match result {
                            Ok(record) => writer.push_record(split, &record)?,
                            Err(reason) => skipped.push(Skipped {
                                path: item.name(),
                                reason,
                            }),
                        }
                    }
                    report(chunk.len());
                }
                Ok(())
            },
            || next.map(|chunk| (chunk, run(chunk))),
        );
        written?;
        match converted {
            Some(p) => pending = Some(p),
            None => return Ok(()),
        }
    }
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
