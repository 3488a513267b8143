//! Reading a prepared dataset: the manifest, and memory-mapped shards whose every offset and length
//! is checked against the file before use.
//!
//! PyTorch counterpart: the `Dataset` of `torchvision.datasets.ImageFolder` (index → sample);
//! here a sample is reachable by its global index without copying its pixels.

use std::fs;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::DataError;
use crate::format::{
    Checksum, Manifest, ShardEntry, ShardHeader, SplitEntry, FORMAT_NAME, FORMAT_VERSION,
    HEADER_LEN, MANIFEST, MAX_IMAGE_SIZE,
};

/// One sample: its pixels (`S×S×C`, HWC, borrowed from the mapped shard) and its label (−1 when
/// unlabeled).
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// `u8` pixels, HWC.
    pub pixels: &'a [u8],
    /// Class index or −1.
    pub label: i32,
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

struct MappedShard {
    map: Mmap,
    count: usize,
}

/// One split of a dataset: its shards, mapped.
pub struct Split {
    name: SplitName,
    shards: Vec<MappedShard>,
    /// `starts[i]` is the global index of shard `i`'s first sample.
    starts: Vec<usize>,
    count: usize,
    record_len: usize,
    pixels_len: usize,
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
        let map = &self.shards[shard].map;
        // offsets were checked against the file length when the shard was opened
        let at = HEADER_LEN + local * self.record_len;
        let record = map.get(at..at + self.record_len)?;
        let label = i32::from_le_bytes([record[0], record[1], record[2], record[3]]);
        Some(Sample {
            pixels: &record[4..4 + self.pixels_len],
            label,
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
}

/// How much to check when opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Headers, sizes and manifest consistency (cheap).
    Structure,
    /// Also every shard's checksum (reads all data once).
    Checksums,
}

impl Dataset {
    /// Opens the dataset in `dir`, checking checksums too (a corrupt shard is an error naming it).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        Self::open_with(dir, Verify::Checksums)
    }

    /// Opens the dataset in `dir` with the given level of checking.
    pub fn open_with(dir: impl AsRef<Path>, verify: Verify) -> Result<Self, DataError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = read_manifest(&dir)?;
        let train = open_split(&dir, &manifest, SplitName::Train, &manifest.train, verify)?;
        let val = open_split(&dir, &manifest, SplitName::Val, &manifest.val, verify)?;
        if train.count.checked_add(val.count) != Some(manifest.count) {
            return Err(DataError::Manifest {
                path: dir.join(MANIFEST),
                message: format!(
                    "count {} is not train {} + val {}",
                    manifest.count, train.count, val.count
                ),
            });
        }
        Ok(Dataset {
            dir,
            manifest,
            train,
            val,
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
    /// Image side.
    pub fn image_size(&self) -> usize {
        self.manifest.image_size
    }
    /// Channels.
    pub fn channels(&self) -> usize {
        self.manifest.channels
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
    if manifest.format != FORMAT_NAME || manifest.format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "format {} v{}, this reader knows {FORMAT_NAME} v{FORMAT_VERSION}",
            manifest.format, manifest.format_version
        )));
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
    verify: Verify,
) -> Result<Split, DataError> {
    let record_len = crate::format::record_len(manifest.image_size, manifest.channels);
    let mut shards = Vec::with_capacity(entry.shards.len());
    let mut starts = Vec::with_capacity(entry.shards.len());
    let mut count = 0usize;
    for shard in &entry.shards {
        let path = dir.join(&shard.file);
        let map = map_file(&path)?;
        check_shard(&path, &map, shard, manifest, verify)?;
        starts.push(count);
        count = count
            .checked_add(shard.samples)
            .ok_or_else(|| DataError::Manifest {
                path: dir.join(MANIFEST),
                message: format!("{} lists more samples than can exist", name.as_str()),
            })?;
        shards.push(MappedShard {
            map,
            count: shard.samples,
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
        record_len,
        pixels_len: record_len - 4,
    })
}

/// Checks one mapped shard against its manifest entry.
fn check_shard(
    path: &Path,
    bytes: &[u8],
    entry: &ShardEntry,
    manifest: &Manifest,
    verify: Verify,
) -> Result<(), DataError> {
    let header = ShardHeader::parse(bytes).map_err(|m| DataError::shard(path, m))?;
    if header.image_size as usize != manifest.image_size
        || header.channels as usize != manifest.channels
    {
        return Err(DataError::shard(
            path,
            format!(
                "holds {}×{}×{} images, the manifest says {}×{}×{}",
                header.image_size,
                header.image_size,
                header.channels,
                manifest.image_size,
                manifest.image_size,
                manifest.channels
            ),
        ));
    }
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
    let Some(expected_len) = expected_len else {
        return Err(DataError::shard(
            path,
            format!(
                "{} samples of {} bytes cannot exist",
                header.count,
                header.record_len()
            ),
        ));
    };
    if bytes.len() as u64 != expected_len || entry.bytes != expected_len {
        return Err(DataError::shard(
            path,
            format!(
                "{} bytes, but {} samples need {expected_len} (manifest says {}): truncated or padded",
                bytes.len(),
                header.count,
                entry.bytes
            ),
        ));
    }
    if verify == Verify::Checksums {
        let actual = Checksum::of(bytes);
        if actual != entry.checksum {
            return Err(DataError::Checksum {
                path: path.to_path_buf(),
                expected: entry.checksum.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// Re-checks every shard's checksum; returns the number of shards checked.
pub fn verify(dir: impl AsRef<Path>) -> Result<usize, DataError> {
    let ds = Dataset::open_with(dir, Verify::Checksums)?;
    Ok(ds.manifest.train.shards.len() + ds.manifest.val.shards.len())
}
