//! One pretraining step on the GPU against the same step on the CPU (built with `--features
//! cuda`, run on a GPU machine by `tools/gpu_check.sh`): the same weights and batch, forward,
//! backward and the training loop's AdamW; loss, every gradient and every updated weight compared,
//! ‖gpu − cpu‖ / ‖cpu‖ ≤ 1e-4 per tensor (f32; dfdx's cuBLAS calls do not use TF32). And the
//! mixed-precision step (`--precision amp-f16`) on the GPU against the f32 step on the CPU, to
//! half precision (≤ 1e-2 per gradient; 2.6e-3 at worst on the CPU, `tests/amp.rs`).
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use mae_core::dfdx::prelude::*;
use mae_core::presets::Tiny;
use mae_core::weights::{named_gradients, named_tensors, NamedTensor};
use mae_core::{tape_from, Mae, MaeDevice, MaePreset, Masking, TensorFile};
use mae_train::amp::{LossScaler, MixedPrecision};
use mae_train::optim::decayed_names;
use mae_train::optim::AdamW;
use rand::{Rng, SeedableRng};

mod common;
use common::worst_rel_err;

type P = Tiny;

fn assert_close(what: &str, gpu: &[NamedTensor], cpu: &[NamedTensor]) {
    assert_close_to(what, gpu, cpu, 1e-4)
}

fn assert_close_to(what: &str, gpu: &[NamedTensor], cpu: &[NamedTensor], tolerance: f64) {
    let (err, name) = worst_rel_err(gpu, cpu);
    assert!(err <= tolerance, "{what} {name}: relative error {err:e}");
}

/// Forward, backward and one AdamW step of `model` on `dev`; returns the loss, the gradients and
/// the updated weights.
fn step<D: MaeDevice>(
    dev: &D,
    model: &mut Mae<P, f32, D>,
    imgs: &[f32],
    masking: &Masking,
) -> (f32, Vec<NamedTensor>, Vec<NamedTensor>) {
    let mut opt = AdamW::new(0.05, decayed_names(model).unwrap());
    let grads = model.alloc_grads();
    let out = model
        .forward(imgs, masking, true, tape_from(dev, grads))
        .unwrap();
    let loss = out.loss.as_vec()[0];
    let mut grads = out.loss.backward();
    let named = named_gradients(model, &grads).unwrap();
    opt.update(model, &mut grads, 1e-3).unwrap();
    (loss, named, named_tensors(model).unwrap())
}

#[test]
fn one_training_step_on_the_gpu_matches_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("init.safetensors");
    let cpu = Cpu::seed_from_u64(0);
    let mut on_cpu = Mae::<P, f32, Cpu>::new(&cpu).unwrap();
    on_cpu.save_safetensors(&weights, &BTreeMap::new()).unwrap();
    let gpu = mae_train::device::cuda_device(0).unwrap();
    let mut on_gpu = Mae::<P, f32, Cuda>::new(&gpu).unwrap();
    on_gpu
        .load_from(&TensorFile::open(&weights).unwrap(), "")
        .unwrap();

    let batch = 16;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let imgs: Vec<f32> = (0..batch * P::image_numel())
        .map(|_| rng.gen::<f32>() * 2.0 - 1.0)
        .collect();
    let masking = Masking::random(&mut rng, batch, P::num_patches(), 0.75).unwrap();

    let (loss_c, grads_c, weights_c) = step(&cpu, &mut on_cpu, &imgs, &masking);
    let (loss_g, grads_g, weights_g) = step(&gpu, &mut on_gpu, &imgs, &masking);
    assert!(
        ((loss_g - loss_c) / loss_c).abs() <= 1e-5,
        "loss: gpu {loss_g}, cpu {loss_c}"
    );
    assert_close("gradient", &grads_g, &grads_c);
    assert_close("weight after AdamW", &weights_g, &weights_c);
}

#[test]
fn one_mixed_precision_step_on_the_gpu_matches_the_f32_step_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("init.safetensors");
    let cpu = Cpu::seed_from_u64(1);
    let mut on_cpu = Mae::<P, f32, Cpu>::new(&cpu).unwrap();
    on_cpu.save_safetensors(&weights, &BTreeMap::new()).unwrap();
    let gpu = mae_train::device::cuda_device(0).unwrap();
    let on_gpu = Mae::<P, f32, Cuda>::new(&gpu).unwrap();
    let mut on_gpu = on_gpu;
    on_gpu
        .load_from(&TensorFile::open(&weights).unwrap(), "")
        .unwrap();

    let batch = 16;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let imgs: Vec<f32> = (0..batch * P::image_numel())
        .map(|_| rng.gen::<f32>() * 2.0 - 1.0)
        .collect();
    let masking = Masking::random(&mut rng, batch, P::num_patches(), 0.75).unwrap();

    let (loss_c, grads_c, _) = step(&cpu, &mut on_cpu, &imgs, &masking);
    let mut amp = MixedPrecision::<Mae<P, f32, Cuda>, Cuda>::new(LossScaler {
        scale: 1024.0,
        ..LossScaler::default()
    });
    let (loss_g, grads) = amp
        .forward_backward(&gpu, &on_gpu, on_gpu.alloc_grads(), 1, |h, tape, scale| {
            Ok(h.forward_scaled(&imgs, &masking, true, scale, tape)?)
        })
        .unwrap();
    assert!(!amp.overflowed(), "overflow at scale 1024");
    assert!(
        ((loss_g - loss_c) / loss_c).abs() <= 5e-3,
        "loss: gpu amp-f16 {loss_g}, cpu f32 {loss_c}"
    );
    let grads_g = named_gradients(&on_gpu, &grads).unwrap();
    assert_close_to("amp-f16 gradient", &grads_g, &grads_c, 1e-2);
}
