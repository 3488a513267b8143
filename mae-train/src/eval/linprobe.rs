//! `mae linprobe`: the linear probe of a frozen encoder, on cached features or on freshly
//! augmented ones every epoch.
//!
//! PyTorch counterpart: `main_linprobe.py` (RandomResizedCrop + flip of the training images, the
//! encoder under `torch.no_grad()`); the head and its optimizer are [`crate::probe`].

use mae_core::MaeDevice;
use serde::Serialize;

use crate::amp::Precision;
use crate::error::TrainError;
use crate::features::FeatureSource;
use crate::probe::{train_probe, LinearProbe, ProbeConfig, ProbeTrainer};

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
}

struct AugmentedProbe<'a> {
    input: &'a crate::features::EvalInput,
    feature: crate::feature_set::FeatureKind,
    cfg: &'a ProbeConfig,
    comm: &'a crate::dist::Comm,
}

impl crate::device::Job for AugmentedProbe<'_> {
    /// The probe, the val features and the number of training images.
    type Output = (LinearProbe, crate::feature_set::Features, usize);
    fn run<P: mae_core::MaePreset, D: crate::device::RunDevice>(
        self,
        dev: D,
    ) -> Result<Self::Output, TrainError> {
        let this = self;
        let input = this.input;
        let encoder = crate::features::load_encoder::<P, D>(
            &mae_core::TensorFile::open(&input.checkpoint)?,
            &dev,
        )?;
        match input.precision {
            Precision::F32 => augmented_probe(&encoder, &this),
            Precision::AmpF16 => augmented_probe(&crate::amp::to_half(&encoder)?, &this),
        }
    }
}

/// The augmented probe's epochs with `encoder` (in its precision): fresh augmented train features
/// every epoch, then the val features.
fn augmented_probe<P: mae_core::MaePreset, E: mae_core::MaeDtype, D: MaeDevice<E>>(
    encoder: &mae_core::Encoder<P, E, D>,
    this: &AugmentedProbe<'_>,
) -> Result<(LinearProbe, crate::feature_set::Features, usize), TrainError> {
    use mae_data::augment::{normalization, Augment, Transform};
    let input = this.input;
    let data = mae_data::Dataset::open(&input.data)?;
    let m = data.manifest();
    let (mean, std) = normalization(m, false);
    // main_linprobe.py: RandomResizedCrop(224, interpolation=3) (scale 0.08–1) + flip
    let crop = Transform::Pretrain {
        scale: (0.08, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        hflip: true,
    };
    let augment = Augment::new(crop, P::IMG_SIZE, &mean, &std, this.cfg.seed)?;
    let dim = <P::Encoder as mae_core::TransformerDims>::DIM;
    let mut trainer = ProbeTrainer::new(dim, m.classes.len(), this.cfg)?;
    for epoch in 0..this.cfg.epochs {
        let f = crate::features::extract_sharded(
            encoder,
            data.train(),
            m,
            &augment,
            epoch as u64,
            input.batch,
            this.comm,
        )?;
        trainer.epoch(epoch, f.select(this.feature), &f.labels)?;
    }
    let eval = crate::features::eval_augment::<P>(m)?;
    let val =
        crate::features::extract_sharded(encoder, data.val(), m, &eval, 0, input.batch, this.comm)?;
    Ok((trainer.finish(), val, data.train().len()))
}

/// `mae linprobe`: a probe trained on the train split (on cached features, or on fresh augmented
/// ones every epoch), top-1/top-5 on the val split, as one rank of `comm` ([`crate::dist::Comm::single`]
/// for one process): the encoder's passes over the images (the costly part) are shared out over
/// the ranks and the features all-gathered; every rank then trains the same probe on the same
/// features (it takes seconds), so all ranks end with the same result, which rank 0 reports.
pub fn linprobe(
    input: &FeatureSource,
    feature: crate::feature_set::FeatureKind,
    cfg: &ProbeConfig,
    comm: &crate::dist::Comm,
) -> Result<ProbeResult, TrainError> {
    cfg.validate()?;
    input.validate()?;
    let (probe, val, train_len) = match input {
        FeatureSource::Model(model) if cfg.augment => {
            let preset = crate::checkpoint::preset_of(&model.checkpoint)?;
            let job = AugmentedProbe {
                input: model,
                feature,
                cfg,
                comm,
            };
            crate::device::dispatch(preset, model.device, cfg.seed, job)?
        }
        _ => {
            if cfg.augment {
                return Err(TrainError::Config(
                    "an augmented probe needs the encoder and the images (--checkpoint and --data), not cached features".into(),
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
            (probe, val, train.len())
        }
    };
    if val.is_empty() {
        return Err(TrainError::Config("the validation split is empty".into()));
    }
    let acc = probe.evaluate(val.select(feature), &val.labels);
    Ok(ProbeResult {
        top1: acc.top1,
        top5: acc.top5,
        feature: feature.name().into(),
        config: *cfg,
        train: train_len,
        val: val.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
