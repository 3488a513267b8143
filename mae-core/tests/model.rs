//! Behaviour of the model around the parity-tested core: tapes, feature extraction, and inputs that
//! do not fit.
#![allow(clippy::unwrap_used)]

use mae_core::dfdx::optim::{Adam, AdamConfig, Optimizer};
use mae_core::dfdx::prelude::*;
use mae_core::presets::Parity;
use mae_core::{tape_from, Mae, MaeError, MaePreset, Masking};
use rand::{Rng, SeedableRng};

type Model = Mae<Parity, f32, Cpu>;

fn setup(batch: usize) -> (Cpu, Model, Vec<f32>) {
    let dev = Cpu::seed_from_u64(11);
    let model = Model::new(&dev).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let imgs = (0..batch * Parity::image_numel())
        .map(|_| rng.gen::<f32>() - 0.5)
        .collect();
    (dev, model, imgs)
}

#[test]
fn forward_is_the_same_with_and_without_a_tape() {
    let (dev, model, imgs) = setup(3);
    let masking = Masking::random(&mut rand::rngs::StdRng::seed_from_u64(1), 3, 64, 0.75).unwrap();
    let a = model.forward(&imgs, &masking, true, NoneTape).unwrap();
    let b = model
        .forward(&imgs, &masking, true, tape_from(&dev, model.alloc_grads()))
        .unwrap();
    assert_eq!(a.loss.array(), b.loss.array());
    assert_eq!(a.pred.as_vec(), b.pred.as_vec());
    assert_eq!(a.latent.shape(), &(3, 17, Const::<48>));
    assert_eq!(a.pred.shape(), &(3, 64, Const::<48>));
    assert!(a.loss.array() > 0.0);
}

#[test]
fn features_cover_every_patch_and_match_a_keep_all_masking() {
    let (_, model, imgs) = setup(2);
    let features = model.encoder.forward_features(&imgs, NoneTape).unwrap();
    assert_eq!(features.shape(), &(2, 65, Const::<48>));
    let all = Masking::keep_all(2, 64);
    let masked = model.encoder.forward_masked(&imgs, &all, NoneTape).unwrap();
    assert_eq!(features.as_vec(), masked.as_vec());
    // ratio 0 encodes every patch, but there is nothing to reconstruct
    let zero = Masking::random(&mut rand::thread_rng(), 2, 64, 0.0).unwrap();
    assert_eq!(zero.len_keep, 64);
    assert!(matches!(
        model.forward(&imgs, &zero, false, NoneTape),
        Err(MaeError::NothingMasked)
    ));
}

#[test]
fn inputs_that_do_not_fit_are_errors() {
    let (_, model, imgs) = setup(2);
    let masking = Masking::random(&mut rand::thread_rng(), 2, 64, 0.75).unwrap();
    let err = model
        .forward(&imgs[..100], &masking, false, NoneTape)
        .unwrap_err();
    assert!(err.to_string().contains("3×32×32"), "{err}");
    let three = Masking::random(&mut rand::thread_rng(), 3, 64, 0.75).unwrap();
    let err = model.forward(&imgs, &three, false, NoneTape).unwrap_err();
    assert!(
        matches!(
            err,
            MaeError::InputShape {
                what: "masking",
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        model.forward_with_noise(&imgs, &[0.5; 128], 1.0, false, NoneTape),
        Err(MaeError::MaskRatio(_))
    ));
    assert!(model
        .forward_with_noise(&imgs, &[0.5; 127], 0.75, false, NoneTape)
        .is_err());
}

#[test]
fn a_training_step_lowers_the_loss() {
    let (dev, mut model, imgs) = setup(4);
    let masking = Masking::random(&mut rand::rngs::StdRng::seed_from_u64(2), 4, 64, 0.75).unwrap();
    let mut opt = Adam::new(
        &model,
        AdamConfig {
            lr: 1e-3,
            ..Default::default()
        },
    );
    let mut losses = Vec::new();
    for _ in 0..5 {
        let out = model
            .forward(&imgs, &masking, false, tape_from(&dev, model.alloc_grads()))
            .unwrap();
        losses.push(out.loss.array());
        let grads = out.loss.backward();
        opt.update(&mut model, &grads).unwrap();
    }
    assert!(losses[4] < 0.9 * losses[0], "{losses:?}");
}
