//! Top-1/top-5 of a classifier on a dataset's validation split.
//!
//! PyTorch counterpart: `engine_finetune.evaluate` and `main_finetune.py --eval` (the evaluation
//! transform, no randomness): after every fine-tuning epoch, and for a classifier file (ours, the
//! released `mae_finetuned_vit_*.pth`, timm's ViTs), whichever head it has.

use mae_core::device::MaeDevice;
use mae_core::dfdx::prelude::*;
use mae_core::{Classifier, ClassifierLayout, MaePreset, Preset};
use mae_data::{Dataset, Split};

use crate::checkpoint;
use crate::device::{dispatch, Job, RunDevice};
use crate::error::TrainError;
use crate::features::{check_channels, for_each_eval_batch_in, shard_range};
use crate::knn::{topk_hits, Accuracy};

/// Top-1/top-5 of a classifier on a split (evaluation transform, no randomness).
pub fn evaluate<P: MaePreset, D: MaeDevice>(
    model: &Classifier<P, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    batch: usize,
) -> Result<Accuracy, TrainError> {
    let [top1, top5, n] = hits(model, split, manifest, batch, 0..split.len())?;
    Ok(accuracy(top1, top5, n))
}

/// [`evaluate`] with the split shared out over the ranks of `comm` (`main_finetune.py
/// --dist_eval`): each rank classifies its contiguous share and the hit counts are summed, so
/// every image counts once (no padding duplicates as with a `DistributedSampler`). Collective.
pub fn evaluate_sharded<P: MaePreset, D: MaeDevice>(
    model: &Classifier<P, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    batch: usize,
    comm: &crate::dist::Comm,
) -> Result<Accuracy, TrainError> {
    let range = shard_range(split.len(), comm.world_size(), comm.rank());
    let mine = hits(model, split, manifest, batch, range)?;
    // counts as f32: exact below 2^24 images
    let send = mine.map(|v| v as f32);
    let mut all = [0f32; 3];
    comm.all_reduce_sum(&send, &mut all)?;
    let [top1, top5, n] = all.map(|v| v as usize);
    Ok(accuracy(top1, top5, n))
}

/// Top-1 and top-5 hits and the number of images of the samples `range` of `split`.
fn hits<P: MaePreset, D: MaeDevice>(
    model: &Classifier<P, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    batch: usize,
    range: std::ops::Range<usize>,
) -> Result<[usize; 3], TrainError> {
    check_channels::<P>(manifest)?;
    let classes = model.num_classes();
    let (mut top1, mut top5, mut n) = (0usize, 0usize, 0usize);
    for_each_eval_batch_in(
        split,
        manifest,
        P::IMG_SIZE,
        batch,
        range,
        |images, labels| {
            let logits = model.forward(images, &[], NoneTape)?.as_vec();
            let (a, b) = topk_hits(&logits, labels, classes);
            top1 += a;
            top5 += b;
            n += labels.len();
            Ok(())
        },
    )?;
    Ok([top1, top5, n])
}

fn accuracy(top1: usize, top5: usize, n: usize) -> Accuracy {
    let n = n.max(1) as f64;
    Accuracy {
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
    }
}

/// The classifier in `file` (opened from `path`), with the head it has: its class count and its
/// pooling (`fc_norm`: global pool, `norm`: cls token), loaded strictly; a file without a head is
/// an error saying what to use instead.
pub fn load_classifier<P: MaePreset, D: MaeDevice>(
    dev: &D,
    path: &std::path::Path,
    file: &mae_core::TensorFile,
) -> Result<Classifier<P, D>, TrainError> {
    let layout = ClassifierLayout::of_file(file)?.ok_or_else(|| {
        TrainError::checkpoint(
            path,
            "no `head.bias`: not a fine-tuned classifier (use mae knn / linprobe for an MAE checkpoint)",
        )
    })?;
    Ok(Classifier::<P, D>::from_file(dev, file, layout)?)
}

struct EvaluateFile<'a> {
    checkpoint: &'a std::path::Path,
    data: &'a std::path::Path,
    batch: usize,
}

impl Job for EvaluateFile<'_> {
    type Output = Accuracy;
    fn run<P: MaePreset, D: RunDevice>(self, dev: D) -> Result<Accuracy, TrainError> {
        let this = self;
        let (file, _) = mae_core::model_files::open_weights(this.checkpoint)?;
        let model = load_classifier::<P, D>(&dev, this.checkpoint, &file)?;
        let classes = model.num_classes();
        let data = Dataset::open(this.data)?;
        if data.manifest().classes.len() != classes {
            return Err(TrainError::Config(format!(
                "{} has {classes} classes, {} has {}",
                this.checkpoint.display(),
                this.data.display(),
                data.manifest().classes.len()
            )));
        }
        evaluate(&model, data.val(), data.manifest(), this.batch)
    }
}

/// `main_finetune.py --eval`: top-1/top-5 of a fine-tuned classifier file (ours, or official /
/// timm fine-tuned weights in safetensors under the same names) on a dataset's val split. The
/// preset comes from the file's metadata unless given.
pub fn evaluate_file(
    checkpoint: &std::path::Path,
    preset: Option<Preset>,
    data: &std::path::Path,
    batch: usize,
    device: crate::device::DeviceKind,
) -> Result<Accuracy, TrainError> {
    let preset = match preset {
        Some(p) => p,
        None => checkpoint::preset_of(checkpoint)?,
    };
    crate::config::check_count("eval-batch-size", batch, 1, crate::config::MAX_BATCH)?;
    let job = EvaluateFile {
        checkpoint,
        data,
        batch,
    };
    dispatch(preset, device, 0, job)
}

/// ImageNet-1k's class names in label order (torchvision's `_IMAGENET_CATEGORIES`, the order of
/// the released fine-tuned heads and of `torchvision.datasets.ImageFolder` on the synset folders).
pub const IMAGENET_CLASSES: &str = include_str!("../../assets/imagenet1k_classes.txt");

/// The largest class-names file read: well above any real list.
const MAX_NAMES_FILE: u64 = 16 << 20;

/// One image's most likely classes, most likely first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The image file.
    pub image: std::path::PathBuf,
    /// `(class index, name, softmax probability)`, best first.
    pub top: Vec<TopClass>,
}

/// A class and its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopClass {
    /// Index into the head.
    pub class: usize,
    /// Its name.
    pub name: String,
    /// Softmax probability, 0–1.
    pub probability: f64,
}

/// The `k` largest softmax probabilities of one row of logits, best first (ties by index).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|c| (c, exp[c] / sum))
        .collect()
}

/// Class names, one per line (a trailing empty line allowed), exactly `classes` of them.
pub fn read_class_names(path: &std::path::Path, classes: usize) -> Result<Vec<String>, TrainError> {
    use std::io::Read;
    let bad = |message: String| TrainError::ConfigFile {
        path: path.to_path_buf(),
        message,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_NAMES_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| TrainError::io(path, e))?;
    if bytes.len() as u64 > MAX_NAMES_FILE {
        return Err(bad(format!(
            "over {} MiB: not a list of class names",
            MAX_NAMES_FILE >> 20
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    let names = parse_names(&text);
    if names.len() != classes {
        return Err(bad(format!(
            "{} names for a head of {classes} classes (one name per line)",
            names.len()
        )));
    }
    Ok(names)
}

fn parse_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    if names.last().is_some_and(String::is_empty) {
        names.pop();
    }
    names
}

/// The names of a head of `classes` classes: from `names_file` when given, else those of the
/// dataset the checkpoint was fine-tuned on (ours), else ImageNet's for a 1000-class head, else
/// `class K`.
pub fn class_names(
    file: &mae_core::TensorFile,
    classes: usize,
    names_file: Option<&std::path::Path>,
) -> Result<Vec<String>, TrainError> {
    if let Some(path) = names_file {
        return read_class_names(path, classes);
    }
    if let Some(m) = crate::features::training_manifest(file)? {
        if m.classes.len() == classes {
            return Ok(m.classes);
        }
    }
    if classes == 1000 {
        return Ok(parse_names(IMAGENET_CLASSES));
    }
    Ok((0..classes).map(|k| format!("class {k}")).collect())
}

struct ClassifyFiles<'a> {
    checkpoint: &'a std::path::Path,
    files: &'a [std::path::PathBuf],
    names: Option<&'a std::path::Path>,
    top: usize,
    batch: usize,
}

impl Job for ClassifyFiles<'_> {
    type Output = Vec<Prediction>;
    fn run<P: MaePreset, D: RunDevice>(self, dev: D) -> Result<Vec<Prediction>, TrainError> {
        let (file, _) = mae_core::model_files::open_weights(self.checkpoint)?;
        let model = load_classifier::<P, D>(&dev, self.checkpoint, &file)?;
        let classes = model.num_classes();
        let names = class_names(&file, classes, self.names)?;
        let mut out = Vec::with_capacity(self.files.len());
        let mut paths = self.files.iter();
        crate::features::for_each_file_batch::<P>(&file, self.files, self.batch, |images, _| {
            let logits = model.forward(images, &[], NoneTape)?.as_vec();
            for (row, image) in logits.chunks_exact(classes).zip(paths.by_ref()) {
                let top = top_k(row, self.top)
                    .into_iter()
                    .map(|(class, probability)| TopClass {
                        class,
                        name: names[class].clone(),
                        probability,
                    })
                    .collect();
                out.push(Prediction {
                    image: image.clone(),
                    top,
                });
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// `mae classify`: the `top` most likely classes of each image file under a fine-tuned
/// classifier (ours, the released `mae_finetuned_vit_*.pth`, timm's), with the evaluation
/// transform; names as [`class_names`] finds them. The preset comes from the file unless given.
pub fn classify_files(
    checkpoint: &std::path::Path,
    preset: Option<Preset>,
    files: &[std::path::PathBuf],
    names: Option<&std::path::Path>,
    top: usize,
    device: crate::device::DeviceKind,
) -> Result<Vec<Prediction>, TrainError> {
    crate::config::check_count("top", top, 1, usize::MAX)?;
    let preset = match preset {
        Some(p) => p,
        None => checkpoint::preset_of(checkpoint)?,
    };
    let job = ClassifyFiles {
        checkpoint,
        files,
        names,
        top,
        batch: 32,
    };
    dispatch(preset, device, 0, job)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_the_softmax_best_first() {
        let top = top_k(&[0.0, 2.0, 1.0, 2.0], 3);
        assert_eq!(
            top.iter().map(|t| t.0).collect::<Vec<_>>(),
            [1, 3, 2],
            "ties by index"
        );
        let z = 1.0 + 2.0 * 2f64.exp() + 1f64.exp();
        assert!((top[0].1 - 2f64.exp() / z).abs() < 1e-12);
        assert!((top[2].1 - 1f64.exp() / z).abs() < 1e-12);
        assert_eq!(top_k(&[1.0, 0.0], 5).len(), 2);
    }

    #[test]
    fn the_imagenet_names_are_the_thousand_in_label_order() {
        let names = parse_names(IMAGENET_CLASSES);
        assert_eq!(names.len(), 1000);
        assert_eq!(names[0], "tench");
        assert_eq!(names[1], "goldfish");
        assert_eq!(names[999], "toilet tissue");
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), 1000);
    }

    #[test]
    fn a_names_file_must_fit_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("names.txt");
        std::fs::write(&path, "cat\r\ndog\n").unwrap();
        assert_eq!(read_class_names(&path, 2).unwrap(), ["cat", "dog"]);
        let err = read_class_names(&path, 3).unwrap_err().to_string();
        assert!(
            err.contains("names.txt") && err.contains("2 names for a head of 3"),
            "{err}"
        );
        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        let err = read_class_names(&path, 1).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
        let err = read_class_names(&dir.path().join("missing.txt"), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.txt"), "{err}");
    }
}
