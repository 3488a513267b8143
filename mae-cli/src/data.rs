//! `mae data ...`: prepare, inspect, verify and look at datasets (library: `mae-data`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use mae_data::{prepare_with, Dataset, PrepareOptions, SourceKind, SplitName, Verify};

/// Dataset commands.
#[derive(Subcommand)]
pub enum DataCommand {
    /// Prepare an image folder, idx files or CIFAR-10 into checksummed shards.
    Prepare(PrepareArgs),
    /// Print a dataset's manifest summary.
    Info {
        /// Dataset directory.
        dir: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-check every shard's checksum; non-zero exit naming the shard on a mismatch.
    Verify {
        /// Dataset directory.
        dir: PathBuf,
    },
    /// Write a grid of samples with their class names as a PNG.
    Show {
        /// Dataset directory.
        dir: PathBuf,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
        /// Number of samples.
        #[arg(long, default_value_t = 32)]
        count: usize,
        /// Samples per row.
        #[arg(long, default_value_t = 8)]
        cols: usize,
        /// Show the validation split instead of train.
        #[arg(long)]
        val: bool,
        /// Replace an existing --out that is not an earlier `mae data show` picture.
        #[arg(long)]
        force: bool,
    },
}

/// `mae data prepare` arguments.
#[derive(Args)]
pub struct PrepareArgs {
    /// Source kind and path: `imagefolder DIR`, `csv LIST.csv` (`path,label` rows, paths relative
    /// to the list), `tar SHARD.tar|DIR` (WebDataset tar shards: `KEY.jpg|png|webp` images with
    /// `KEY.cls` labels, or the folder in the key as the class; uncompressed), `idx DIR` or
    /// `cifar10 DIR`.
    #[arg(long, num_args = 2, value_names = ["KIND", "DIR"], required = true)]
    from: Vec<String>,
    /// Output dataset directory.
    #[arg(long)]
    out: PathBuf,
    /// The shorter side images are resized to, the aspect ratio kept and never enlarged (default
    /// 256 for imagefolder, csv and tar, as the official eval's Resize(256); native for idx, cifar10).
    #[arg(long)]
    size: Option<usize>,
    /// How images are stored: raw (no decode at load time, largest; the default), jpeg (13x
    /// smaller on photos at q90, loads at ~64% of raw's speed; BENCHMARKS.md) or png (lossless,
    /// smaller than raw for flat images).
    #[arg(long, default_value = "raw")]
    encoding: mae_data::format::Encoding,
    /// JPEG quality for --encoding jpeg (1-100).
    #[arg(long, default_value_t = mae_data::writer::DEFAULT_QUALITY)]
    quality: u8,
    /// Channels, 1 or 3 (default 3, or 1 for idx).
    #[arg(long)]
    channels: Option<usize>,
    /// Fraction held out as validation from a source without its own val split (stratified by
    /// class). Default 0 for imagefolder, csv and tar (the official pretraining uses all of train;
    /// give `DIR/train` + `DIR/val` folders, or e.g. 0.1, for a val split to fine-tune on), 0.1
    /// for a single idx split.
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Seed of that split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace an existing output directory; only a dataset prepared earlier (its manifest and
    /// shards, nothing else) is ever replaced, never the source or a folder holding it.
    #[arg(long)]
    force: bool,
    /// Fail if any file is skipped.
    #[arg(long)]
    strict: bool,
    /// Skip images with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = mae_data::prepare::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Class names, one per line (for idx files without `classes.txt`).
    #[arg(long)]
    class_names: Option<PathBuf>,
    /// Samples per shard (default: shards of at most 256 MiB).
    #[arg(long)]
    shard_samples: Option<usize>,
}

/// [`mae_data::prepare`] with its progress drawn on stderr (a bar on a terminal, else timestamped
/// lines with an ETA).
fn prepare_reported(opts: &PrepareOptions) -> Result<mae_data::PrepareSummary> {
    let console = crate::progress::Console::new(crate::progress::Stream::Stderr);
    let observer: &dyn mae_train::progress::Observer = &*console;
    let mut pass: Option<mae_train::progress::Pass<'_>> = None;
    let mut last = 0u64;
    let summary = prepare_with(opts, &mut |p| {
        let pass = pass.get_or_insert_with(|| {
            mae_train::progress::Pass::start(observer, "prepare", p.total as usize)
        });
        pass.add(p.done.saturating_sub(last) as usize);
        last = p.done;
    });
    drop(pass);
    Ok(summary?)
}

/// Runs one data command.
pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Prepare(a) => {
            let [kind, dir] = <[String; 2]>::try_from(a.from)
                .map_err(|_| anyhow::anyhow!("--from takes a kind and a path"))?;
            let kind: SourceKind = kind.parse()?;
            let mut opts = PrepareOptions::new(kind, dir, &a.out);
            opts.size = a.size;
            opts.encoding = a.encoding;
            opts.quality = a.quality;
            opts.channels = a.channels;
            opts.val_fraction = a.val_fraction;
            opts.seed = a.seed;
            opts.force = a.force;
            opts.strict = a.strict;
            opts.max_pixels = a.max_pixels;
            opts.class_names = a.class_names;
            opts.shard_samples = a.shard_samples;
            let summary = prepare_reported(&opts)?;
            say!("{}: {summary}", a.out.display());
        }
        DataCommand::Info { dir, json } => {
            let ds = Dataset::open_with(&dir, Verify::Structure)?;
            let m = ds.manifest();
            if json {
                let shards: Vec<_> = m.train.shards.iter().chain(&m.val.shards).collect();
                let obj = serde_json::json!({
                    "dir": dir,
                    "count": m.count,
                    "train": m.train.count,
                    "val": m.val.count,
                    "classes": m.classes,
                    "image_size": m.image_size,
                    "channels": m.channels,
                    "mean": m.mean,
                    "std": m.std,
                    "source": m.source,
                    "shards": shards,
                    "skipped": m.skipped,
                });
                say!("{obj}");
            } else {
                say!("{}", dir.display());
                say!(
                    "  {} images: {} train, {} val",
                    m.count,
                    m.train.count,
                    m.val.count
                );
                say!("  {}×{}×{}", m.image_size, m.image_size, m.channels);
                say!("  {} classes: {}", m.classes.len(), m.classes.join(", "));
                say!("  mean {:?}, std {:?}", m.mean, m.std);
                say!(
                    "  {} shards, from {}",
                    m.train.shards.len() + m.val.shards.len(),
                    m.source
                );
                say!("  {} skipped", m.skipped.len());
                for s in &m.skipped {
                    say!("    {}: {}", s.path, s.reason);
                }
            }
        }
        DataCommand::Verify { dir } => {
            let n = mae_data::dataset::verify(&dir)?;
            say!("{}: {n} shards, all checksums match", dir.display());
        }
        DataCommand::Show {
            dir,
            out,
            count,
            cols,
            val,
            force,
        } => {
            if cols == 0 || count == 0 {
                bail!("--count and --cols must be at least 1");
            }
            let inputs = crate::outputs::input_files(&[], &[&dir]);
            let kind = crate::outputs::Kind::Png("mae data show");
            crate::outputs::check("--out", &out, kind, &inputs, force)?;
            let ds = Arc::new(Dataset::open(&dir)?);
            let split = if val {
                SplitName::Val
            } else {
                SplitName::Train
            };
            let (img, n) = mae_data::preview::grid(&ds, split, count, cols)?;
            let png = mae_data::png::encode(&img, "data show")?;
            mae_core::weights::write_atomic(&out, &png)?;
            say!("wrote {} ({n} samples)", out.display());
        }
    }
    Ok(())
}
