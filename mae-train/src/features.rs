//! Encoder features of a dataset and the weighted k-nearest-neighbour classifier on them.
//!
//! PyTorch counterparts: the frozen-encoder forward of `main_linprobe.py` (all patches, no
//! masking; cls token after the final norm, or the mean of the patch tokens), and DINO's
//! `knn_classifier` (`eval_knn.py`): L2-normalized features, cosine similarity, the `k` nearest
//! training samples vote with weight `exp(sim / T)`, T = 0.07.

use std::marker::PhantomData;
use std::path::Path;

use mae_core::device::MaeDevice;
use mae_core::dfdx::prelude::*;
use mae_core::{Encoder, MaeDtype, MaePreset};
use mae_data::augment::{normalization, Augment, Transform};
use mae_data::resize::Resizer;
use mae_data::Split;

use crate::amp::{to_half, Precision};
use crate::device::{DeviceVisitor, RunDevice};
use crate::error::TrainError;

/// Features of one split: `[n, dim]` row-major, with labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Feature width.
    pub dim: usize,
    /// cls token after the final norm, `[n, dim]`.
    pub cls: Vec<f32>,
    /// Mean of the patch tokens after the final norm, `[n, dim]`.
    pub avg: Vec<f32>,
    /// Labels (−1 when unlabeled).
    pub labels: Vec<i64>,
}

impl Features {
    /// No samples yet, room for `n` of width `dim`.
    pub fn with_capacity(dim: usize, n: usize) -> Self {
        Features {
            dim,
            cls: Vec::with_capacity(n * dim),
            avg: Vec::with_capacity(n * dim),
            labels: Vec::with_capacity(n),
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The `[n, dim]` rows of one kind of feature.
    pub fn select(&self, kind: FeatureKind) -> &[f32] {
        match kind {
            FeatureKind::Cls => &self.cls,
            FeatureKind::Avg => &self.avg,
        }
    }
}

/// Calls `f(images, labels)` for consecutive batches of `batch` images of `split` in order,
/// transformed by `augment` at `epoch` (deterministic per `(seed, epoch, index)`).
pub fn for_each_batch(
    split: &Split,
    manifest: &mae_data::Manifest,
    augment: &Augment,
    epoch: u64,
    batch: usize,
    f: impl FnMut(&[f32], &[i64]) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    for_each_batch_in(split, manifest, augment, epoch, batch, 0..split.len(), f)
}

/// [`for_each_batch`] over the samples `range` of the split only (one rank's shard).
pub fn for_each_batch_in(
    split: &Split,
    manifest: &mae_data::Manifest,
    augment: &Augment,
    epoch: u64,
    batch: usize,
    range: std::ops::Range<usize>,
    mut f: impl FnMut(&[f32], &[i64]) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let size = augment.out_size;
    let per = manifest.channels * size * size;
    let mut resizer = Resizer::new();
    let mut scratch = Vec::new();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let last = range.end.min(split.len());
    for start in (range.start..last).step_by(batch.max(1)) {
        let end = start.saturating_add(batch.max(1)).min(last);
        images.resize((end - start) * per, 0.0);
        labels.clear();
        for i in start..end {
            let sample = split
                .get(i)
                .ok_or_else(|| TrainError::Config(format!("sample {i} missing")))?;
            augment.apply(
                &mut resizer,
                &mut scratch,
                sample.pixels,
                manifest.image_size,
                epoch,
                i as u64,
                &mut images[(i - start) * per..(i - start + 1) * per],
            )?;
            labels.push(sample.label as i64);
        }
        f(&images, &labels)?;
    }
    Ok(())
}

/// [`for_each_batch`] with the evaluation transform for images of side `size` (resize, centre
/// crop, normalize as in training; no randomness).
pub fn for_each_eval_batch(
    split: &Split,
    manifest: &mae_data::Manifest,
    size: usize,
    batch: usize,
    f: impl FnMut(&[f32], &[i64]) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let (mean, std) = normalization(manifest, false);
    let eval = Augment::new(Transform::eval_for(size), size, &mean, &std, 0)?;
    for_each_batch(split, manifest, &eval, 0, batch, f)
}

/// Checks that the data's channels fit preset `P`.
pub fn check_channels<P: MaePreset>(manifest: &mae_data::Manifest) -> Result<(), TrainError> {
    if manifest.channels != P::IN_CHANS {
        return Err(TrainError::Config(format!(
            "the data has {} channel(s), preset {} takes {} (prepare it with --channels {})",
            manifest.channels,
            P::PRESET,
            P::IN_CHANS,
            P::IN_CHANS
        )));
    }
    Ok(())
}

/// Runs the encoder over every image of `split` (resized to the preset's size, normalized as in
/// training, no masking), `batch` images at a time.
pub fn extract<P: MaePreset, E: MaeDtype, D: MaeDevice<E>>(
    encoder: &Encoder<P, E, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    batch: usize,
) -> Result<Features, TrainError> {
    extract_with(
        encoder,
        split,
        manifest,
        &eval_augment::<P>(manifest)?,
        0,
        batch,
    )
}

/// The evaluation transform of preset `P` for data described by `manifest`.
pub(crate) fn eval_augment<P: MaePreset>(
    manifest: &mae_data::Manifest,
) -> Result<Augment, TrainError> {
    let (mean, std) = normalization(manifest, false);
    let s = P::IMG_SIZE;
    Ok(Augment::new(Transform::eval_for(s), s, &mean, &std, 0)?)
}

/// [`extract`] with another transform (the augmented linear probe's random crops) at `epoch`.
pub fn extract_with<P: MaePreset, E: MaeDtype, D: MaeDevice<E>>(
    encoder: &Encoder<P, E, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    augment: &Augment,
    epoch: u64,
    batch: usize,
) -> Result<Features, TrainError> {
    extract_range(
        encoder,
        split,
        manifest,
        augment,
        epoch,
        batch,
        0..split.len(),
    )
}

/// [`extract_with`] shared out over the ranks of `comm`: each rank runs the encoder over its
/// contiguous shard of the split and every rank gets the whole split's features back, in order
/// (an all-gather). With one rank it is [`extract_with`].
pub fn extract_sharded<P: MaePreset, E: MaeDtype, D: MaeDevice<E>>(
    encoder: &Encoder<P, E, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    augment: &Augment,
    epoch: u64,
    batch: usize,
    comm: &crate::dist::Comm,
) -> Result<Features, TrainError> {
    let (n, world) = (split.len(), comm.world_size());
    if world == 1 {
        return extract_with(encoder, split, manifest, augment, epoch, batch);
    }
    let dim = <P::Encoder as mae_core::TransformerDims>::DIM;
    let per_rank = n.div_ceil(world);
    let range_of = |r: usize| (r * per_rank).min(n)..((r + 1) * per_rank).min(n);
    let mine = extract_range(
        encoder,
        split,
        manifest,
        augment,
        epoch,
        batch,
        range_of(comm.rank()),
    )?;
    // one buffer per rank, padded to the largest shard: cls rows, avg rows, labels (as f32:
    // class indices are far below 2^24)
    let width = per_rank * (2 * dim + 1);
    let mut send = vec![0f32; width];
    send[..mine.cls.len()].copy_from_slice(&mine.cls);
    send[per_rank * dim..][..mine.avg.len()].copy_from_slice(&mine.avg);
    for (d, &l) in send[2 * per_rank * dim..].iter_mut().zip(&mine.labels) {
        *d = l as f32;
    }
    let all = comm.all_gather_f32(&send)?;
    let mut out = Features::with_capacity(dim, n);
    for (r, buf) in all.chunks_exact(width).enumerate() {
        let count = range_of(r).len();
        out.cls.extend_from_slice(&buf[..count * dim]);
        out.avg
            .extend_from_slice(&buf[per_rank * dim..][..count * dim]);
        out.labels
            .extend(buf[2 * per_rank * dim..][..count].iter().map(|&l| l as i64));
    }
    Ok(out)
}

fn extract_range<P: MaePreset, E: MaeDtype, D: MaeDevice<E>>(
    encoder: &Encoder<P, E, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    augment: &Augment,
    epoch: u64,
    batch: usize,
    range: std::ops::Range<usize>,
) -> Result<Features, TrainError> {
    check_channels::<P>(manifest)?;
    let dim = <P::Encoder as mae_core::TransformerDims>::DIM;
    let n = range.len();
    let mut out = Features::with_capacity(dim, n);
    for_each_batch_in(
        split,
        manifest,
        augment,
        epoch,
        batch,
        range,
        |images, labels| {
            out.labels.extend_from_slice(labels);
            let tokens = E::into_f32_vec(encoder.forward_features(images, NoneTape)?.as_vec());
            push_pooled(&mut out, &tokens, labels.len());
            Ok(())
        },
    )?;
    Ok(out)
}

/// Top-1/top-5 counts of `logits` (`[n, classes]`) against `labels`.
pub fn topk_hits(logits: &[f32], labels: &[i64], classes: usize) -> (usize, usize) {
    let (mut top1, mut top5) = (0usize, 0usize);
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        top1 += (order[0] as i64 == label) as usize;
        top5 += order[..5.min(classes)].iter().any(|&c| c as i64 == label) as usize;
    }
    (top1, top5)
}

/// The normalization a checkpoint was trained with, for images that come as files: the statistics
/// of its training data (the manifest named by the config in the checkpoint's metadata), else
/// ImageNet's for RGB, else mean 0.5 / std 0.5.
pub fn training_normalization(
    file: &mae_core::TensorFile,
    channels: usize,
) -> Result<(Vec<f64>, Vec<f64>), TrainError> {
    let manifest = file
        .metadata()?
        .get("config")
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .and_then(|c| {
            c.get("data")
                .and_then(|d| d.as_str())
                .map(std::path::PathBuf::from)
        })
        .and_then(|dir| mae_data::dataset::read_manifest(&dir).ok())
        .filter(|m| m.channels == channels);
    Ok(match manifest {
        Some(m) => normalization(&m, false),
        None if channels == 3 => (
            mae_data::augment::IMAGENET_MEAN.to_vec(),
            mae_data::augment::IMAGENET_STD.to_vec(),
        ),
        None => (vec![0.5; channels], vec![0.5; channels]),
    })
}

struct ExtractFiles<'a> {
    checkpoint: &'a Path,
    files: &'a [std::path::PathBuf],
    batch: usize,
    device: crate::device::DeviceKind,
}

impl mae_core::PresetVisitor for ExtractFiles<'_> {
    type Output = Result<Features, TrainError>;
    fn visit<P: MaePreset>(self) -> Self::Output {
        self.device.run(0, ExtractFilesOn::<P>(self, PhantomData))
    }
}

struct ExtractFilesOn<'a, P>(ExtractFiles<'a>, PhantomData<P>);

impl<P: MaePreset> DeviceVisitor for ExtractFilesOn<'_, P> {
    type Output = Features;
    fn visit<D: RunDevice>(self, dev: D) -> Result<Features, TrainError> {
        let ExtractFilesOn(this, _) = self;
        let file = mae_core::TensorFile::open(this.checkpoint)?;
        let encoder = load_encoder::<P, D>(&file, &dev)?;
        let (c, s) = (P::IN_CHANS, P::IMG_SIZE);
        let (mean, std) = training_normalization(&file, c)?;
        let transform = Transform::eval_for(s);
        let eval = Augment::new(transform, s, &mean, &std, 0)?;
        // decode at the side the evaluation crop expects (256 for 224), as a prepared dataset is
        let side = match transform {
            Transform::Eval { crop_pct } => (s as f64 / crop_pct).round() as usize,
            Transform::Pretrain { .. } => s,
        };
        let dim = <P::Encoder as mae_core::TransformerDims>::DIM;
        let mut out = Features::with_capacity(dim, this.files.len());
        let (mut resizer, mut scratch) = (Resizer::new(), Vec::new());
        let per = c * s * s;
        for chunk in this.files.chunks(this.batch.max(1)) {
            let mut images = vec![0f32; chunk.len() * per];
            for (i, path) in chunk.iter().enumerate() {
                let pixels = mae_data::prepare::load_image(path, side, c)?;
                eval.apply(
                    &mut resizer,
                    &mut scratch,
                    &pixels,
                    side,
                    0,
                    i as u64,
                    &mut images[i * per..(i + 1) * per],
                )?;
            }
            let tokens = encoder.forward_features(&images, NoneTape)?.as_vec();
            push_pooled(&mut out, &tokens, chunk.len());
            out.labels.extend(std::iter::repeat_n(-1, chunk.len()));
        }
        Ok(out)
    }
}

/// Encoder features of image files (labels −1), in order, computed on `device`:
/// `mae embed --image`.
pub fn extract_files(
    checkpoint: &Path,
    files: &[std::path::PathBuf],
    batch: usize,
    device: crate::device::DeviceKind,
) -> Result<Features, TrainError> {
    crate::checkpoint::preset_of(checkpoint)?.visit(ExtractFiles {
        checkpoint,
        files,
        batch,
        device,
    })
}

/// Appends the cls token and the patch-token mean of each of `n` token rows.
fn push_pooled(out: &mut Features, tokens: &[f32], n: usize) {
    let dim = out.dim;
    let t = tokens.len() / (n.max(1) * dim);
    for row in tokens.chunks_exact(t * dim) {
        out.cls.extend_from_slice(&row[..dim]);
        let mut avg = vec![0f32; dim];
        for token in row[dim..].chunks_exact(dim) {
            for (a, v) in avg.iter_mut().zip(token) {
                *a += v;
            }
        }
        let k = (t - 1).max(1) as f32;
        out.avg.extend(avg.into_iter().map(|a| a / k));
    }
}

/// Top-1 and top-5 accuracy of a classifier, in percent.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Accuracy {
    /// Top-1, %.
    pub top1: f64,
    /// Top-5, %.
    pub top5: f64,
}

fn l2_normalize(rows: &[f32], dim: usize) -> Vec<f32> {
    let mut out = rows.to_vec();
    for row in out.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    out
}

/// DINO's weighted kNN: each test row's `k` most cosine-similar training rows vote for their label
/// with weight `exp(sim / temperature)`. Labels must be in `0..num_classes`.
#[allow(clippy::too_many_arguments)]
pub fn knn_classify(
    train: &[f32],
    train_labels: &[i64],
    test: &[f32],
    test_labels: &[i64],
    dim: usize,
    k: usize,
    temperature: f32,
    num_classes: usize,
) -> Result<Accuracy, TrainError> {
    if dim == 0 || train.len() != train_labels.len() * dim || test.len() != test_labels.len() * dim
    {
        return Err(TrainError::Config(
            "kNN: features and labels do not match".into(),
        ));
    }
    if train_labels.is_empty() || test_labels.is_empty() || k == 0 || num_classes == 0 {
        return Err(TrainError::Config(
            "kNN needs labeled train and test samples and k ≥ 1".into(),
        ));
    }
    crate::config::check_float("temperature", temperature as f64, true)?;
    if let Some(bad) = train_labels
        .iter()
        .chain(test_labels)
        .find(|&&l| l < 0 || l as usize >= num_classes)
    {
        return Err(TrainError::Config(format!(
            "kNN: label {bad} outside 0..{num_classes} (unlabeled data cannot be scored)"
        )));
    }
    let train = l2_normalize(train, dim);
    let test = l2_normalize(test, dim);
    let k = k.min(train_labels.len());
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut sims: Vec<(f32, usize)> = Vec::with_capacity(train_labels.len());
    for (q, &label) in test.chunks_exact(dim).zip(test_labels) {
        sims.clear();
        sims.extend(
            train
                .chunks_exact(dim)
                .enumerate()
                .map(|(j, t)| (q.iter().zip(t).map(|(a, b)| a * b).sum::<f32>(), j)),
        );
        sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        let mut votes = vec![0f64; num_classes];
        for &(sim, j) in &sims[..k] {
            votes[train_labels[j] as usize] += ((sim / temperature) as f64).exp();
        }
        let mut order: Vec<usize> = (0..num_classes).collect();
        order.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]).then(a.cmp(&b)));
        let label = label as usize;
        top1 += (order[0] == label) as usize;
        top5 += order[..5.min(num_classes)].contains(&label) as usize;
    }
    let n = test_labels.len() as f64;
    Ok(Accuracy {
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
    })
}

/// Writes train and val features with labels as safetensors: `{split}.cls`, `{split}.avg`
/// (`[n, dim]` f32) and `{split}.labels` (`[n]`, f32 holding the integer labels), metadata
/// `num_classes`. A path ending in `.npy` writes one NumPy file per array instead, named
/// `{stem}.{split}.{cls|avg|labels}.npy` (labels as int64).
pub fn write_features(
    path: &Path,
    splits: &[(&str, &Features)],
    num_classes: usize,
) -> Result<Vec<std::path::PathBuf>, TrainError> {
    if path.extension().is_some_and(|e| e == "npy") {
        return write_npy_files(path, splits);
    }
    let mut tensors = Vec::new();
    for (name, f) in splits {
        let n = f.len();
        for (kind, data) in [("cls", &f.cls), ("avg", &f.avg)] {
            tensors.push(mae_core::NamedTensor {
                name: format!("{name}.{kind}"),
                shape: vec![n, f.dim],
                data: data.clone(),
                trainable: false,
            });
        }
        tensors.push(mae_core::NamedTensor {
            name: format!("{name}.labels"),
            shape: vec![n],
            data: f.labels.iter().map(|&l| l as f32).collect(),
            trainable: false,
        });
    }
    let meta = std::collections::BTreeMap::from([
        ("num_classes".to_string(), num_classes.to_string()),
        (
            mae_core::weights::WRITTEN_BY_KEY.to_string(),
            "mae embed".to_string(),
        ),
    ]);
    mae_core::weights::write_safetensors(path, &tensors, &meta)?;
    Ok(vec![path.to_path_buf()])
}

/// The files [`write_features`] writes for `path` and splits named `splits`: `path` itself, or
/// for a `.npy` path `STEM.SPLIT.{cls,avg,labels}.npy` beside it.
pub fn feature_files(path: &Path, splits: &[&str]) -> Vec<std::path::PathBuf> {
    if path.extension().is_none_or(|e| e != "npy") {
        return vec![path.to_path_buf()];
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "features".into());
    splits
        .iter()
        .flat_map(|name| {
            ["cls", "avg", "labels"]
                .map(|kind| path.with_file_name(format!("{stem}.{name}.{kind}.npy")))
        })
        .collect()
}

fn npy_bytes(descr: &str, shape: &[usize], data: Vec<u8>) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // magic (6) + version (2) + header length (2) + header + '\n', padded to 64 bytes
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

fn write_npy_files(
    path: &Path,
    splits: &[(&str, &Features)],
) -> Result<Vec<std::path::PathBuf>, TrainError> {
    let names: Vec<&str> = splits.iter().map(|(n, _)| *n).collect();
    let files = feature_files(path, &names);
    for ((_, f), paths) in splits.iter().zip(files.chunks_exact(3)) {
        let n = f.len();
        for (data, p) in [&f.cls, &f.avg].into_iter().zip(paths) {
            let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            mae_core::weights::write_atomic(p, &npy_bytes("<f4", &[n, f.dim], bytes))?;
        }
        let bytes = f.labels.iter().flat_map(|v| v.to_le_bytes()).collect();
        mae_core::weights::write_atomic(&paths[2], &npy_bytes("<i8", &[n], bytes))?;
    }
    Ok(files)
}

/// The most classes a features file may declare (ImageNet-21k has 21,843).
pub const MAX_CLASSES: usize = 1 << 20;

/// Reads the train and val features of a file written by [`write_features`] (safetensors), and
/// the number of classes (its metadata, else the largest label + 1).
pub fn read_features(path: &Path) -> Result<(Features, Features, usize), TrainError> {
    let file = mae_core::TensorFile::open(path)?;
    let bad = |m: String| TrainError::Config(format!("{}: {m}", path.display()));
    let split = |name: &str| -> Result<Features, TrainError> {
        let get = |kind: &str| -> Result<mae_core::HostTensor, TrainError> {
            file.read(&format!("{name}.{kind}"))?
                .ok_or_else(|| bad(format!("no `{name}.{kind}` (not written by `mae embed`?)")))
        };
        let (cls, avg, labels) = (get("cls")?, get("avg")?, get("labels")?);
        let n = labels.data.len();
        let dim = cls.shape.get(1).copied().unwrap_or(0);
        if cls.shape != [n, dim] || avg.shape != [n, dim] || dim == 0 {
            return Err(bad(format!(
                "`{name}` features are {:?} / {:?} for {n} labels",
                cls.shape, avg.shape
            )));
        }
        Ok(Features {
            dim,
            cls: cls.data,
            avg: avg.data,
            labels: labels.data.iter().map(|&l| l as i64).collect(),
        })
    };
    let (train, val) = (split("train")?, split("val")?);
    if train.dim != val.dim {
        return Err(bad("train and val features differ in width".into()));
    }
    let classes = match file.metadata()?.get("num_classes") {
        Some(c) => c
            .parse()
            .ok()
            .filter(|&c: &usize| c <= MAX_CLASSES)
            .ok_or_else(|| {
                bad(format!(
                    "num_classes `{c}` is not a number up to {MAX_CLASSES}"
                ))
            })?,
        None => train
            .labels
            .iter()
            .chain(&val.labels)
            .max()
            .map_or(0, |m| m.saturating_add(1).max(0) as usize),
    };
    if classes > MAX_CLASSES {
        return Err(bad(format!(
            "labels up to {} are more than {MAX_CLASSES} classes",
            classes - 1
        )));
    }
    Ok((train, val, classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_on_a_case_with_a_known_answer() {
        // two clusters on the unit circle; the test points sit next to one each
        let train = [
            1.0, 0.0, 0.9, 0.1, 0.95, -0.05, 0.0, 1.0, 0.1, 0.9, -0.1, 0.95,
        ];
        let train_labels = [0, 0, 0, 1, 1, 1];
        let test = [0.8, 0.05, 0.05, 2.0, 3.0, 0.2];
        let test_labels = [0, 1, 1];
        let acc = knn_classify(&train, &train_labels, &test, &test_labels, 2, 3, 0.07, 2)
            .expect("valid input");
        // the third point (3.0, 0.2) is near class 0: one of three wrong
        assert!((acc.top1 - 200.0 / 3.0).abs() < 1e-9, "{acc:?}");
        assert_eq!(acc.top5, 100.0);
        // k = 1 with a misleading neighbour: the nearest one decides
        let acc =
            knn_classify(&train, &train_labels, &[0.0, 1.0], &[1], 2, 1, 0.07, 2).expect("valid");
        assert_eq!(acc.top1, 100.0);
        assert!(knn_classify(&train, &train_labels, &test, &[0, 1, 7], 2, 3, 0.07, 2).is_err());
    }
}

/// Which feature a classifier uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeatureKind {
    /// The cls token.
    #[default]
    Cls,
    /// The mean of the patch tokens.
    Avg,
}

impl FeatureKind {
    /// `cls` or `avg`, as parsed.
    pub fn name(self) -> &'static str {
        match self {
            FeatureKind::Cls => "cls",
            FeatureKind::Avg => "avg",
        }
    }
}

impl std::str::FromStr for FeatureKind {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cls" => Ok(FeatureKind::Cls),
            "avg" => Ok(FeatureKind::Avg),
            _ => Err(TrainError::Config(format!("feature `{s}`: cls or avg"))),
        }
    }
}

/// What to evaluate: the encoder of `checkpoint` on the dataset `data`.
#[derive(Debug, Clone)]
pub struct EvalInput {
    /// Model checkpoint (full or encoder-only; preset from its metadata).
    pub checkpoint: std::path::PathBuf,
    /// Prepared dataset (train split = the memory bank, val split = the queries).
    pub data: std::path::PathBuf,
    /// Images per encoder forward.
    pub batch: usize,
    /// Where the encoder runs.
    pub device: crate::device::DeviceKind,
    /// The encoder's precision: `amp-f16` runs it in half precision (as the official linear
    /// probe runs under `autocast`).
    pub precision: Precision,
}

impl EvalInput {
    /// Checks the numbers given.
    pub fn validate(&self) -> Result<(), TrainError> {
        crate::config::check_count("eval-batch-size", self.batch, 1, crate::config::MAX_BATCH)
    }
}

/// The encoder of a checkpoint (full MAE or encoder-only file) on `dev`, without building a
/// decoder.
pub fn load_encoder<P: MaePreset, D: MaeDevice>(
    file: &mae_core::TensorFile,
    dev: &D,
) -> Result<Encoder<P, f32, D>, TrainError> {
    use mae_core::dfdx::nn::BuildModule;
    let mut encoder = Encoder::<P, f32, D>::try_build(dev).map_err(crate::error::device_err)?;
    encoder.load_from(file, "")?;
    Ok(encoder)
}

struct Extract<'a>(&'a EvalInput, &'a crate::dist::Comm);

impl mae_core::PresetVisitor for Extract<'_> {
    type Output = Result<(Features, Features, usize), TrainError>;
    fn visit<P: MaePreset>(self) -> Self::Output {
        self.0.device.run(0, ExtractOn::<P>(self, PhantomData))
    }
}

struct ExtractOn<'a, P>(Extract<'a>, PhantomData<P>);

impl<P: MaePreset> DeviceVisitor for ExtractOn<'_, P> {
    type Output = (Features, Features, usize);
    fn visit<D: RunDevice>(self, dev: D) -> Result<Self::Output, TrainError> {
        let Extract(input, comm) = self.0;
        let encoder = load_encoder::<P, D>(&mae_core::TensorFile::open(&input.checkpoint)?, &dev)?;
        let data = mae_data::Dataset::open(&input.data)?;
        match input.precision {
            Precision::F32 => extract_splits(&encoder, &data, input.batch, comm),
            Precision::AmpF16 => extract_splits(&to_half(&encoder)?, &data, input.batch, comm),
        }
    }
}

/// The features of both splits of `data` through `encoder`, and the number of classes.
fn extract_splits<P: MaePreset, E: MaeDtype, D: MaeDevice<E>>(
    encoder: &Encoder<P, E, D>,
    data: &mae_data::Dataset,
    batch: usize,
    comm: &crate::dist::Comm,
) -> Result<(Features, Features, usize), TrainError> {
    let m = data.manifest();
    let eval = eval_augment::<P>(m)?;
    let train = extract_sharded(encoder, data.train(), m, &eval, 0, batch, comm)?;
    let val = extract_sharded(encoder, data.val(), m, &eval, 0, batch, comm)?;
    Ok((train, val, m.classes.len()))
}

/// Features of both splits, and the number of classes.
pub fn extract_dataset(input: &EvalInput) -> Result<(Features, Features, usize), TrainError> {
    extract_dataset_with(input, &crate::dist::Comm::single())
}

/// [`extract_dataset`] shared out over the ranks of `comm` ([`extract_sharded`]).
pub fn extract_dataset_with(
    input: &EvalInput,
    comm: &crate::dist::Comm,
) -> Result<(Features, Features, usize), TrainError> {
    input.validate()?;
    crate::checkpoint::preset_of(&input.checkpoint)?.visit(Extract(input, comm))
}

/// Where evaluation features come from.
#[derive(Debug, Clone)]
pub enum FeatureSource {
    /// The encoder of a checkpoint run over a dataset.
    Model(EvalInput),
    /// Features written by `mae embed` (safetensors).
    Features(std::path::PathBuf),
}

impl FeatureSource {
    /// Checks the numbers given (the encoder's batch).
    pub fn validate(&self) -> Result<(), TrainError> {
        match self {
            FeatureSource::Model(input) => input.validate(),
            FeatureSource::Features(_) => Ok(()),
        }
    }

    /// Train and val features and the number of classes.
    pub fn load(&self) -> Result<(Features, Features, usize), TrainError> {
        self.load_with(&crate::dist::Comm::single())
    }

    /// [`load`](Self::load), the encoder's work shared out over the ranks of `comm`.
    pub fn load_with(
        &self,
        comm: &crate::dist::Comm,
    ) -> Result<(Features, Features, usize), TrainError> {
        match self {
            FeatureSource::Model(input) => extract_dataset_with(input, comm),
            FeatureSource::Features(path) => read_features(path),
        }
    }
}

/// `mae knn`: weighted kNN of the val split against the train split.
pub fn knn_eval(
    input: &FeatureSource,
    k: usize,
    temperature: f32,
    feature: FeatureKind,
) -> Result<Accuracy, TrainError> {
    knn_eval_with(input, k, temperature, feature, &crate::dist::Comm::single())
}

/// [`knn_eval`] with the encoder's passes over the images shared out over the ranks of `comm`
/// ([`extract_sharded`]); every rank then classifies the same features.
pub fn knn_eval_with(
    input: &FeatureSource,
    k: usize,
    temperature: f32,
    feature: FeatureKind,
    comm: &crate::dist::Comm,
) -> Result<Accuracy, TrainError> {
    // the settings before the encoder's passes, which take minutes
    crate::config::check_count("k", k, 1, usize::MAX)?;
    crate::config::check_float("temperature", temperature as f64, true)?;
    input.validate()?;
    let (train, val, classes) = input.load_with(comm)?;
    knn_classify(
        train.select(feature),
        &train.labels,
        val.select(feature),
        &val.labels,
        train.dim,
        k,
        temperature,
        classes,
    )
}
