//! Reading a prepared dataset: the manifest, and memory-mapped shards whose every offset and length
//! is checked against the file before use. Opening reads headers, footers and indexes only (cost
//! O(shards + records), not O(bytes)); the shards' checksums are verified by a background thread,
//! once per process, and a mismatch surfaces through [`Dataset::integrity`] (the loader stops on
//! it, naming the shard).
//!
//! PyTorch counterpart: the `Dataset` of `torchvision.datasets.ImageFolder` (index → sample);
//! here a sample is reachable by its global index without copying its bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::{ColorType, DynamicImage, ImageDecoder};
use memmap2::Mmap;

use crate::error::DataError;
use crate::format::{
    Encoding, IndexEntry, Manifest, ShardEntry, ShardFooter, ShardHeader, SplitEntry, FORMAT_NAME,
    FORMAT_VERSION, HEADER_LEN, INDEX_ENTRY_LEN, MANIFEST, MAX_IMAGE_SIZE, MAX_STORED_SIDE,
    OLDEST_FORMAT_VERSION,
};
use crate::verify::Integrity;

/// One sample: its record's bytes (borrowed from the mapped shard), its image's size and its
/// label (−1 when unlabeled).
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// The record: `width × height × channels` HWC pixels when `encoding` is raw, else the bytes
    /// of a JPEG or PNG file.
    pub data: &'a [u8],
    /// Class index or −1.
    pub label: i32,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// Channels (1 or 3).
    pub channels: usize,
    /// How `data` is stored.
    pub encoding: Encoding,
    /// The shard it is in (named in decode errors).
    pub shard: &'a Path,
}

impl<'a> Sample<'a> {
    /// The pixels, `height × width × channels` HWC `u8`: the record itself when raw, else decoded
    /// into `buf`. A record that does not decode to the indexed size is an error naming the shard.
    pub fn pixels<'s>(&'s self, buf: &'s mut Vec<u8>) -> Result<&'s [u8], DataError> {
        if self.encoding == Encoding::Raw {
            return Ok(self.data);
        }
        let bad = |m: String| DataError::shard(self.shard, m);
        let undecodable =
            |e: image::ImageError| bad(format!("a {} record does not decode: {e}", self.encoding));
        let cursor = std::io::Cursor::new(self.data);
        let decoder: Box<dyn ImageDecoder> = match self.encoding {
            Encoding::Png => Box::new(PngDecoder::new(cursor).map_err(undecodable)?),
            _ => Box::new(JpegDecoder::new(cursor).map_err(undecodable)?),
        };
        let (w, h) = decoder.dimensions();
        if (w as usize, h as usize) != (self.width, self.height) {
            return Err(bad(format!(
                "a record decodes to {w}×{h}, the index says {}×{}",
                self.width, self.height
            )));
        }
        let wanted = if self.channels == 1 {
            ColorType::L8
        } else {
            ColorType::Rgb8
        };
        if decoder.color_type() == wanted {
            // what prepare writes: decoded straight into the reused buffer
            buf.resize(self.width * self.height * self.channels, 0);
            decoder.read_image(buf).map_err(undecodable)?;
        } else {
            let img = DynamicImage::from_decoder(decoder).map_err(undecodable)?;
            *buf = if self.channels == 1 {
                img.into_luma8().into_raw()
            } else {
                img.into_rgb8().into_raw()
            };
        }
        Ok(buf.as_slice())
    }
}

/// Which split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitName {
    /// Training.
    Train,
    /// Validation.
    Val,
}

impl SplitName {
    /// `train` or `val`.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Val => "val",
        }
    }
}

/// Where a shard's records are.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Version 1: fixed records of `4 + S·S·C` bytes after the header.
    Fixed { record_len: usize },
    /// Version 2: an index of [`INDEX_ENTRY_LEN`]-byte entries from `index_offset`.
    Indexed { index_offset: usize },
}

struct MappedShard {
    path: PathBuf,
    map: Mmap,
    count: usize,
    layout: Layout,
}

/// One split of a dataset: its shards, mapped.
pub struct Split {
    name: SplitName,
    shards: Vec<MappedShard>,
    /// `starts[i]` is the global index of shard `i`'s first sample.
    starts: Vec<usize>,
    count: usize,
    image_size: usize,
    channels: usize,
    encoding: Encoding,
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Split")
            .field("name", &self.name)
            .field("count", &self.count)
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Split {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the split has no sample.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Which split this is.
    pub fn name(&self) -> SplitName {
        self.name
    }

    /// Sample `index` (0-based over the split), or `None` past the end.
    pub fn get(&self, index: usize) -> Option<Sample<'_>> {
        if index >= self.count {
            return None;
        }
        let shard = self.starts.partition_point(|&s| s <= index) - 1;
        let local = index - self.starts[shard];
        let MappedShard {
            path, map, layout, ..
        } = &self.shards[shard];
        // offsets were checked against the file length when the shard was opened
        let (data, label, width, height) = match *layout {
            Layout::Fixed { record_len } => {
                let at = HEADER_LEN + local * record_len;
                let record = map.get(at..at + record_len)?;
                let label = i32::from_le_bytes([record[0], record[1], record[2], record[3]]);
                (&record[4..], label, self.image_size, self.image_size)
            }
            Layout::Indexed { index_offset } => {
                let at = index_offset + local * INDEX_ENTRY_LEN;
                let e = IndexEntry::parse(map.get(at..at + INDEX_ENTRY_LEN)?);
                let start = e.offset as usize;
                let data = map.get(start..start + e.len as usize)?;
                (data, e.label, e.width as usize, e.height as usize)
            }
        };
        Some(Sample {
            data,
            label,
            width,
            height,
            channels: self.channels,
            encoding: self.encoding,
            shard: path,
        })
    }
}

/// A prepared dataset: manifest plus both splits.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    train: Split,
    val: Split,
    integrity: Arc<Integrity>,
}

/// How much to check when opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Headers, sizes, indexes and manifest consistency (cheap); checksums are not looked at.
    Structure,
    /// The structure now, every shard's checksum by a background thread (once per process);
    /// [`Dataset::integrity`] reports a mismatch. What [`Dataset::open`] does.
    Background,
    /// The structure and every shard's checksum before returning (reads all data once).
    Checksums,
}

impl Dataset {
    /// Opens the dataset in `dir`: the structure is checked now, the checksums in the background
    /// ([`Verify::Background`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        Self::open_with(dir, Verify::Background)
    }

    /// Opens the dataset in `dir` with the given level of checking.
    pub fn open_with(dir: impl AsRef<Path>, verify: Verify) -> Result<Self, DataError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = read_manifest(&dir)?;
        let train = open_split(&dir, &manifest, SplitName::Train, &manifest.train)?;
        let val = open_split(&dir, &manifest, SplitName::Val, &manifest.val)?;
        if train.count.checked_add(val.count) != Some(manifest.count) {
            return Err(DataError::Manifest {
                path: dir.join(MANIFEST),
                message: format!(
                    "count {} is not train {} + val {}",
                    manifest.count, train.count, val.count
                ),
            });
        }
        let shards: Vec<(PathBuf, ShardEntry)> = manifest
            .train
            .shards
            .iter()
            .chain(&manifest.val.shards)
            .map(|e| (dir.join(&e.file), e.clone()))
            .collect();
        let integrity = match verify {
            Verify::Structure => Integrity::unchecked(),
            Verify::Background => Integrity::spawn(shards, false),
            Verify::Checksums => {
                let done = Integrity::spawn(shards, true);
                done.wait()?;
                done
            }
        };
        Ok(Dataset {
            dir,
            manifest,
            train,
            val,
            integrity,
        })
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The training split.
    pub fn train(&self) -> &Split {
        &self.train
    }
    /// The validation split.
    pub fn val(&self) -> &Split {
        &self.val
    }
    /// A split by name.
    pub fn split(&self, name: SplitName) -> &Split {
        match name {
            SplitName::Train => &self.train,
            SplitName::Val => &self.val,
        }
    }
    /// `S`: the side of every image (version 1) or the size the shorter sides were resized to
    /// (version 2).
    pub fn image_size(&self) -> usize {
        self.manifest.image_size
    }
    /// Channels.
    pub fn channels(&self) -> usize {
        self.manifest.channels
    }

    /// The background checksum verification so far: `Err` naming the shard once a mismatch (or a
    /// read error) was found, `Ok` while it runs or when it passed. Never blocks.
    pub fn integrity(&self) -> Result<(), DataError> {
        self.integrity.check()
    }

    /// Waits until every shard's checksum was verified (at once after [`Verify::Structure`]).
    pub fn wait_verified(&self) -> Result<(), DataError> {
        self.integrity.wait()
    }
}

impl Drop for Dataset {
    fn drop(&mut self) {
        self.integrity.cancel();
    }
}

/// The largest manifest read (a million skipped files with their reasons fit in it).
const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// Reads and checks `DIR/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, DataError> {
    let path = dir.join(MANIFEST);
    let bad = |message: String| DataError::Manifest {
        path: path.clone(),
        message,
    };
    let meta = fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "not a regular file of at most {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    manifest_from_json(
        &path,
        &fs::read(&path).map_err(|e| DataError::io(&path, e))?,
    )
}

/// Parses and checks a manifest's bytes; `path` names it in errors.
pub fn manifest_from_json(path: &Path, bytes: &[u8]) -> Result<Manifest, DataError> {
    let bad = |message: String| DataError::Manifest {
        path: path.to_path_buf(),
        message,
    };
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if manifest.format != FORMAT_NAME
        || !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&manifest.format_version)
    {
        return Err(bad(format!(
            "format {} v{}, this reader knows {FORMAT_NAME} v{OLDEST_FORMAT_VERSION} to v{FORMAT_VERSION}",
            manifest.format, manifest.format_version
        )));
    }
    if manifest.format_version == 1 && manifest.encoding != Encoding::Raw {
        return Err(bad("version 1 datasets are raw only".into()));
    }
    if manifest.image_size == 0
        || manifest.image_size > MAX_IMAGE_SIZE
        || !(manifest.channels == 1 || manifest.channels == 3)
    {
        return Err(bad(format!(
            "image size {} / channels {} are not valid",
            manifest.image_size, manifest.channels
        )));
    }
    if manifest.mean.len() != manifest.channels || manifest.std.len() != manifest.channels {
        return Err(bad("mean/std must have one value per channel".into()));
    }
    for entry in manifest.train.shards.iter().chain(&manifest.val.shards) {
        let name = Path::new(&entry.file);
        if name.components().count() != 1 || entry.file.starts_with('.') {
            return Err(bad(format!(
                "shard name `{}` is not a plain file name",
                entry.file
            )));
        }
    }
    Ok(manifest)
}

#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<Mmap, DataError> {
    let file = fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: the map is read-only. Shards are written once (to a temporary directory that is
    // renamed into place) and never modified afterwards; a process truncating a shard while it is
    // mapped is outside what this library supports (as for any memory-mapped reader). Every
    // access is bounds-checked against the length seen here.
    unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))
}

fn open_split(
    dir: &Path,
    manifest: &Manifest,
    name: SplitName,
    entry: &SplitEntry,
) -> Result<Split, DataError> {
    let mut shards = Vec::with_capacity(entry.shards.len());
    let mut starts = Vec::with_capacity(entry.shards.len());
    let mut count = 0usize;
    for shard in &entry.shards {
        let path = dir.join(&shard.file);
        let map = map_file(&path)?;
        let layout = check_shard(&path, &map, shard, manifest)?;
        starts.push(count);
        count = count
            .checked_add(shard.samples)
            .ok_or_else(|| DataError::Manifest {
                path: dir.join(MANIFEST),
                message: format!("{} lists more samples than can exist", name.as_str()),
            })?;
        shards.push(MappedShard {
            path,
            map,
            count: shard.samples,
            layout,
        });
    }
    if count != entry.count {
        return Err(DataError::Manifest {
            path: dir.join(MANIFEST),
            message: format!(
                "{} count {} does not match its shards' {count} samples",
                name.as_str(),
                entry.count
            ),
        });
    }
    // empty shards would break the index lookup; the writer never makes them
    if shards.iter().any(|s| s.count == 0) {
        return Err(DataError::Manifest {
            path: dir.join(MANIFEST),
            message: format!("{} lists an empty shard", name.as_str()),
        });
    }
    Ok(Split {
        name,
        shards,
        starts,
        count,
        image_size: manifest.image_size,
        channels: manifest.channels,
        encoding: manifest.encoding,
    })
}

/// Checks one mapped shard's header, length and index against its manifest entry; returns where
/// its records are.
fn check_shard(
    path: &Path,
    bytes: &[u8],
    entry: &ShardEntry,
    manifest: &Manifest,
) -> Result<Layout, DataError> {
    let bad = |m: String| DataError::shard(path, m);
    let header = ShardHeader::parse(bytes).map_err(bad)?;
    if header.version != manifest.format_version {
        return Err(bad(format!(
            "a version {} shard in a version {} dataset",
            header.version, manifest.format_version
        )));
    }
    if header.image_size as usize != manifest.image_size
        || header.channels as usize != manifest.channels
        || header.encoding != manifest.encoding
    {
        return Err(bad(format!(
            "holds size {} × {} channels ({}), the manifest says {} × {} ({})",
            header.image_size,
            header.channels,
            header.encoding,
            manifest.image_size,
            manifest.channels,
            manifest.encoding
        )));
    }
    if bytes.len() as u64 != entry.bytes {
        return Err(bad(format!(
            "{} bytes, the manifest says {}: truncated or padded",
            bytes.len(),
            entry.bytes
        )));
    }
    if header.version == 1 {
        return check_fixed(path, bytes, &header, entry);
    }
    let footer = ShardFooter::parse(bytes).map_err(bad)?;
    if footer.count as usize != entry.samples {
        return Err(bad(format!(
            "footer counts {} samples, the manifest {}",
            footer.count, entry.samples
        )));
    }
    let index_offset = footer.index_offset as usize;
    let channels = manifest.channels as u64;
    for (i, raw) in bytes[index_offset..bytes.len() - crate::format::FOOTER_LEN]
        .chunks_exact(INDEX_ENTRY_LEN)
        .enumerate()
    {
        let e = IndexEntry::parse(raw);
        let end = e.offset.checked_add(e.len as u64);
        if e.offset < HEADER_LEN as u64 || end.is_none_or(|end| end > footer.index_offset) {
            return Err(bad(format!(
                "record {i} at bytes {}+{} lies outside the records",
                e.offset, e.len
            )));
        }
        let sides = 1..=MAX_STORED_SIDE as u32;
        if !sides.contains(&e.width) || !sides.contains(&e.height) {
            return Err(bad(format!(
                "record {i} is {}×{}, outside 1..={MAX_STORED_SIDE}",
                e.width, e.height
            )));
        }
        let raw_len = e.width as u64 * e.height as u64 * channels;
        if manifest.encoding == Encoding::Raw && raw_len != e.len as u64 {
            return Err(bad(format!(
                "record {i} has {} bytes, a raw {}×{}×{channels} image {raw_len}",
                e.len, e.width, e.height
            )));
        }
    }
    Ok(Layout::Indexed { index_offset })
}

/// The version-1 checks: the header's count and the exact length of `count` fixed records.
fn check_fixed(
    path: &Path,
    bytes: &[u8],
    header: &ShardHeader,
    entry: &ShardEntry,
) -> Result<Layout, DataError> {
    if header.count as usize != entry.samples {
        return Err(DataError::shard(
            path,
            format!(
                "header counts {} samples, the manifest {}",
                header.count, entry.samples
            ),
        ));
    }
    // checked: a header and a manifest that agree on 2^62 samples must not wrap around
    let expected_len = header
        .count
        .checked_mul(header.record_len() as u64)
        .and_then(|n| n.checked_add(HEADER_LEN as u64));
    if expected_len != Some(bytes.len() as u64) {
        return Err(DataError::shard(
            path,
            format!(
                "{} bytes, but {} samples of {} bytes need {}: truncated or padded",
                bytes.len(),
                header.count,
                header.record_len(),
                expected_len.map_or("more than can exist".into(), |n| n.to_string())
            ),
        ));
    }
    Ok(Layout::Fixed {
        record_len: header.record_len(),
    })
}

/// Re-checks every shard's checksum now; returns the number of shards checked.
pub fn verify(dir: impl AsRef<Path>) -> Result<usize, DataError> {
    let ds = Dataset::open_with(dir, Verify::Checksums)?;
    Ok(ds.manifest.train.shards.len() + ds.manifest.val.shards.len())
}
