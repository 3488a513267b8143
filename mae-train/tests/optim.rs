//! The optimizer against a hand computation, its parameter groups, and gradient accumulation.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use mae_core::dfdx::prelude::*;
use mae_core::presets::Parity;
use mae_core::weights::{named_gradients, named_tensors};
use mae_core::{tape_from, Mae, MaePreset, Masking};
use mae_train::optim::decayed_names;
use mae_train::optim::AdamW;
use rand::{Rng, SeedableRng};

type Model = Mae<Parity, f32, Cpu>;

fn by_name(model: &Model) -> BTreeMap<String, Vec<f32>> {
    named_tensors(model)
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.data))
        .collect()
}

fn images(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n * Parity::image_numel())
        .map(|_| rng.gen::<f32>() - 0.5)
        .collect()
}

#[test]
fn parameter_groups_follow_the_official_rule() {
    let model = Model::new(&Cpu::seed_from_u64(0)).unwrap();
    let decayed = decayed_names(&model).unwrap();
    for name in [
        "blocks.0.attn.qkv.weight",
        "patch_embed.proj.weight",
        "cls_token",
        "mask_token",
        "decoder_pred.weight",
    ] {
        assert!(decayed.contains(name), "{name} should decay");
    }
    for name in [
        "blocks.0.attn.qkv.bias",
        "norm.weight",
        "blocks.1.norm1.weight",
        "decoder_norm.bias",
        "pos_embed",
    ] {
        assert!(!decayed.contains(name), "{name} should not decay");
    }
}

/// Two AdamW steps, checked element by element against the formula computed here in f64.
#[test]
fn two_steps_match_a_hand_computation() {
    let dev = Cpu::seed_from_u64(1);
    let mut model = Model::new(&dev).unwrap();
    let mut opt = AdamW::new(0.05, decayed_names(&model).unwrap());
    let imgs = images(2, 3);
    let masking = Masking::random(&mut rand::rngs::StdRng::seed_from_u64(4), 2, 64, 0.75).unwrap();

    let (b1, b2, eps, wd) = (0.9f64, 0.95f64, 1e-8f64, 0.05f64);
    let mut m: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut v: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (t, lr) in [(1, 1e-3f64), (2, 5e-4)] {
        let before = by_name(&model);
        let out = model
            .forward(&imgs, &masking, true, tape_from(&dev, model.alloc_grads()))
            .unwrap();
        let mut grads = out.loss.backward();
        let g: BTreeMap<String, Vec<f32>> = named_gradients(&model, &grads)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.data))
            .collect();
        opt.update(&mut model, &mut grads, lr).unwrap();
        let after = by_name(&model);
        for name in [
            "blocks.0.mlp.fc1.weight",
            "blocks.0.mlp.fc1.bias",
            "cls_token",
            "norm.weight",
        ] {
            let decay = if opt.decayed.contains(name) { wd } else { 0.0 };
            let gs = &g[name];
            let mm = m.entry(name.into()).or_insert(vec![0.0; gs.len()]);
            let vv = v.entry(name.into()).or_insert(vec![0.0; gs.len()]);
            for i in 0..gs.len() {
                let gi = gs[i] as f64;
                mm[i] = b1 * mm[i] + (1.0 - b1) * gi;
                vv[i] = b2 * vv[i] + (1.0 - b2) * gi * gi;
                let m_hat = mm[i] / (1.0 - b1.powi(t));
                let v_hat = vv[i] / (1.0 - b2.powi(t));
                let p =
                    before[name][i] as f64 * (1.0 - lr * decay) - lr * m_hat / (v_hat.sqrt() + eps);
                let got = after[name][i] as f64;
                assert!(
                    (got - p).abs() <= 1e-6 * p.abs().max(1e-3),
                    "{name}[{i}] step {t}: {got} vs {p}"
                );
            }
        }
        // the fixed position embedding never moves
        assert_eq!(before["pos_embed"], after["pos_embed"]);
    }
    assert_eq!(opt.step, 2);
}

/// K micro-batches with the loss divided by K give the same update as one batch K times larger
/// (every image masks the same number of patches, so the batch loss is the mean of the halves').
#[test]
fn gradient_accumulation_equals_a_larger_batch() {
    let dev = Cpu::seed_from_u64(2);
    let base = Model::new(&dev).unwrap();
    let imgs = images(4, 5);
    let noise: Vec<f32> = {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        (0..4 * 64).map(|_| rng.gen()).collect()
    };
    let full_mask = Masking::from_noise(&noise, 4, 64, 0.75).unwrap();
    let half = |i: usize| Masking::from_noise(&noise[i * 128..(i + 1) * 128], 2, 64, 0.75).unwrap();
    let per_image = Parity::image_numel();

    // one batch of 4
    let mut big = base.clone();
    let mut opt_big = AdamW::new(0.05, decayed_names(&big).unwrap());
    let out = big
        .forward(&imgs, &full_mask, false, tape_from(&dev, big.alloc_grads()))
        .unwrap();
    let mut grads = out.loss.backward();
    let big_grads: BTreeMap<String, Vec<f32>> = named_gradients(&big, &grads)
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.data))
        .collect();
    // dfdx's clone shares storage: copy the starting weights before updating
    let start = by_name(&base);
    opt_big.update(&mut big, &mut grads, 1e-3).unwrap();
    let after_big = by_name(&big);

    // two micro-batches of 2, accumulated
    let mut acc = Model::new(&dev).unwrap();
    let start_tensors = named_tensors(&base).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("start.safetensors");
    mae_core::weights::write_safetensors(&file, &start_tensors, &Default::default()).unwrap();
    acc.load_safetensors(&file).unwrap();
    assert_eq!(by_name(&acc), start);
    let mut opt_acc = AdamW::new(0.05, decayed_names(&acc).unwrap());
    let mut grads = acc.alloc_grads();
    for i in 0..2 {
        let out = acc
            .forward(
                &imgs[i * 2 * per_image..(i + 1) * 2 * per_image],
                &half(i),
                false,
                tape_from(&dev, grads),
            )
            .unwrap();
        grads = (out.loss / 2.0).backward();
    }
    // the accumulated gradient is the big batch's (Adam alone would hide a scale error)
    for g in named_gradients(&acc, &grads).unwrap() {
        let reference = &big_grads[&g.name];
        let diff: f64 = g
            .data
            .iter()
            .zip(reference)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = reference
            .iter()
            .map(|b| (*b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            diff <= 1e-5 * norm + 1e-12,
            "{}: gradient differs ({diff} vs norm {norm})",
            g.name
        );
    }
    opt_acc.update(&mut acc, &mut grads, 1e-3).unwrap();
    let after_acc = by_name(&acc);
    for (name, a) in &after_big {
        let b = &after_acc[name];
        // The key third of `qkv.bias` has a gradient that is exactly zero in exact arithmetic
        // (it adds the same q·b_k to every score of a query's row, which softmax ignores), so
        // both runs hold rounding noise there, and Adam's first step turns any noise into ±lr.
        // Those elements say nothing about accumulation: compare the q and v thirds only.
        let keep = |i: usize| !name.ends_with("attn.qkv.bias") || i / (a.len() / 3) != 1;
        let moved: f64 = a
            .iter()
            .zip(&start[name])
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, (x, y))| ((x - y) as f64).abs())
            .sum();
        let diff: f64 = a
            .iter()
            .zip(b)
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, (x, y))| ((x - y) as f64).abs())
            .sum();
        assert!(
            diff <= 1e-4 * moved.max(1e-9) + 1e-9,
            "{name}: diff {diff} vs update {moved}"
        );
    }
}

/// The step as dfdx ops with the moments on the device (what `Cuda` runs) against the host step:
/// two steps on the same gradients, the moments read back, put back through the host, and a
/// third step.
#[test]
fn the_device_path_matches_the_host_path() {
    let fresh = || Model::new(&Cpu::seed_from_u64(3)).unwrap();
    let (mut host, mut device) = (fresh(), fresh());
    let start = by_name(&host);
    assert_eq!(start, by_name(&device));
    let dev = Cpu::seed_from_u64(4);
    let noise: Vec<f32> = {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..2 * 64).map(|_| rng.gen()).collect()
    };
    let masking = Masking::from_noise(&noise, 2, 64, 0.75).unwrap();
    let imgs = images(2, 8);
    let gradients = |model: &Model| {
        let out = model
            .forward(&imgs, &masking, true, tape_from(&dev, model.alloc_grads()))
            .unwrap();
        out.loss.backward()
    };
    let (mut g_host, mut g_device) = (gradients(&host), gradients(&device));
    let mut opt_host = AdamW::new(0.05, decayed_names(&host).unwrap());
    let mut opt_device = AdamW::new(0.05, decayed_names(&device).unwrap());
    opt_host.lr_scale.insert("norm.weight".into(), 0.5);
    opt_device.lr_scale.insert("norm.weight".into(), 0.5);

    let compare = |a: &Model, b: &Model, what: &str| {
        let (a, b) = (by_name(a), by_name(b));
        for (name, x) in &a {
            for (i, (p, q)) in x.iter().zip(&b[name]).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-6 * p.abs().max(1e-3),
                    "{what}: {name}[{i}] {p} vs {q}"
                );
            }
        }
    };
    for lr in [1e-3, 2e-3] {
        opt_host.update(&mut host, &mut g_host, lr).unwrap();
        opt_device
            .update_on_device(&mut device, &mut g_device, lr)
            .unwrap();
    }
    compare(&host, &device, "after two steps");
    let moved = by_name(&device)["blocks.0.attn.qkv.weight"]
        .iter()
        .zip(&start["blocks.0.attn.qkv.weight"])
        .filter(|(a, b)| a != b)
        .count();
    assert!(moved > 1000, "the device step moved only {moved} weights");

    // the moments come back from the device, and go back to it from the host
    let moments = opt_device.moments().unwrap().into_owned();
    assert_eq!(moments.len(), opt_host.state.len());
    for (name, m) in &opt_host.state {
        let d = &moments[name];
        for (a, b) in m.exp_avg.iter().zip(&d.exp_avg) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-9), "{name} exp_avg");
        }
        for (a, b) in m.exp_avg_sq.iter().zip(&d.exp_avg_sq) {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1e-12),
                "{name} exp_avg_sq"
            );
        }
    }
    opt_device.set_moments(moments);
    opt_host.update(&mut host, &mut g_host, 1e-3).unwrap();
    opt_device
        .update_on_device(&mut device, &mut g_device, 1e-3)
        .unwrap();
    compare(&host, &device, "after a third step from the host's copy");
    assert_eq!((opt_host.step, opt_device.step), (3, 3));
}
