//! Top-1/top-5 of a classifier on a dataset's validation split.
//!
//! PyTorch counterpart: `engine_finetune.evaluate` and `main_finetune.py --eval` (the evaluation
//! transform, no randomness): after every fine-tuning epoch, and for a classifier file (ours, or
//! official / timm fine-tuned weights in safetensors under the same names).

use mae_core::device::MaeDevice;
use mae_core::dfdx::prelude::*;
use mae_core::{Classifier, MaePreset, Preset};
use mae_data::{Dataset, Split};

use crate::checkpoint;
use crate::device::{dispatch, Job, RunDevice};
use crate::error::TrainError;
use crate::features::{check_channels, for_each_eval_batch};
use crate::knn::{topk_hits, Accuracy};

/// Top-1/top-5 of a classifier on a split (evaluation transform, no randomness).
pub fn evaluate<P: MaePreset, D: MaeDevice>(
    model: &Classifier<P, D>,
    split: &Split,
    manifest: &mae_data::Manifest,
    batch: usize,
) -> Result<Accuracy, TrainError> {
    check_channels::<P>(manifest)?;
    let classes = model.num_classes();
    let (mut top1, mut top5, mut n) = (0usize, 0usize, 0usize);
    for_each_eval_batch(split, manifest, P::IMG_SIZE, batch, |images, labels| {
        let logits = model.forward(images, &[], NoneTape)?.as_vec();
        let (a, b) = topk_hits(&logits, labels, classes);
        top1 += a;
        top5 += b;
        n += labels.len();
        Ok(())
    })?;
    let n = n.max(1) as f64;
    Ok(Accuracy {
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
    })
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
        let classes = file
            .shape("head.bias")?
            .and_then(|s| s.first().copied())
            .ok_or_else(|| {
                TrainError::checkpoint(
                    this.checkpoint,
                    "no `head.bias`: not a fine-tuned classifier (use mae knn / linprobe for an MAE checkpoint)",
                )
            })?;
        let mut model = Classifier::<P, D>::new(&dev, classes)?;
        model.load_from(&file, "")?;
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
