//! `mae linprobe`: the linear probe of a frozen encoder, on cached features or on freshly
//! augmented images (a training run on the engine, [`crate::probing`]).
//!
//! PyTorch counterpart: `main_linprobe.py` (RandomResizedCrop + flip of the training images, the
//! encoder under `torch.no_grad()`); the head and its optimizers are [`crate::probe`].

use crate::run::progress::Hooks;
use std::path::PathBuf;

use serde::Serialize;

use crate::dist::Comm;
use crate::error::TrainError;
use crate::feature_set::{FeatureKind, Features};
use crate::features::{EvalInput, FeatureSource};
use crate::probe::{train_probe, LinearProbe, ProbeConfig};
use crate::probing::{train_linprobe, LinprobeConfig};
use crate::run::Resume;

/// Whether the probe augments: as asked (`--aug` / `--no-aug`), else on for an encoder over a
/// dataset of images of 32×32 and up, off for smaller images and for cached features (`mae
/// embed` output, which has no images to crop).
pub fn resolve_augment(input: &FeatureSource, asked: Option<bool>) -> Result<bool, TrainError> {
    match (asked, input) {
        (Some(augment), _) => Ok(augment),
        (None, FeatureSource::Features(_)) => Ok(false),
        (None, FeatureSource::Model(m)) => {
            Ok(mae_data::dataset::read_manifest(&m.data)?.image_size >= AUGMENT_FROM_SIZE)
        }
    }
}

/// The smallest image size the probe augments by default: crops of smaller images lose too
/// much of them.
pub const AUGMENT_FROM_SIZE: usize = 32;

/// What `mae linprobe` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Top-1 on the validation split, %.
    pub top1: f64,
    /// Top-5 on the validation split, %.
    pub top5: f64,
    /// `cls` or `avg`.
    pub feature: String,
    /// The settings.
    pub config: ProbeConfig,
    /// Training and validation samples.
    pub train: usize,
    /// Validation samples.
    pub val: usize,
    /// How the training ended (`Finished`; an augmented run also `Interrupted`, its head
    /// evaluated where it stopped).
    pub outcome: String,
    /// Optimizer steps done.
    pub step: u64,
    /// The augmented run's newest checkpoint (in its run folder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
}

/// Where an augmented probe runs: its run folder (checkpoints of the head, `metrics.jsonl`,
/// `results.json`; a temporary folder, removed after, when there is none), where it resumes
/// from, the flag that stops it (set from a signal handler: it saves and stops) and the observer
/// of its progress.
#[derive(Debug, Clone)]
pub struct ProbeRunPlace {
    /// `--out`.
    pub out: Option<PathBuf>,
    /// `--resume`.
    pub resume: Resume,
    /// The stop flag (polled after every optimizer step) and the observer of the run.
    pub hooks: Hooks,
    /// TensorBoard event files in the run folder (`--tensorboard false` turns them off).
    pub tensorboard: bool,
}

impl Default for ProbeRunPlace {
    /// No folder of its own, a fresh run, never stopped, TensorBoard files written.
    fn default() -> Self {
        ProbeRunPlace {
            out: None,
            resume: Resume::No,
            hooks: Hooks::default(),
            tensorboard: true,
        }
    }
}

/// `mae linprobe`: a probe trained on the train split, top-1/top-5 on the val split, as one rank
/// of `comm` ([`Comm::single`] for one process). On cached features (`cfg.augment` false): the
/// encoder's passes over the images (the costly part) are shared out over the ranks and the
/// features all-gathered; every rank then trains the same probe on the same features (it takes
/// seconds). Augmented: a training run on the engine ([`crate::probing`]) in `place`. All ranks
/// end with a result; rank 0's is the one to report.
pub fn linprobe(
    input: &FeatureSource,
    feature: FeatureKind,
    cfg: &ProbeConfig,
    place: &ProbeRunPlace,
    comm: &Comm,
) -> Result<ProbeResult, TrainError> {
    cfg.validate()?;
    input.validate()?;
    if cfg.augment {
        let FeatureSource::Model(model) = input else {
            return Err(TrainError::Config(
                "an augmented probe needs the encoder and the images (--checkpoint and --data), not cached features".into(),
            ));
        };
        return augmented(model, feature, cfg, place, comm);
    }
    if place.out.is_some() || place.resume != Resume::No {
        return Err(TrainError::Config(
            "--out and --resume are for the augmented probe (--aug), a training run with checkpoints; the probe on cached features trains in seconds and writes its results file only".into(),
        ));
    }
    let (train, val, classes) = input.load(comm)?;
    let probe = train_probe(
        train.select(feature),
        &train.labels,
        train.dim,
        classes,
        cfg,
    )?;
    let groups = train.len().div_ceil(cfg.batch_size) / cfg.accum_iter;
    let steps = groups as u64 * cfg.epochs as u64;
    let run = (String::from("Finished"), steps, None);
    result(&probe, &val, feature, cfg, train.len(), run)
}

/// The augmented probe of `model`'s encoder, run in `place` (or a temporary folder).
fn augmented(
    model: &EvalInput,
    feature: FeatureKind,
    cfg: &ProbeConfig,
    place: &ProbeRunPlace,
    comm: &Comm,
) -> Result<ProbeResult, TrainError> {
    let temp;
    let out = match &place.out {
        Some(out) => out.clone(),
        None if place.resume != Resume::No => {
            return Err(TrainError::Config(
                "--resume needs --out, the run folder to resume".into(),
            ))
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("mae-linprobe-")
                .tempdir()
                .map_err(|e| TrainError::io(std::env::temp_dir(), e))?;
            temp.path().to_path_buf()
        }
    };
    let config = LinprobeConfig {
        checkpoint: model.checkpoint.clone(),
        data: model.data.clone(),
        out,
        feature,
        probe: *cfg,
        eval_batch_size: model.batch,
        device: model.device,
        precision: model.precision,
        world_size: comm.world_size(),
        tensorboard: place.tensorboard,
    };
    let run = train_linprobe(&config, &place.resume, place.hooks.clone(), comm)?;
    let s = &run.summary;
    let outcome = (format!("{:?}", s.outcome), s.step, s.checkpoint.clone());
    let result = result(
        &run.probe,
        &run.val,
        feature,
        cfg,
        run.train_images,
        outcome,
    )?;
    if comm.is_main() && place.out.is_some() {
        crate::rundir::write_results(&config.out, &result)?;
    }
    Ok(result)
}

/// The probe's accuracy on `val` and what the run was.
fn result(
    probe: &LinearProbe,
    val: &Features,
    feature: FeatureKind,
    cfg: &ProbeConfig,
    train: usize,
    (outcome, step, checkpoint): (String, u64, Option<PathBuf>),
) -> Result<ProbeResult, TrainError> {
    if val.is_empty() {
        return Err(TrainError::Config("the validation split is empty".into()));
    }
    let acc = probe.evaluate(val.select(feature), &val.labels);
    Ok(ProbeResult {
        top1: acc.top1,
        top5: acc.top5,
        feature: feature.name().into(),
        config: *cfg,
        train,
        val: val.len(),
        outcome,
        step,
        checkpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amp::Precision;

    #[test]
    fn the_probe_augments_images_of_32_and_up_unless_told() {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = |data: std::path::PathBuf| {
            FeatureSource::Model(crate::features::EvalInput {
                checkpoint: "c".into(),
                data,
                batch: 8,
                device: crate::device::DeviceKind::Cpu,
                precision: Precision::F32,
                reporter: Default::default(),
            })
        };
        for (size, expected) in [(28, false), (32, true)] {
            let data = dir.path().join(format!("d{size}"));
            let mut w =
                mae_data::writer::DatasetWriter::create(&data, size, 1, false).expect("writer");
            let pixels = vec![0u8; size * size];
            w.push(mae_data::SplitName::Train, &pixels, 0)
                .expect("push");
            w.finish(vec!["a".into()], "synthetic".into(), Vec::new())
                .expect("finish");
            let input = model(data);
            assert_eq!(
                resolve_augment(&input, None).expect("reads"),
                expected,
                "{size}"
            );
            assert!(!resolve_augment(&input, Some(false)).expect("as told"));
            assert!(resolve_augment(&input, Some(true)).expect("as told"));
        }
        let cached = FeatureSource::Features("f.safetensors".into());
        assert!(!resolve_augment(&cached, None).expect("no images"));
        let missing = model(dir.path().join("nowhere"));
        assert!(resolve_augment(&missing, None).is_err());
    }
}
