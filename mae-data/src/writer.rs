//! Writing a prepared dataset: version-2 shards (records, index, footer) and the manifest, into a
//! temporary directory that is renamed into place only when everything is written and synced. An
//! interrupted run leaves no half dataset under the output name. Each shard is written front to
//! back once and hashed as it is written (no re-read).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::dataset::SplitName;
use crate::error::DataError;
use crate::format::{
    Checksum, Encoding, IndexEntry, Manifest, ShardEntry, ShardFooter, ShardHeader, Skipped,
    SplitEntry, FORMAT_NAME, FORMAT_VERSION, MANIFEST, MAX_IMAGE_SIZE, MAX_STORED_SIDE,
};

/// Default upper bound of one shard's size.
pub const DEFAULT_SHARD_BYTES: u64 = 256 << 20;

/// Lanes of [`PixelStats::of`]'s vectorised sums.
const LANES: usize = 48;
/// Values per lane before its `u32` sums are moved to `u64`: 65,536 · 255² < 2³².
const LANE_BLOCK: usize = 1 << 16;

/// Per-channel sums of a set of pixels, for the manifest's mean and std.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PixelStats {
    /// Sum of the `u8` values, per channel.
    pub sum: Vec<u64>,
    /// Sum of their squares, per channel.
    pub sum_sq: Vec<u64>,
    /// Pixels counted (per channel).
    pub pixels: u64,
}

impl PixelStats {
    /// The sums of one HWC image with `channels` channels.
    pub fn of(pixels: &[u8], channels: usize) -> Self {
        if channels == 0 {
            return PixelStats::default();
        }
        let mut sum = vec![0u64; channels];
        let mut sum_sq = vec![0u64; channels];
        // LANES values at a time in u32 lanes (vectorised); lane l is channel l % channels, so
        // the channel count must divide LANES (1, 2, 3, 4, 6, …); the rest one at a time
        let full = if LANES.is_multiple_of(channels) {
            pixels.len() / LANES * LANES
        } else {
            0
        };
        let mut lane_sum = [0u64; LANES];
        let mut lane_sq = [0u64; LANES];
        for block in pixels[..full].chunks(LANES * LANE_BLOCK) {
            let (mut s, mut q) = ([0u32; LANES], [0u32; LANES]);
            for values in block.chunks_exact(LANES) {
                for l in 0..LANES {
                    let v = values[l] as u32;
                    s[l] += v;
                    q[l] += v * v;
                }
            }
            for l in 0..LANES {
                lane_sum[l] += s[l] as u64;
                lane_sq[l] += q[l] as u64;
            }
        }
        if full > 0 {
            for l in 0..LANES {
                sum[l % channels] += lane_sum[l];
                sum_sq[l % channels] += lane_sq[l];
            }
        }
        // `full` is a multiple of the channel count: the rest starts at channel 0
        for px in pixels[full..].chunks_exact(channels) {
            for (c, &v) in px.iter().enumerate() {
                sum[c] += v as u64;
                sum_sq[c] += (v as u64) * (v as u64);
            }
        }
        PixelStats {
            sum,
            sum_sq,
            pixels: (pixels.len() / channels.max(1)) as u64,
        }
    }

    fn add(&mut self, other: &PixelStats) {
        if self.sum.is_empty() {
            *self = other.clone();
            return;
        }
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sum_sq.iter_mut().zip(&other.sum_sq) {
            *a += b;
        }
        self.pixels += other.pixels;
    }

    /// Mean and standard deviation per channel, in `[0, 1]` units.
    fn mean_std(&self, channels: usize) -> (Vec<f64>, Vec<f64>) {
        let n = (self.pixels as f64).max(1.0);
        let mean: Vec<f64> = (0..channels)
            .map(|c| self.sum.get(c).copied().unwrap_or(0) as f64 / n / 255.0)
            .collect();
        let std = (0..channels)
            .map(|c| {
                let sq = self.sum_sq.get(c).copied().unwrap_or(0) as f64 / n / (255.0 * 255.0);
                (sq - mean[c] * mean[c]).max(0.0).sqrt()
            })
            .collect();
        (mean, std)
    }
}

/// One record ready to be written: its stored bytes, its image's size, label and pixel sums.
/// Made by [`encode_record`] (in parallel, by `prepare`'s workers).
#[derive(Debug, Clone)]
pub struct Record {
    /// The stored bytes (raw pixels, or a JPEG/PNG file).
    pub data: Vec<u8>,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// Class index or −1.
    pub label: i32,
    /// The pixel sums of the image.
    pub stats: PixelStats,
}

/// A JPEG of `pixels` as libjpeg writes it by default (what PIL's `save(quality=q)` gives): YCbCr
/// with 4:2:0 chroma subsampling by box averaging, baseline, the standard tables scaled by
/// `quality`. `jpeg-encoder` (AVX2 where the CPU has it) is several times faster than `image`'s
/// encoder, which also keeps full-resolution chroma (larger files for the same quality).
fn encode_jpeg(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    quality: u8,
) -> Result<Vec<u8>, DataError> {
    let side = |v: usize| {
        u16::try_from(v)
            .map_err(|_| DataError::Option(format!("jpeg encoding: side {v} over 65535")))
    };
    let (w, h) = (side(width)?, side(height)?);
    let mut out = Vec::with_capacity(pixels.len() / 8);
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    encoder.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Average);
    let color = if channels == 1 {
        jpeg_encoder::ColorType::Luma
    } else {
        jpeg_encoder::ColorType::Rgb
    };
    encoder
        .encode(pixels, w, h, color)
        .map_err(|e| DataError::Option(format!("jpeg encoding: {e}")))?;
    Ok(out)
}

/// Encodes `width × height × channels` HWC pixels as a record of `encoding` (`quality` for JPEG).
pub fn encode_record(
    pixels: Vec<u8>,
    width: usize,
    height: usize,
    channels: usize,
    encoding: Encoding,
    quality: u8,
    label: i32,
) -> Result<Record, DataError> {
    let sides = 1..=MAX_STORED_SIDE;
    if !sides.contains(&width)
        || !sides.contains(&height)
        || !(channels == 1 || channels == 3)
        || width
            .checked_mul(height)
            .and_then(|n| n.checked_mul(channels))
            != Some(pixels.len())
    {
        return Err(DataError::Option(format!(
            "a record of {} bytes is not a {width}×{height}×{channels} image with sides in 1..={MAX_STORED_SIDE}",
            pixels.len()
        )));
    }
    let stats = PixelStats::of(&pixels, channels);
    let color = if channels == 1 {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    let bad = |e: image::ImageError| DataError::Option(format!("{encoding} encoding: {e}"));
    let data = match encoding {
        Encoding::Raw => pixels,
        Encoding::Jpeg => encode_jpeg(&pixels, width, height, channels, quality)?,
        Encoding::Png => {
            let mut out = Vec::with_capacity(pixels.len() / 2);
            image::ImageEncoder::write_image(
                image::codecs::png::PngEncoder::new(&mut out),
                &pixels,
                width as u32,
                height as u32,
                color,
            )
            .map_err(bad)?;
            out
        }
    };
    Ok(Record {
        data,
        width,
        height,
        label,
        stats,
    })
}

struct OpenShard {
    path: PathBuf,
    file: BufWriter<fs::File>,
    hash: Checksum,
    written: u64,
    index: Vec<IndexEntry>,
    /// Bytes written since the last background write-back started.
    unsynced: u64,
    /// A write-back of what was written so far, on its own thread.
    writeback: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// Bytes between two background write-backs of an open shard: the data reaches the disk while
/// more is written, so the sync at close has little left to wait for.
const WRITEBACK_BYTES: u64 = 32 << 20;

impl OpenShard {
    fn new(path: PathBuf, file: fs::File) -> Self {
        OpenShard {
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            hash: Checksum::new(),
            written: 0,
            index: Vec::new(),
            unsynced: 0,
            writeback: None,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), DataError> {
        self.file
            .write_all(bytes)
            .map_err(|e| DataError::io(&self.path, e))?;
        self.hash.update(bytes);
        self.written += bytes.len() as u64;
        self.unsynced += bytes.len() as u64;
        let idle = self.writeback.as_ref().is_none_or(|w| w.is_finished());
        if self.unsynced >= WRITEBACK_BYTES && idle {
            self.wait_writeback()?;
            let io = |e| DataError::io(&self.path, e);
            self.file.flush().map_err(io)?;
            let file = self.file.get_ref().try_clone().map_err(io)?;
            self.writeback = Some(std::thread::spawn(move || file.sync_data()));
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Waits for the background write-back, if one is running, and reports its error.
    fn wait_writeback(&mut self) -> Result<(), DataError> {
        match self.writeback.take().map(|w| w.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(DataError::io(&self.path, e)),
            Some(Err(_)) => Err(DataError::io(
                &self.path,
                std::io::Error::other("the thread writing it back panicked"),
            )),
        }
    }
}

struct SplitWriter {
    name: SplitName,
    entries: Vec<ShardEntry>,
    current: Option<OpenShard>,
    count: usize,
    stats: PixelStats,
    /// The last closed shard, being synced to disk on its own thread while the next is written.
    syncing: Option<(PathBuf, std::thread::JoinHandle<std::io::Result<()>>)>,
}

/// Writes one dataset directory. Dropping it before [`DatasetWriter::finish`] removes the
/// temporary directory.
pub struct DatasetWriter {
    out: PathBuf,
    tmp: PathBuf,
    replaced: PathBuf,
    force: bool,
    image_size: usize,
    channels: usize,
    encoding: Encoding,
    quality: u8,
    shard_samples: usize,
    shard_bytes: u64,
    train: SplitWriter,
    val: SplitWriter,
    finished: bool,
}

/// The JPEG quality when none is given: torchvision-era ImageNet JPEGs are around 90–96, and
/// 90 keeps re-encoding losses below the augmentation's own resampling.
pub const DEFAULT_QUALITY: u8 = 90;

impl DatasetWriter {
    /// Starts writing `out` (raw records; see [`DatasetWriter::with_encoding`]). `image_size` is
    /// the manifest's `S`. An existing `out` is an error unless `force` and it is a prepared
    /// dataset with nothing else in it; it is replaced only at [`DatasetWriter::finish`].
    pub fn create(
        out: &Path,
        image_size: usize,
        channels: usize,
        force: bool,
    ) -> Result<Self, DataError> {
        if image_size == 0 || image_size > MAX_IMAGE_SIZE {
            return Err(DataError::Option(format!(
                "image size {image_size} is outside 1..={MAX_IMAGE_SIZE}"
            )));
        }
        if !(channels == 1 || channels == 3) {
            return Err(DataError::Option(format!(
                "channels must be 1 or 3, not {channels}"
            )));
        }
        crate::outdir::check_replaceable(out, force)?;
        let (tmp, replaced) = crate::outdir::work_names(out)?;
        let parent = tmp.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let split = |name| SplitWriter {
            name,
            entries: Vec::new(),
            current: None,
            count: 0,
            stats: PixelStats::default(),
            syncing: None,
        };
        Ok(DatasetWriter {
            out: out.to_path_buf(),
            tmp,
            replaced,
            force,
            image_size,
            channels,
            encoding: Encoding::Raw,
            quality: DEFAULT_QUALITY,
            shard_samples: usize::MAX,
            shard_bytes: DEFAULT_SHARD_BYTES,
            train: split(SplitName::Train),
            val: split(SplitName::Val),
            finished: false,
        })
    }

    /// Stores records as `encoding` (`quality` 1–100 for JPEG).
    pub fn with_encoding(mut self, encoding: Encoding, quality: u8) -> Result<Self, DataError> {
        if !(1..=100).contains(&quality) {
            return Err(DataError::Option(format!(
                "--quality {quality} is outside 1..=100"
            )));
        }
        self.encoding = encoding;
        self.quality = quality;
        Ok(self)
    }

    /// The encoding and quality records are written with.
    pub fn encoding(&self) -> (Encoding, u8) {
        (self.encoding, self.quality)
    }

    /// Caps the number of samples per shard (default: shards of at most 256 MiB).
    pub fn with_shard_samples(mut self, samples: usize) -> Self {
        self.shard_samples = samples.max(1);
        self
    }

    /// Samples written so far to `split`.
    pub fn count(&self, split: SplitName) -> usize {
        match split {
            SplitName::Train => self.train.count,
            SplitName::Val => self.val.count,
        }
    }

    /// Appends one `S×S×C` HWC image to `split` (the square shorthand of
    /// [`DatasetWriter::push_image`]).
    pub fn push(&mut self, split: SplitName, pixels: &[u8], label: i32) -> Result<(), DataError> {
        let s = self.image_size;
        self.push_image(split, pixels, s, s, label)
    }

    /// Encodes and appends one `width × height × C` HWC image to `split`.
    pub fn push_image(
        &mut self,
        split: SplitName,
        pixels: &[u8],
        width: usize,
        height: usize,
        label: i32,
    ) -> Result<(), DataError> {
        let record = encode_record(
            pixels.to_vec(),
            width,
            height,
            self.channels,
            self.encoding,
            self.quality,
            label,
        )?;
        self.push_record(split, &record)
    }

    /// Appends one record made by [`encode_record`] with this writer's channels and encoding.
    pub fn push_record(&mut self, split: SplitName, record: &Record) -> Result<(), DataError> {
        let raw_len = record.width * record.height * self.channels;
        if self.encoding == Encoding::Raw && record.data.len() != raw_len {
            return Err(DataError::Option(format!(
                "a raw record of {} bytes is not {}×{}×{}",
                record.data.len(),
                record.width,
                record.height,
                self.channels
            )));
        }
        let len = u32::try_from(record.data.len())
            .map_err(|_| DataError::Option("a record of 4 GiB or more".into()))?;
        let header = ShardHeader::v2(self.image_size as u32, self.channels as u32, self.encoding);
        let (shard_samples, shard_bytes) = (self.shard_samples, self.shard_bytes);
        let tmp = self.tmp.clone();
        let writer = match split {
            SplitName::Train => &mut self.train,
            SplitName::Val => &mut self.val,
        };
        if writer.current.is_none() {
            let path = tmp.join(format!(
                "{}-{:05}.shard",
                writer.name.as_str(),
                writer.entries.len()
            ));
            let file = fs::File::create(&path).map_err(|e| DataError::io(&path, e))?;
            let mut shard = OpenShard::new(path, file);
            shard.write(&header.to_bytes())?;
            writer.current = Some(shard);
        }
        if let Some(shard) = writer.current.as_mut() {
            shard.index.push(IndexEntry {
                offset: shard.written,
                len,
                width: record.width as u32,
                height: record.height as u32,
                label: record.label,
            });
            shard.write(&record.data)?;
            writer.stats.add(&record.stats);
            writer.count += 1;
            if shard.index.len() >= shard_samples || shard.written >= shard_bytes {
                close_shard(writer)?;
            }
        }
        Ok(())
    }

    /// Closes the shards, writes the manifest, syncs, and renames the directory into place.
    pub fn finish(
        mut self,
        classes: Vec<String>,
        source: String,
        skipped: Vec<Skipped>,
    ) -> Result<Manifest, DataError> {
        close_shard(&mut self.train)?;
        close_shard(&mut self.val)?;
        // every shard on disk before the manifest that lists them
        wait_synced(&mut self.train)?;
        wait_synced(&mut self.val)?;
        // statistics of the train split (of val when there is no train data)
        let stats = if self.train.count > 0 {
            &self.train.stats
        } else {
            &self.val.stats
        };
        let (mean, std) = stats.mean_std(self.channels);
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            image_size: self.image_size,
            encoding: self.encoding,
            quality: (self.encoding == Encoding::Jpeg).then_some(self.quality),
            channels: self.channels,
            count: self.train.count + self.val.count,
            classes,
            mean,
            std,
            source,
            train: SplitEntry {
                count: self.train.count,
                shards: std::mem::take(&mut self.train.entries),
            },
            val: SplitEntry {
                count: self.val.count,
                shards: std::mem::take(&mut self.val.entries),
            },
            skipped,
        };
        let path = self.tmp.join(MANIFEST);
        let json = serde_json::to_string_pretty(&manifest).map_err(|e| DataError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_synced(&path, json.as_bytes())?;
        if let Ok(d) = fs::File::open(&self.tmp) {
            let _ = d.sync_all();
        }
        if fs::symlink_metadata(&self.out).is_ok() {
            // checked again: the folder may have changed while the shards were written
            crate::outdir::check_replaceable(&self.out, self.force)?;
            let old = &self.replaced;
            fs::rename(&self.out, old).map_err(|e| DataError::io(&self.out, e))?;
            fs::rename(&self.tmp, &self.out).map_err(|e| DataError::io(&self.out, e))?;
            fs::remove_dir_all(old).map_err(|e| DataError::io(old, e))?;
        } else {
            fs::rename(&self.tmp, &self.out).map_err(|e| DataError::io(&self.out, e))?;
        }
        self.finished = true;
        Ok(manifest)
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let mut f = fs::File::create(path).map_err(|e| DataError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| DataError::io(path, e))
}

/// Finishes the open shard of `writer`: writes the index and the footer, syncs, and records
/// size and checksum (hashed while written).
fn close_shard(writer: &mut SplitWriter) -> Result<(), DataError> {
    let Some(mut shard) = writer.current.take() else {
        return Ok(());
    };
    let footer = ShardFooter {
        count: shard.index.len() as u64,
        index_offset: shard.written,
    };
    let index = std::mem::take(&mut shard.index);
    for entry in &index {
        shard.write(&entry.to_bytes())?;
    }
    shard.write(&footer.to_bytes())?;
    shard.wait_writeback()?;
    let path = shard.path;
    let io = |e| DataError::io(&path, e);
    let file = shard.file.into_inner().map_err(|e| io(e.into_error()))?;
    // synced in the background, one shard at a time: the next shard is written meanwhile
    wait_synced(writer)?;
    writer.syncing = Some((path.clone(), std::thread::spawn(move || file.sync_all())));
    writer.entries.push(ShardEntry {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        samples: index.len(),
        bytes: shard.written,
        checksum: shard.hash.finish(),
    });
    Ok(())
}

/// Waits for the last closed shard of `writer` to be on disk.
fn wait_synced(writer: &mut SplitWriter) -> Result<(), DataError> {
    let Some((path, sync)) = writer.syncing.take() else {
        return Ok(());
    };
    match sync.join() {
        Ok(result) => result.map_err(|e| DataError::io(&path, e)),
        Err(_) => Err(DataError::io(
            &path,
            std::io::Error::other("the thread syncing it panicked"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sums one value at a time.
    fn naive(pixels: &[u8], channels: usize) -> PixelStats {
        let mut sum = vec![0u64; channels];
        let mut sum_sq = vec![0u64; channels];
        for px in pixels.chunks_exact(channels) {
            for (c, &v) in px.iter().enumerate() {
                sum[c] += v as u64;
                sum_sq[c] += (v as u64) * (v as u64);
            }
        }
        PixelStats {
            sum,
            sum_sq,
            pixels: (pixels.len() / channels) as u64,
        }
    }

    #[test]
    fn vectorised_pixel_sums_equal_the_plain_ones() {
        // all 255s past one lane block (the u32 limit), a tail, and channel counts that do and
        // do not divide the lanes
        let big = vec![255u8; LANES * LANE_BLOCK + 3 * 1001];
        for c in [1, 3] {
            assert_eq!(PixelStats::of(&big, c), naive(&big, c));
        }
        let mixed: Vec<u8> = (0..30_003u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for c in [1, 2, 3, 5, 7] {
            let n = mixed.len() / c * c;
            assert_eq!(PixelStats::of(&mixed[..n], c), naive(&mixed[..n], c), "{c}");
        }
        assert_eq!(PixelStats::of(&mixed, 0), PixelStats::default());
    }
}
