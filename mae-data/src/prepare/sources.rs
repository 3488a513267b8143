//! What `prepare` reads: image folders, a CSV list of files, MNIST-style idx files and the
//! CIFAR-10 binary batches, each listed into [`Item`]s (with the splits they come in, if any).
//!
//! PyTorch counterpart: `torchvision.datasets.ImageFolder`, `datasets.FashionMNIST`,
//! `datasets.CIFAR10`; a file list as a user's own `Dataset` over `(path, label)` rows.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::format::{Skipped, UNLABELED};
use crate::walk::{list_dir, Walk};

use super::{Item, Listing};

pub(super) fn list_image_folder(dir: &Path) -> Result<Listing, DataError> {
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

pub(super) fn class_names_file(path: &Path) -> Result<Option<Vec<String>>, DataError> {
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

pub(super) fn list_idx(dir: &Path) -> Result<Listing, DataError> {
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

pub(super) fn list_cifar10(dir: &Path) -> Result<Listing, DataError> {
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

/// The largest CSV list read (tens of millions of rows).
const MAX_LIST_BYTES: u64 = 4 << 30;

/// A CSV file list: one `path,label` row per image (a first row `path,label` is a header), the
/// label a class name or a class index, or no label column at all (unlabeled). Relative paths
/// are resolved against the list's folder. Class names are sorted (as `ImageFolder` sorts its
/// folders); integer labels are kept as they are.
pub(super) fn list_csv(path: &Path) -> Result<Listing, DataError> {
    let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if !meta.is_file() || meta.len() > MAX_LIST_BYTES {
        return Err(DataError::source(
            path,
            format!("--from csv needs a file list of at most {MAX_LIST_BYTES} bytes"),
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rows: Vec<(usize, &str, Option<&str>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        // the last comma splits: file names may hold commas, labels do not
        let (file, label) = match line.rsplit_once(',') {
            Some((f, l)) => (f.trim(), Some(l.trim())),
            None => (line.trim(), None),
        };
        if rows.is_empty() && file == "path" && label.is_none_or(|l| l == "label") {
            continue;
        }
        rows.push((n + 1, file, label.filter(|l| !l.is_empty())));
    }
    let labeled = rows.iter().filter(|r| r.2.is_some()).count();
    if labeled != 0 && labeled != rows.len() {
        let (n, ..) = rows
            .iter()
            .find(|r| r.2.is_none())
            .copied()
            .unwrap_or_default();
        return Err(DataError::source(
            path,
            format!("line {n} has no label, other rows have one: label every row or none"),
        ));
    }
    let names: Vec<&str> = rows.iter().filter_map(|r| r.2).collect();
    // all labels class indices: kept as they are; else class names, sorted
    let indices: Option<Vec<i32>> = names
        .iter()
        .map(|l| l.parse::<i32>().ok().filter(|&i| i >= 0))
        .collect();
    let classes: Vec<String> = match &indices {
        Some(ints) => {
            let n = ints.iter().copied().max().map_or(0, |m| m as usize + 1);
            (0..n).map(|i| i.to_string()).collect()
        }
        None => {
            let mut c: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            c.sort();
            c.dedup();
            c
        }
    };
    let label_of = |l: Option<&str>| -> i32 {
        let Some(l) = l else { return UNLABELED };
        match indices {
            Some(_) => l.parse().unwrap_or(UNLABELED),
            None => classes
                .binary_search_by(|c| c.as_str().cmp(l))
                .map_or(UNLABELED, |i| i as i32),
        }
    };
    let train = rows
        .iter()
        .map(|&(_, file, label)| Item::File {
            path: base.join(file),
            rel: file.to_string(),
            label: label_of(label),
        })
        .collect();
    Ok(Listing {
        train,
        val: None,
        classes,
        skipped: Vec::new(),
        native_size: None,
        native_channels: 3,
    })
}
