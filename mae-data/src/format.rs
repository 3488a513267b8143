//! The on-disk format of a prepared dataset: a directory with `manifest.json` and shard files.
//! `FORMAT.md` in the crate describes it for other tools; this module is its definition.
//!
//! PyTorch counterpart: none in the official code (it reads JPEG folders through
//! `torchvision.datasets.ImageFolder` every epoch); this replaces that with a one-time
//! preparation into memory-mapped shards.
//!
//! Version 2 (written today): a 64-byte header, records of any size (raw `u8` HWC pixels, or a
//! JPEG/PNG file's bytes), an index of 24 bytes per record (offset, length, width, height,
//! label) and a 32-byte footer that locates the index. Each image keeps its aspect ratio.
//! Version 1 (still read): a 64-byte header then `count` fixed records of `4 + S·S·C` bytes
//! (label `i32`, then the `S×S` pixels).

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

/// File name of the manifest inside a dataset directory.
pub const MANIFEST: &str = "manifest.json";
/// `format` field of the manifest.
pub const FORMAT_NAME: &str = "mae-shards";
/// The format version written (manifest and shard header).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version still read.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// First 8 bytes of every shard.
pub const SHARD_MAGIC: &[u8; 8] = b"MAESHARD";
/// Last 8 bytes of a version-2 shard.
pub const FOOTER_MAGIC: &[u8; 8] = b"MAEINDEX";
/// Size of the shard header.
pub const HEADER_LEN: usize = 64;
/// Size of a version-2 shard's footer.
pub const FOOTER_LEN: usize = 32;
/// Size of one version-2 index entry.
pub const INDEX_ENTRY_LEN: usize = 24;
/// The largest `--size` (the stored shorter side) a dataset may have.
pub const MAX_IMAGE_SIZE: usize = 4096;
/// The longer side of a stored image is at most this multiple of the shorter side: a wider
/// panorama keeps its centre `MAX_ASPECT : 1` part (RandomResizedCrop's ratios stop at 4:3).
pub const MAX_ASPECT: usize = 4;
/// Label of an unlabeled sample.
pub const UNLABELED: i32 = -1;

/// How a record's image is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `u8` pixels, HWC, row-major: no decode, largest.
    #[default]
    Raw,
    /// A baseline JPEG file (lossy).
    Jpeg,
    /// A PNG file (lossless).
    Png,
}

impl Encoding {
    /// The code in a shard header.
    pub fn code(self) -> u32 {
        match self {
            Encoding::Raw => 0,
            Encoding::Jpeg => 1,
            Encoding::Png => 2,
        }
    }
    /// The encoding of a header code.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Jpeg),
            2 => Some(Encoding::Png),
            _ => None,
        }
    }
    /// `raw`, `jpeg` or `png`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Jpeg => "jpeg",
            Encoding::Png => "png",
        }
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Encoding::Raw),
            "jpeg" | "jpg" => Ok(Encoding::Jpeg),
            "png" => Ok(Encoding::Png),
            _ => Err(format!("encoding `{s}`: raw, jpeg or png")),
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fixed-size header at the start of each shard (all integers little-endian).
///
/// Version 1: magic, version `u32`, image size `u32`, channels `u32`, record length `u32`, count
/// `u64`, zeros. Version 2: magic, version `u32`, image size `u32`, channels `u32`, encoding
/// `u32`, zeros (the count is in the footer, so a shard is written front to back in one pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// 1 or 2.
    pub version: u32,
    /// Image side `S` (v1: every image is `S×S`; v2: the `--size` the shorter sides were
    /// resized to).
    pub image_size: u32,
    /// Channels `C` (1 or 3).
    pub channels: u32,
    /// How records are stored (v1: raw).
    pub encoding: Encoding,
    /// Number of records (v1 only; v2 keeps it in the [`ShardFooter`]).
    pub count: u64,
}

impl ShardHeader {
    /// A version-2 header.
    pub fn v2(image_size: u32, channels: u32, encoding: Encoding) -> Self {
        ShardHeader {
            version: 2,
            image_size,
            channels,
            encoding,
            count: 0,
        }
    }

    /// Bytes of one version-1 record: label plus pixels.
    pub fn record_len(&self) -> usize {
        record_len(self.image_size as usize, self.channels as usize)
    }

    /// The 64 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(SHARD_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.image_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.channels.to_le_bytes());
        if self.version == 1 {
            b[20..24].copy_from_slice(&(self.record_len() as u32).to_le_bytes());
            b[24..32].copy_from_slice(&self.count.to_le_bytes());
        } else {
            b[20..24].copy_from_slice(&self.encoding.code().to_le_bytes());
        }
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
        let u32_at = |o: usize| u32_at(b, o);
        let version = u32_at(8);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "format version {version}, this reader knows {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"
            ));
        }
        let (image_size, channels) = (u32_at(12), u32_at(16));
        if image_size == 0
            || image_size as usize > MAX_IMAGE_SIZE
            || !(channels == 1 || channels == 3)
        {
            return Err(format!(
                "image size {image_size} and channels {channels} are not valid"
            ));
        }
        if version == 1 {
            let header = ShardHeader {
                version,
                image_size,
                channels,
                encoding: Encoding::Raw,
                count: u64_at(b, 24),
            };
            if u32_at(20) as usize != header.record_len() {
                return Err(format!(
                    "record length {} does not match image size {image_size} × channels {channels}",
                    u32_at(20)
                ));
            }
            return Ok(header);
        }
        let encoding = Encoding::from_code(u32_at(20))
            .ok_or_else(|| format!("unknown encoding code {}", u32_at(20)))?;
        Ok(ShardHeader {
            version,
            image_size,
            channels,
            encoding,
            count: 0,
        })
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(v)
}

/// The last 32 bytes of a version-2 shard: record count `u64`, index offset `u64`, zeros `u64`,
/// magic `MAEINDEX`. The index runs from its offset to the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardFooter {
    /// Number of records.
    pub count: u64,
    /// Where the index starts.
    pub index_offset: u64,
}

impl ShardFooter {
    /// The 32 footer bytes.
    pub fn to_bytes(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..16].copy_from_slice(&self.index_offset.to_le_bytes());
        b[24..].copy_from_slice(FOOTER_MAGIC);
        b
    }

    /// Parses the footer at the end of `file` and checks that the index fits exactly between the
    /// records and the footer.
    pub fn parse(file: &[u8]) -> Result<Self, String> {
        let len = file.len();
        if len < HEADER_LEN + FOOTER_LEN {
            return Err(format!("{len} bytes, shorter than a header and a footer"));
        }
        let b = &file[len - FOOTER_LEN..];
        if &b[24..] != FOOTER_MAGIC {
            return Err("no index footer at the end: truncated or not written to the end".into());
        }
        let footer = ShardFooter {
            count: u64_at(b, 0),
            index_offset: u64_at(b, 8),
        };
        let index_len = footer.count.checked_mul(INDEX_ENTRY_LEN as u64);
        let end = index_len.and_then(|n| n.checked_add(footer.index_offset));
        if footer.index_offset < HEADER_LEN as u64 || end != Some((len - FOOTER_LEN) as u64) {
            return Err(format!(
                "footer says {} records indexed from byte {}, which does not fit a file of {len} bytes",
                footer.count, footer.index_offset
            ));
        }
        Ok(footer)
    }
}

/// One version-2 index entry: where a record is, its image's size and its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Byte offset of the record in the shard.
    pub offset: u64,
    /// Record length in bytes.
    pub len: u32,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Class index or −1.
    pub label: i32,
}

impl IndexEntry {
    /// The 24 bytes: offset `u64`, length `u32`, width `u32`, height `u32`, label `i32`.
    pub fn to_bytes(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.width.to_le_bytes());
        b[16..20].copy_from_slice(&self.height.to_le_bytes());
        b[20..24].copy_from_slice(&self.label.to_le_bytes());
        b
    }
    /// Reads an entry from its 24 bytes.
    pub fn parse(b: &[u8]) -> Self {
        IndexEntry {
            offset: u64_at(b, 0),
            len: u32_at(b, 8),
            width: u32_at(b, 12),
            height: u32_at(b, 16),
            label: u32_at(b, 20) as i32,
        }
    }
}

/// The largest side a stored image may have: [`MAX_ASPECT`] times the largest size.
pub const MAX_STORED_SIDE: usize = MAX_IMAGE_SIZE * MAX_ASPECT;

/// Bytes of one version-1 record for `S×S×C` images.
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
    /// Format version: [`FORMAT_VERSION`] when written here, 1 for older datasets.
    pub format_version: u32,
    /// `S`. Version 2: the `--size` each image's shorter side was resized to (smaller images
    /// are kept at their size, never enlarged; the longer side is at most [`MAX_ASPECT`]·S).
    /// Version 1: every image is `S×S`.
    pub image_size: usize,
    /// How records are stored (absent in version 1: raw).
    #[serde(default)]
    pub encoding: Encoding,
    /// JPEG quality (1–100) when `encoding` is `jpeg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
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
            version: 1,
            image_size: 28,
            channels: 1,
            encoding: Encoding::Raw,
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
        let v2 = ShardHeader::v2(256, 3, Encoding::Jpeg);
        assert_eq!(ShardHeader::parse(&v2.to_bytes()), Ok(v2));
        let mut bad = v2.to_bytes();
        bad[20] = 9;
        assert!(ShardHeader::parse(&bad).is_err());
        let mut bad = v2.to_bytes();
        bad[8] = 3;
        assert!(ShardHeader::parse(&bad).is_err());
    }

    #[test]
    fn footer_and_index_round_trip_and_the_footer_must_fit() {
        let e = IndexEntry {
            offset: 64,
            len: 300,
            width: 341,
            height: 256,
            label: -1,
        };
        assert_eq!(IndexEntry::parse(&e.to_bytes()), e);
        // header, 300 bytes of record, one index entry, footer
        let mut file = vec![0u8; HEADER_LEN + 300];
        file.extend_from_slice(&e.to_bytes());
        let footer = ShardFooter {
            count: 1,
            index_offset: (HEADER_LEN + 300) as u64,
        };
        file.extend_from_slice(&footer.to_bytes());
        assert_eq!(ShardFooter::parse(&file), Ok(footer));
        // one byte more or less anywhere: the index no longer ends at the footer
        let mut longer = file.clone();
        longer.insert(10, 0);
        assert!(ShardFooter::parse(&longer).is_err());
        assert!(ShardFooter::parse(&file[1..]).is_err());
        assert!(ShardFooter::parse(&file[..file.len() - 1]).is_err());
        // a count that overflows the index length
        let mut huge = file.clone();
        let n = huge.len();
        huge[n - 32..n - 24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(ShardFooter::parse(&huge).is_err());
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
