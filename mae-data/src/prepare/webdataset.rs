//! `--from tar`: tar shards in the WebDataset layout, as web-scale image sets (LAION, DataComp)
//! and many ImageNet copies are distributed. A sample is the members that share a key (the member
//! name up to the first dot of its file name): `KEY.jpg|jpeg|png|webp` the image, `KEY.cls` its
//! class index as text; other members (`.json`, `.txt`, …) are ignored. Without `.cls` members
//! the class is the folder in the key (`n01440764/n01440764_10026.JPEG`), and keys without a
//! folder give an unlabeled dataset.
//!
//! The listing reads the tar headers only (seeking past the data); each image member is read at
//! its offset when it is converted, in parallel. Uncompressed tar only: a compressed archive
//! cannot be read at an offset.
//!
//! PyTorch counterpart: `webdataset.WebDataset(urls).decode("pil").to_tuple("jpg;png", "cls")`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::DataError;
use crate::format::{Skipped, UNLABELED};

use super::{Item, Listing};

/// Image members taken (the extensions of WebDataset's image decoders).
const IMAGE_MEMBERS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// The largest `.cls` member read (a class index is a few digits).
const MAX_CLS_BYTES: u64 = 64;

/// One sample of a tar: its image member and its `.cls` label, as far as they were found.
struct TarSample {
    tar: Arc<Path>,
    key: String,
    image: Option<(u64, u64, String)>,
    cls: Option<Result<i32, String>>,
}

impl TarSample {
    /// The name reported for the sample: `shard.tar:KEY.ext`.
    fn name(&self) -> String {
        let ext = self.image.as_ref().map_or("cls", |i| i.2.as_str());
        format!("{}:{}.{ext}", tar_name(&self.tar), self.key)
    }
}

fn tar_name(tar: &Path) -> String {
    tar.file_name()
        .map_or_else(|| tar.display().to_string(), |n| n.to_string_lossy().into())
}

/// Lists `source`: one `.tar` file, or a folder whose `*.tar` files are read in name order.
pub(super) fn list_tar(source: &Path) -> Result<Listing, DataError> {
    let tars = tar_files(source)?;
    let mut samples = Vec::new();
    let mut skipped = Vec::new();
    for tar in &tars {
        scan_tar(tar, &mut samples, &mut skipped)?;
    }
    let (train, classes) = label_samples(samples, &mut skipped);
    Ok(Listing {
        train,
        val: None,
        classes,
        skipped,
        native_size: None,
        native_channels: 3,
    })
}

/// One sample that `--from tar` takes from an archive: `name` (`ARCHIVE:KEY.ext`), where its image
/// member's bytes are, and its label (−1 when unlabeled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarMember {
    /// `ARCHIVE:KEY.ext`, as reported.
    pub name: String,
    /// Offset of the image member's bytes in the archive.
    pub offset: u64,
    /// Its length as the header declares it (not checked against the archive's size: reading it
    /// is where a short archive is found).
    pub len: u64,
    /// Class index or −1.
    pub label: i32,
}

/// The listing `prepare --from tar` makes of one archive (`name` is used in reports): the samples
/// taken, in order, and what is skipped, with the reasons. Reads headers only.
pub fn scan_tar_members<R: Read + Seek>(
    reader: R,
    name: &Path,
) -> Result<(Vec<TarMember>, Vec<Skipped>), DataError> {
    let (mut samples, mut skipped) = (Vec::new(), Vec::new());
    scan_archive(reader, Arc::from(name), &mut samples, &mut skipped)
        .map_err(|e| DataError::io(name, e))?;
    let (items, _) = label_samples(samples, &mut skipped);
    let members = items
        .into_iter()
        .filter_map(|item| match item {
            Item::Member {
                rel,
                offset,
                len,
                label,
                ..
            } => Some(TarMember {
                name: rel,
                offset,
                len,
                label,
            }),
            _ => None,
        })
        .collect();
    Ok((members, skipped))
}

fn is_compressed(name: &str) -> bool {
    [".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar.zst"]
        .iter()
        .any(|e| name.ends_with(e))
}

fn tar_files(source: &Path) -> Result<Vec<PathBuf>, DataError> {
    let name = source.to_string_lossy().to_ascii_lowercase();
    if is_compressed(&name) {
        return Err(DataError::source(
            source,
            "a compressed tar cannot be read at offsets: decompress it first (gunzip, xz -d, zstd -d)",
        ));
    }
    let meta = fs::metadata(source).map_err(|e| DataError::io(source, e))?;
    if meta.is_file() {
        return Ok(vec![source.to_path_buf()]);
    }
    let mut tars = Vec::new();
    let mut compressed = 0;
    for entry in fs::read_dir(source).map_err(|e| DataError::io(source, e))? {
        let path = entry.map_err(|e| DataError::io(source, e))?.path();
        let lower = path.to_string_lossy().to_ascii_lowercase();
        if lower.ends_with(".tar") && path.is_file() {
            tars.push(path);
        } else if is_compressed(&lower) {
            compressed += 1;
        }
    }
    if tars.is_empty() {
        let why = if compressed > 0 {
            format!(
                "no .tar files, {compressed} compressed ones: decompress them first (a compressed \
                 tar cannot be read at offsets)"
            )
        } else {
            "no .tar files in this folder".to_string()
        };
        return Err(DataError::source(source, why));
    }
    tars.sort();
    Ok(tars)
}

/// WebDataset's split of a member name into key and extension: at the first dot of the file name
/// (`a/b.c.jpg` → `a/b`, `c.jpg`); a leading `./` is dropped. `None` for names without one, and
/// for hidden files (`._x.jpg`, left by macOS archivers).
fn split_key(member: &str) -> Option<(&str, &str)> {
    let member = member.strip_prefix("./").unwrap_or(member);
    let base_start = member.rfind('/').map_or(0, |i| i + 1);
    if member[base_start..].starts_with('.') {
        return None;
    }
    let dot = member[base_start..].find('.')? + base_start;
    Some((&member[..dot], &member[dot + 1..]))
}

/// Reads the headers of one tar, adding its samples; a tar that cannot be read past some member
/// keeps the samples before it and reports the rest.
fn scan_tar(
    path: &Path,
    samples: &mut Vec<TarSample>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    scan_archive(file, Arc::from(path), samples, skipped).map_err(|e| DataError::io(path, e))
}

/// [`scan_tar`] on an open archive named `tar`.
fn scan_archive<R: Read + Seek>(
    reader: R,
    tar: Arc<Path>,
    samples: &mut Vec<TarSample>,
    skipped: &mut Vec<Skipped>,
) -> std::io::Result<()> {
    let path = Arc::clone(&tar);
    let path: &Path = &path;
    let mut archive = tar::Archive::new(reader);
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let entries = archive.entries_with_seek()?;
    for (members, entry) in entries.enumerate() {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                // the tar crate's message quotes the bad header field, junk included
                let mut e = e.to_string();
                if e.len() > 120 {
                    let cut = (0..=120)
                        .rev()
                        .find(|&i| e.is_char_boundary(i))
                        .unwrap_or(0);
                    e.truncate(cut);
                    e.push('…');
                }
                let reason = if members == 0 {
                    format!("not a readable tar (its first header: {e})")
                } else {
                    format!("unreadable after member {members} ({e}); the rest of it is skipped")
                };
                skipped.push(Skipped {
                    path: tar_name(path),
                    reason,
                });
                return Ok(());
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((key, ext)) = split_key(&member) else {
            continue;
        };
        let ext = ext.to_ascii_lowercase();
        let is_image = IMAGE_MEMBERS.contains(&ext.as_str());
        if !is_image && ext != "cls" {
            continue;
        }
        let i = *by_key.entry(key.to_string()).or_insert_with(|| {
            samples.push(TarSample {
                tar: tar.clone(),
                key: key.to_string(),
                image: None,
                cls: None,
            });
            samples.len() - 1
        });
        let sample = &mut samples[i];
        if is_image {
            if sample.image.is_some() {
                skipped.push(Skipped {
                    path: format!("{}:{member}", tar_name(path)),
                    reason: "a second image for the same key".into(),
                });
            } else {
                sample.image = Some((entry.raw_file_position(), entry.size(), ext));
            }
        } else {
            sample.cls = Some(read_cls(&mut entry));
        }
    }
    Ok(())
}

/// A `.cls` member's class index.
fn read_cls(entry: &mut impl Read) -> Result<i32, String> {
    let mut text = String::new();
    entry
        .take(MAX_CLS_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("KEY.cls: {e}"))?;
    if text.len() as u64 > MAX_CLS_BYTES {
        return Err(format!("KEY.cls is longer than {MAX_CLS_BYTES} bytes"));
    }
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|&c| c >= 0)
        .ok_or_else(|| format!("KEY.cls `{}` is not a class index", text.trim()))
}

/// The folder a key is in (its last one): `train/n01440764/x` → `n01440764`.
fn class_folder(key: &str) -> Option<&str> {
    let (dir, _) = key.rsplit_once('/')?;
    dir.rsplit('/').next()
}

/// The items and class names: labels from `.cls` members when any sample has one, else from
/// the folder in the key, else none. Samples without an image, or without the label the others
/// have, are reported.
fn label_samples(samples: Vec<TarSample>, skipped: &mut Vec<Skipped>) -> (Vec<Item>, Vec<String>) {
    let by_cls = samples.iter().any(|s| s.cls.is_some());
    let classes: Vec<String> = if by_cls {
        let max = samples
            .iter()
            .filter_map(|s| s.cls.as_ref()?.as_ref().ok().copied())
            .max();
        (0..max.map_or(0, |m| m as usize + 1))
            .map(|i| i.to_string())
            .collect()
    } else {
        let mut c: Vec<String> = samples
            .iter()
            .filter_map(|s| class_folder(&s.key).map(str::to_string))
            .collect();
        c.sort();
        c.dedup();
        c
    };
    let mut items = Vec::with_capacity(samples.len());
    for s in samples {
        let label = if by_cls {
            match &s.cls {
                Some(Ok(c)) => Ok(*c),
                Some(Err(e)) => Err(e.clone()),
                None => Err("no KEY.cls label, where other samples have one".into()),
            }
        } else if classes.is_empty() {
            Ok(UNLABELED)
        } else {
            class_folder(&s.key)
                .and_then(|f| classes.binary_search_by(|c| c.as_str().cmp(f)).ok())
                .map(|i| i as i32)
                .ok_or_else(|| "image outside the class folders".to_string())
        };
        let Some((offset, len, _)) = &s.image else {
            skipped.push(Skipped {
                path: s.name(),
                reason: "a label without an image".into(),
            });
            continue;
        };
        match label {
            Ok(label) => items.push(Item::Member {
                rel: s.name(),
                offset: *offset,
                len: *len,
                tar: s.tar,
                label,
            }),
            Err(reason) => skipped.push(Skipped {
                path: s.name(),
                reason,
            }),
        }
    }
    (items, classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("a/b.c.jpg"), Some(("a/b", "c.jpg")));
        assert_eq!(split_key("./0001.jpg"), Some(("0001", "jpg")));
        assert_eq!(split_key("dir.v2/x.png"), Some(("dir.v2/x", "png")));
        assert_eq!(split_key("noext"), None);
        assert_eq!(split_key("d/._x.jpg"), None);
    }

    #[test]
    fn cls_members_are_class_indices() {
        assert_eq!(read_cls(&mut &b"7\n"[..]), Ok(7));
        assert!(read_cls(&mut &b"-1"[..]).is_err());
        assert!(read_cls(&mut &b"cat"[..]).is_err());
        assert!(read_cls(&mut &[b'1'; 100][..]).is_err());
    }
}
