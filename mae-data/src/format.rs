//! The on-disk format of a prepared dataset: a directory with `manifest.json` and shard files.
//! `FORMAT.md` in the crate describes it for other tools; this module is its definition.
//!
//! PyTorch counterpart: none in the official code (it reads JPEG folders through
//! `torchvision.datasets.ImageFolder` every epoch); this replaces that decode with a one-time
//! preparation into fixed-size records that are memory-mapped.
//!
//! A shard is a 64-byte header followed by `count` records of `4 + S·S·C` bytes: the label as a
//! little-endian `i32` (−1 when unlabeled), then the pixels, `u8`, HWC, row-major.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

/// File name of the manifest inside a dataset directory.
pub const MANIFEST: &str = "manifest.json";
/// `format` field of the manifest.
pub const FORMAT_NAME: &str = "mae-shards";
/// Current format version (manifest and shard header).
pub const FORMAT_VERSION: u32 = 1;
/// First 8 bytes of every shard.
pub const SHARD_MAGIC: &[u8; 8] = b"MAESHARD";
/// Size of the shard header.
pub const HEADER_LEN: usize = 64;
/// The largest image side a dataset may have (a 4096×4096×3 record is 48 MiB).
pub const MAX_IMAGE_SIZE: usize = 4096;
/// Label of an unlabeled sample.
pub const UNLABELED: i32 = -1;

/// The fixed-size header at the start of each shard (all integers little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Image side `S`.
    pub image_size: u32,
    /// Channels `C` (1 or 3).
    pub channels: u32,
    /// Number of records.
    pub count: u64,
}

impl ShardHeader {
    /// Bytes of one record: label plus pixels.
    pub fn record_len(&self) -> usize {
        record_len(self.image_size as usize, self.channels as usize)
    }

    /// The 64 header bytes: magic, version u32, image size u32, channels u32, record length u32,
    /// count u64, then zeros.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(SHARD_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.image_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.channels.to_le_bytes());
        b[20..24].copy_from_slice(&(self.record_len() as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    /// Parses and checks a header; the error says what is wrong.
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < HEADER_LEN {
            return Err(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header",
                b.len()
            ));
        }
        if &b[..8] != SHARD_MAGIC {
            return Err("not a shard (wrong magic bytes)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this reader knows {FORMAT_VERSION}"
            ));
        }
        let mut count = [0u8; 8];
        count.copy_from_slice(&b[24..32]);
        let header = ShardHeader {
            image_size: u32_at(12),
            channels: u32_at(16),
            count: u64::from_le_bytes(count),
        };
        if header.image_size == 0
            || header.image_size as usize > MAX_IMAGE_SIZE
            || !(header.channels == 1 || header.channels == 3)
        {
            return Err(format!(
                "image size {} and channels {} are not valid",
                header.image_size, header.channels
            ));
        }
        if u32_at(20) as usize != header.record_len() {
            return Err(format!(
                "record length {} does not match image size {} × channels {}",
                u32_at(20),
                header.image_size,
                header.channels
            ));
        }
        Ok(header)
    }
}

/// Bytes of one record for `S×S×C` images.
pub fn record_len(image_size: usize, channels: usize) -> usize {
    4 + image_size * image_size * channels
}

/// One shard as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the dataset directory.
    pub file: String,
    /// Number of samples.
    pub samples: usize,
    /// File size in bytes (header included).
    pub bytes: u64,
    /// `xxh3:` followed by the 16 hex digits of the XXH3-64 of the whole file.
    pub checksum: String,
}

/// One split (train or val) as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SplitEntry {
    /// Number of samples.
    pub count: usize,
    /// Its shards, in sample order.
    pub shards: Vec<ShardEntry>,
}

/// A source file that was not included, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Path relative to the source directory.
    pub path: String,
    /// Why it was skipped.
    pub reason: String,
}

/// The manifest of a prepared dataset (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"mae-shards"`.
    pub format: String,
    /// Format version, [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Image side `S` (images are `S×S`).
    pub image_size: usize,
    /// Channels, 1 or 3.
    pub channels: usize,
    /// Total samples over both splits.
    pub count: usize,
    /// Class names; label `k` is `classes[k]`. Empty for unlabeled data.
    pub classes: Vec<String>,
    /// Per-channel mean of the train split's pixels, in `[0, 1]` units.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation of the train split's pixels, in `[0, 1]` units.
    pub std: Vec<f64>,
    /// What the data was prepared from (`imagefolder`, `idx`, `cifar10`) and where.
    pub source: String,
    /// The training split.
    pub train: SplitEntry,
    /// The validation split.
    pub val: SplitEntry,
    /// Source files that were skipped, with the reason for each.
    pub skipped: Vec<Skipped>,
}

/// Streaming XXH3-64 in the manifest's notation.
#[derive(Default, Clone)]
pub struct Checksum(Xxh3);

impl Checksum {
    /// A fresh hasher.
    pub fn new() -> Self {
        Checksum(Xxh3::new())
    }
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// `xxh3:<16 hex digits>`.
    pub fn finish(&self) -> String {
        format!("xxh3:{:016x}", self.0.digest())
    }
    /// The checksum of a whole byte slice.
    pub fn of(bytes: &[u8]) -> String {
        let mut c = Checksum::new();
        c.update(bytes);
        c.finish()
    }
}

impl std::fmt::Debug for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = ShardHeader {
            image_size: 28,
            channels: 1,
            count: 12345,
        };
        let b = h.to_bytes();
        assert_eq!(ShardHeader::parse(&b), Ok(h));
        assert_eq!(h.record_len(), 4 + 784);
        let mut bad = b;
        bad[0] = b'X';
        assert!(ShardHeader::parse(&bad).is_err());
        let mut bad = b;
        bad[16] = 2;
        assert!(ShardHeader::parse(&bad).is_err());
        assert!(ShardHeader::parse(&b[..10]).is_err());
    }

    #[test]
    fn checksum_is_stable() {
        // XXH3-64 of the empty input is a published constant.
        assert_eq!(Checksum::of(b""), "xxh3:2d06800538d394c2");
        let mut c = Checksum::new();
        c.update(b"ab");
        c.update(b"c");
        assert_eq!(c.finish(), Checksum::of(b"abc"));
    }
}
