//! Encoder features of a dataset or of image files, and where evaluation features come from.
//!
//! PyTorch counterpart: the frozen-encoder forward of `main_linprobe.py` (all patches, no
//! masking; cls token after the final norm, or the mean of the patch tokens). The kNN classifier
//! on them is [`crate::knn`], their files [`crate::feature_set`].

use std::path::Path;

use mae_core::device::MaeDevice;
use mae_core::dfdx::prelude::*;
use mae_core::{Encoder, MaeDtype, MaePreset};
use mae_data::augment::{normalization, Augment, Transform};
use mae_data::resize::Resizer;
use mae_data::Split;

use crate::amp::{to_half, Precision};
use crate::device::{dispatch, Job, RunDevice};
use crate::error::TrainError;
use crate::feature_set::{read_features, Features};
use crate::run::progress::{Observer, Pass, Reporter};

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
    let (mut scratch, mut decoded) = (Vec::new(), Vec::new());
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
                sample.pixels(&mut decoded)?,
                (sample.width, sample.height),
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

/// [`for_each_batch_in`] over the samples `range` of the split (all of it, or one rank's shard)
/// with the evaluation transform for images of side `size` (resize, centre crop, normalize as in
/// training; no randomness).
pub fn for_each_eval_batch_in(
    split: &Split,
    manifest: &mae_data::Manifest,
    size: usize,
    batch: usize,
    range: std::ops::Range<usize>,
    f: impl FnMut(&[f32], &[i64]) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let (mean, std) = normalization(manifest, false);
    let eval = Augment::new(Transform::eval_for(size), size, &mean, &std, 0)?;
    for_each_batch_in(split, manifest, &eval, 0, batch, range, f)
}

/// Rank `rank`'s contiguous share of `n` samples over `world` ranks (the last ones may be
/// shorter or empty).
pub fn shard_range(n: usize, world: usize, rank: usize) -> std::ops::Range<usize> {
    let per_rank = n.div_ceil(world.max(1));
    (rank * per_rank).min(n)..((rank + 1) * per_rank).min(n)
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
    extract_range(encoder, split, manifest, batch, 0..split.len(), None)
}

/// The evaluation transform of preset `P` for data described by `manifest`.
fn eval_augment<P: MaePreset>(manifest: &mae_data::Manifest) -> Result<Augment, TrainError> {
    let (mean, std) = normalization(manifest, false);
    let s = P::IMG_SIZE;
    Ok(Augment::new(Transform::eval_for(s), s, &mean, &std, 0)?)
}

/// [`extract`] shared out over the ranks of `comm`: each rank runs the encoder over its
/// contiguous shard of the split and every rank gets the whole split's features back, in order
/// (an all-gather). With one rank it is [`extract`]. Rank 0 reports its pass to `report` (an
/// observer and the pass's name).
pub fn extract_sharded<P: MaePreset, E: MaeDtype, D: MaeDevice<E>>(
    encoder: &Encoder<P, E, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    batch: usize,
    (comm, report): (&crate::dist::Comm, Option<(&dyn Observer, &str)>),
) -> Result<Features, TrainError> {
    let (n, world) = (split.len(), comm.world_size());
    let report = report.filter(|_| comm.is_main());
    if world == 1 {
        return extract_range(encoder, split, manifest, batch, 0..n, report);
    }
    let dim = <P::Encoder as mae_core::TransformerDims>::DIM;
    let per_rank = n.div_ceil(world);
    let mine = extract_range(
        encoder,
        split,
        manifest,
        batch,
        shard_range(n, world, comm.rank()),
        report,
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
        let count = shard_range(n, world, r).len();
        out.cls.extend_from_slice(&buf[..count * dim]);
        out.avg
            .extend_from_slice(&buf[per_rank * dim..][..count * dim]);
        out.labels
            .extend(buf[2 * per_rank * dim..][..count].iter().map(|&l| l as i64));
    }
    Ok(out)
}

/// [`extract`] over the samples `range` of the split only (one rank's shard), the pass reported
/// to `report`'s observer under its name.
fn extract_range<P: MaePreset, E: MaeDtype, D: MaeDevice<E>>(
    encoder: &Encoder<P, E, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    batch: usize,
    range: std::ops::Range<usize>,
    report: Option<(&dyn Observer, &str)>,
) -> Result<Features, TrainError> {
    check_channels::<P>(manifest)?;
    let eval = eval_augment::<P>(manifest)?;
    let dim = <P::Encoder as mae_core::TransformerDims>::DIM;
    let n = range.len();
    let mut out = Features::with_capacity(dim, n);
    let mut pass = report.map(|(observer, what)| Pass::start(observer, what, n));
    for_each_batch_in(split, manifest, &eval, 0, batch, range, |images, labels| {
        out.labels.extend_from_slice(labels);
        push_encoded(encoder, images, labels.len(), &mut out)?;
        if let Some(pass) = &mut pass {
            pass.add(labels.len());
        }
        Ok(())
    })?;
    Ok(out)
}

/// The manifest of the data a checkpoint of ours was trained on (named by the config in its
/// metadata), when that dataset is still there.
pub fn training_manifest(
    file: &mae_core::TensorFile,
) -> Result<Option<mae_data::Manifest>, TrainError> {
    Ok(file
        .metadata()?
        .get("config")
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .and_then(|c| {
            c.get("data")
                .and_then(|d| d.as_str())
                .map(std::path::PathBuf::from)
        })
        .and_then(|dir| mae_data::dataset::read_manifest(&dir).ok()))
}

/// The normalization a checkpoint was trained with, for images that come as files: the statistics
/// of its training data (the manifest named by the config in the checkpoint's metadata), else
/// ImageNet's for RGB, else mean 0.5 / std 0.5.
pub fn training_normalization(
    file: &mae_core::TensorFile,
    channels: usize,
) -> Result<(Vec<f64>, Vec<f64>), TrainError> {
    let manifest = training_manifest(file)?.filter(|m| m.channels == channels);
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
}

impl Job for ExtractFiles<'_> {
    type Output = Features;
    fn run<P: MaePreset, D: RunDevice>(self, dev: D) -> Result<Features, TrainError> {
        let this = self;
        let (file, _) = mae_core::model_files::open_weights(this.checkpoint)?;
        let encoder = load_encoder::<P, D>(&file, &dev)?;
        let dim = <P::Encoder as mae_core::TransformerDims>::DIM;
        let mut out = Features::with_capacity(dim, this.files.len());
        for_each_file_batch::<P>(&file, this.files, this.batch, |images, n| {
            push_encoded(&encoder, images, n, &mut out)?;
            out.labels.extend(std::iter::repeat_n(-1, n));
            Ok(())
        })?;
        Ok(out)
    }
}

/// Calls `f(images, n)` for consecutive batches of at most `batch` of the image `files`, in
/// order, each decoded (EXIF orientation applied), converted to preset `P`'s channels and given
/// the evaluation transform (resize, centre crop) with the normalization the checkpoint `file`
/// was trained with ([`training_normalization`]).
pub fn for_each_file_batch<P: MaePreset>(
    file: &mae_core::TensorFile,
    files: &[std::path::PathBuf],
    batch: usize,
    mut f: impl FnMut(&[f32], usize) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let (c, s) = (P::IN_CHANS, P::IMG_SIZE);
    let (mean, std) = training_normalization(file, c)?;
    let transform = Transform::eval_for(s);
    let eval = Augment::new(transform, s, &mean, &std, 0)?;
    // decode at the side the evaluation crop expects (256 for 224), as a prepared dataset is
    let side = match transform {
        Transform::Eval { crop_pct } => mae_data::augment::eval_resize(s, crop_pct),
        Transform::Pretrain { .. } => s,
    };
    let (mut resizer, mut scratch) = (Resizer::new(), Vec::new());
    let per = c * s * s;
    for chunk in files.chunks(batch.max(1)) {
        let mut images = vec![0f32; chunk.len() * per];
        for (i, path) in chunk.iter().enumerate() {
            let (pixels, w, h) = mae_data::prepare::load_image(path, side, c)?;
            eval.apply(
                &mut resizer,
                &mut scratch,
                &pixels,
                (w, h),
                0,
                i as u64,
                &mut images[i * per..(i + 1) * per],
            )?;
        }
        f(&images, chunk.len())?;
    }
    Ok(())
}

/// Encoder features of image files (labels −1), in order, computed on `device`:
/// `mae embed --image`.
pub fn extract_files(
    checkpoint: &Path,
    files: &[std::path::PathBuf],
    batch: usize,
    device: crate::device::DeviceKind,
) -> Result<Features, TrainError> {
    let preset = crate::checkpoint::preset_of(checkpoint)?;
    let job = ExtractFiles {
        checkpoint,
        files,
        batch,
    };
    dispatch(preset, device, 0, job)
}

/// Runs the frozen `encoder` over `n` NCHW `images` (no masking) and appends their cls tokens
/// and patch-token means to `out`.
pub(crate) fn push_encoded<P: MaePreset, E: MaeDtype, D: MaeDevice<E>>(
    encoder: &Encoder<P, E, D>,
    images: &[f32],
    n: usize,
    out: &mut Features,
) -> Result<(), TrainError> {
    let tokens = E::into_f32_vec(encoder.forward_features(images, NoneTape)?.as_vec());
    push_pooled(out, &tokens, n);
    Ok(())
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
    /// Receives the progress of the encoder's passes (`features train`, `features val`).
    pub reporter: Reporter,
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

impl Job for Extract<'_> {
    type Output = (Features, Features, usize);
    fn run<P: MaePreset, D: RunDevice>(self, dev: D) -> Result<Self::Output, TrainError> {
        let Extract(input, comm) = self;
        let encoder = load_encoder::<P, D>(
            &mae_core::model_files::open_weights(&input.checkpoint)?.0,
            &dev,
        )?;
        let data = mae_data::Dataset::open(&input.data)?;
        let (batch, report) = (input.batch, input.reporter.0.as_ref());
        match input.precision {
            Precision::F32 => extract_splits(&encoder, &data, batch, (comm, report)),
            Precision::AmpF16 => extract_splits(&to_half(&encoder)?, &data, batch, (comm, report)),
        }
    }
}

/// The features of both splits of `data` through `encoder`, and the number of classes.
fn extract_splits<P: MaePreset, E: MaeDtype, D: MaeDevice<E>>(
    encoder: &Encoder<P, E, D>,
    data: &mae_data::Dataset,
    batch: usize,
    (comm, report): (&crate::dist::Comm, &dyn Observer),
) -> Result<(Features, Features, usize), TrainError> {
    let m = data.manifest();
    let pass =
        |split, what| extract_sharded(encoder, split, m, batch, (comm, Some((report, what))));
    let train = pass(data.train(), "features train")?;
    let val = pass(data.val(), "features val")?;
    Ok((train, val, m.classes.len()))
}

/// Features of both splits, and the number of classes, the encoder's passes shared out over the
/// ranks of `comm` ([`extract_sharded`]; [`crate::dist::Comm::single`] for one process).
pub fn extract_dataset(
    input: &EvalInput,
    comm: &crate::dist::Comm,
) -> Result<(Features, Features, usize), TrainError> {
    input.validate()?;
    let preset = crate::checkpoint::preset_of(&input.checkpoint)?;
    dispatch(preset, input.device, 0, Extract(input, comm))
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

    /// Train and val features and the number of classes, the encoder's work shared out over the
    /// ranks of `comm`.
    pub fn load(
        &self,
        comm: &crate::dist::Comm,
    ) -> Result<(Features, Features, usize), TrainError> {
        match self {
            FeatureSource::Model(input) => extract_dataset(input, comm),
            FeatureSource::Features(path) => read_features(path),
        }
    }
}
