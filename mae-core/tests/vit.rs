//! The fine-tuning classifier against the PyTorch reference, and its loading rules.
//!
//! `tests/fixtures/vit/vit-parity-a.safetensors` was made by `tools/reference/torch_vit.py
//! OUT --seed 2` (models_vit.py's global-pool ViT built from timm 1.0.31's `Block`, PyTorch 2.15,
//! float32): weights `model.*`, `input`, soft `targets` (label smoothing 0.1, mixed with the
//! flipped batch at λ 0.7, as timm's Mixup makes them), `logits`, `loss`, every gradient
//! `grad.*`, and `interpolate_pos_embed` cases `interp.*` (7→8 and 8→6 grids).
//! `vit-parity-token.safetensors` is the same for the cls-token head, made by `torch_vit.py OUT
//! --seed 3 --pool token` from timm 1.0.31's own `VisionTransformer(global_pool='token')`
//! (models_vit.py with `global_pool=False`; keys `norm.*` instead of `fc_norm.*`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use mae_core::dfdx::prelude::*;
use mae_core::layers::BranchScales;
use mae_core::pos_embed::interpolate_pos_embed;
use mae_core::presets::Parity;
use mae_core::{
    soft_target_cross_entropy, Classifier, ClassifierLayout, Mae, MaeError, MaePreset, Pooling,
    TensorFile,
};

const TOLERANCE: f64 = 1e-4;

fn fixture_named(name: &str) -> TensorFile {
    TensorFile::open(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/vit")
            .join(name),
    )
    .unwrap()
}

fn fixture() -> TensorFile {
    fixture_named("vit-parity-a.safetensors")
}

fn read(f: &TensorFile, name: &str) -> Vec<f32> {
    f.read(name).unwrap().unwrap().data
}

fn rel_err(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "length");
    let diff: f64 = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = reference
        .iter()
        .map(|b| (*b as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    diff / norm.max(1e-30)
}

#[test]
fn logits_loss_and_every_gradient_match_the_reference() {
    matches_reference("vit-parity-a.safetensors", Pooling::GlobalPool);
}

#[test]
fn the_cls_token_head_matches_timm() {
    matches_reference("vit-parity-token.safetensors", Pooling::ClsToken);
}

fn matches_reference(name: &str, pooling: Pooling) {
    let f = fixture_named(name);
    let classes: usize = f.metadata().unwrap()["classes"].parse().unwrap();
    let dev = Cpu::default();
    let mut model = Classifier::<Parity, Cpu>::with_pooling(&dev, classes, pooling).unwrap();
    model.load_from(&f, "model.").unwrap();
    let imgs = read(&f, "input");
    let targets = read(&f, "targets");
    let grads = model.alloc_grads().unwrap();
    let logits = model
        .forward(&imgs, &[], mae_core::tape_from(&dev, grads))
        .unwrap();
    let logits_out = logits.retaped::<NoneTape>().as_vec();
    let loss = soft_target_cross_entropy(logits, &targets).unwrap();
    let loss_value = loss.array();
    let grads = loss.backward();
    let mut worst = (0.0f64, String::new());
    let mut check = |what: &str, ours: &[f32], reference: &[f32]| {
        let e = rel_err(ours, reference);
        assert!(e <= TOLERANCE, "{what}: relative error {e:.3e}");
        if e > worst.0 {
            worst = (e, what.to_string());
        }
    };
    check("logits", &logits_out, &read(&f, "logits"));
    check("loss", &[loss_value], &read(&f, "loss"));
    let named = model.named_gradients(&grads).unwrap();
    assert_eq!(
        named.len(),
        4 + 12 * 2 + 2 + 2,
        "every parameter has a gradient"
    );
    for g in named {
        let reference = f.read(&format!("grad.{}", g.name)).unwrap().unwrap();
        assert_eq!(reference.shape, g.shape, "{}", g.name);
        check(&format!("grad.{}", g.name), &g.data, &reference.data);
    }
    println!("{name}: worst relative error {:.3e} ({})", worst.0, worst.1);
}

#[test]
fn a_classifier_file_says_its_head() {
    let dir = tempfile::tempdir().unwrap();
    for pooling in [Pooling::GlobalPool, Pooling::ClsToken] {
        let model = Classifier::<Parity, Cpu>::with_pooling(&Cpu::default(), 7, pooling).unwrap();
        let names: Vec<String> = model
            .named_tensors()
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        let norm = pooling.norm_name();
        assert!(names.contains(&format!("{norm}.weight")), "{names:?}");
        let other = if norm == "norm" { "fc_norm" } else { "norm" };
        assert!(!names.contains(&format!("{other}.weight")), "{names:?}");
        let path = dir.path().join(format!("{}.safetensors", pooling.as_str()));
        model.save_safetensors(&path, &BTreeMap::new()).unwrap();
        let file = TensorFile::open(&path).unwrap();
        assert_eq!(
            ClassifierLayout::of_file(&file).unwrap(),
            Some(ClassifierLayout {
                num_classes: 7,
                pooling
            })
        );
        assert_eq!(file.metadata().unwrap()["global_pool"], pooling.as_str());
        // the other head does not take it (a missing norm is named)
        let flipped = match pooling {
            Pooling::GlobalPool => Pooling::ClsToken,
            Pooling::ClsToken => Pooling::GlobalPool,
        };
        let mut wrong =
            Classifier::<Parity, Cpu>::with_pooling(&Cpu::default(), 7, flipped).unwrap();
        let err = wrong.load_from(&file, "").unwrap_err();
        assert!(err.to_string().contains(flipped.norm_name()), "{err}");
    }
    // an MAE is not a classifier
    let mae = Mae::<Parity, f32, Cpu>::new(&Cpu::default()).unwrap();
    let path = dir.path().join("mae.safetensors");
    mae.save_safetensors(&path, &BTreeMap::new()).unwrap();
    assert_eq!(
        ClassifierLayout::of_file(&TensorFile::open(&path).unwrap()).unwrap(),
        None
    );
    assert_eq!("token".parse::<Pooling>(), Ok(Pooling::ClsToken));
    assert!("max".parse::<Pooling>().unwrap_err().contains("`max`"));
}

#[test]
fn the_cls_token_head_takes_the_pretrained_norm() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Cpu::seed_from_u64(5);
    let mae = Mae::<Parity, f32, Cpu>::new(&dev).unwrap();
    let mut tensors = mae_core::weights::named_tensors(&mae).unwrap();
    let norm = tensors
        .iter_mut()
        .find(|t| t.name == "norm.weight")
        .unwrap();
    norm.data = (0..48).map(|i| 1.0 + i as f32 / 100.0).collect();
    let pretrained = norm.data.clone();
    let path = dir.path().join("mae.safetensors");
    mae_core::weights::write_safetensors(&path, &tensors, &BTreeMap::new()).unwrap();
    let file = TensorFile::open(&path).unwrap();

    let mut token = Classifier::<Parity, Cpu>::with_pooling(&dev, 3, Pooling::ClsToken).unwrap();
    let report = token.load_pretrained(&file).unwrap();
    // main_finetune.py --cls_token: only the head is missing
    assert_eq!(report.fresh, ["head.weight", "head.bias"]);
    assert_eq!(token.vit.fc_norm.weight.as_vec(), pretrained);

    let mut pooled = Classifier::<Parity, Cpu>::new(&dev, 3).unwrap();
    let report = pooled.load_pretrained(&file).unwrap();
    assert!(report.fresh.contains(&"fc_norm.weight".to_string()));
    assert_eq!(pooled.vit.fc_norm.weight.as_vec(), vec![1.0; 48]);
}

#[test]
fn pos_embed_interpolation_matches_torch_bicubic() {
    let f = fixture();
    for (src, out, old, new) in [("src7", "up8", 7, 8), ("src8", "down6", 8, 6)] {
        let ours = interpolate_pos_embed(&read(&f, &format!("interp.{src}")), 8, old, new);
        let reference = read(&f, &format!("interp.{out}"));
        let e = rel_err(&ours, &reference);
        assert!(e < 1e-6, "{old}→{new}: relative error {e:.3e}");
    }
}

#[test]
fn pretrained_mae_weights_load_with_fresh_head_and_interpolated_pos_embed() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let dev = Cpu::seed_from_u64(7);
    let mae = Mae::<Parity, f32, Cpu>::new(&dev).unwrap();
    let path = dir.join("mae.safetensors");
    mae.save_safetensors(&path, &BTreeMap::new()).unwrap();

    let mut model = Classifier::<Parity, Cpu>::new(&dev, 3).unwrap();
    let head_before = model.head.weight.as_vec();
    let report = model
        .load_pretrained(&TensorFile::open(&path).unwrap())
        .unwrap();
    assert_eq!(report.interpolated, None);
    assert_eq!(
        report.fresh,
        ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]
    );
    assert_eq!(
        model.vit.blocks.blocks[1].mlp.fc2.weight.as_vec(),
        mae.encoder.blocks.blocks[1].mlp.fc2.weight.as_vec()
    );
    assert_eq!(model.vit.pos_embed.as_vec(), mae.encoder.pos_embed.as_vec());
    assert_eq!(model.head.weight.as_vec(), head_before);
    assert!(head_before.iter().all(|v| v.abs() < 2e-4) && head_before.iter().any(|&v| v != 0.0));

    // the same weights from a 6×6 grid: pos_embed is interpolated to the preset's 8×8
    let mut tensors = mae_core::weights::named_tensors(&mae).unwrap();
    let pos = tensors.iter_mut().find(|t| t.name == "pos_embed").unwrap();
    let small: Vec<f32> = (0..37 * 48).map(|i| (i as f32 * 0.37).sin()).collect();
    pos.data = small.clone();
    pos.shape = vec![1, 37, 48];
    let path6 = dir.join("mae-6x6.safetensors");
    mae_core::weights::write_safetensors(&path6, &tensors, &BTreeMap::new()).unwrap();
    let report = model
        .load_pretrained(&TensorFile::open(&path6).unwrap())
        .unwrap();
    assert_eq!(report.interpolated, Some((6, 8)));
    assert_eq!(
        model.vit.pos_embed.as_vec(),
        interpolate_pos_embed(&small, 48, 6, 8)
    );

    // a wrong width is refused and leaves the model as it was
    let before = model.vit.cls_token.as_vec();
    let cls = tensors.iter_mut().find(|t| t.name == "cls_token").unwrap();
    cls.data = vec![1.0; 40];
    cls.shape = vec![1, 1, 40];
    let bad = dir.join("bad.safetensors");
    mae_core::weights::write_safetensors(&bad, &tensors, &BTreeMap::new()).unwrap();
    let err = model
        .load_pretrained(&TensorFile::open(&bad).unwrap())
        .unwrap_err();
    assert!(
        matches!(err, MaeError::ShapeMismatch { ref key, .. } if key == "cls_token"),
        "{err}"
    );
    assert_eq!(model.vit.cls_token.as_vec(), before);

    // a classifier round-trips through its own file
    let saved = dir.join("cls.safetensors");
    model.save_safetensors(&saved, &BTreeMap::new()).unwrap();
    let mut again = Classifier::<Parity, Cpu>::new(&Cpu::seed_from_u64(1), 3).unwrap();
    again
        .load_from(&TensorFile::open(&saved).unwrap(), "")
        .unwrap();
    assert_eq!(
        again.named_tensors().unwrap(),
        model.named_tensors().unwrap()
    );
    // ... but not into a head of another size
    let mut other = Classifier::<Parity, Cpu>::new(&dev, 4).unwrap();
    assert!(other
        .load_from(&TensorFile::open(&saved).unwrap(), "")
        .is_err());
}

#[test]
fn drop_path_scales_each_sample_on_its_own() {
    let dev = Cpu::seed_from_u64(3);
    let model = Classifier::<Parity, Cpu>::new(&dev, 4).unwrap();
    // a head large enough that the logits show the features
    let mut model = model;
    model.head.weight = dev.sample_normal_like(&(4, Const::<48>));
    let imgs: Vec<f32> = (0..2 * Parity::image_numel())
        .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
        .collect();
    let plain = model.forward(&imgs, &[], NoneTape).unwrap().as_vec();
    let ones = BranchScales {
        attn: vec![1.0; 2],
        mlp: vec![1.0; 2],
    };
    let same = model
        .forward(&imgs, &[Some(ones.clone()), Some(ones)], NoneTape)
        .unwrap()
        .as_vec();
    assert_eq!(plain, same);
    // drop both branches of block 1 for sample 0 only
    let drop0 = BranchScales {
        attn: vec![0.0, 1.0],
        mlp: vec![0.0, 1.0],
    };
    let dropped = model
        .forward(&imgs, &[None, Some(drop0)], NoneTape)
        .unwrap()
        .as_vec();
    assert_eq!(&dropped[4..], &plain[4..], "sample 1 untouched");
    assert!(dropped[..4]
        .iter()
        .zip(&plain[..4])
        .any(|(a, b)| (a - b).abs() > 1e-6));

    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let s = BranchScales::sample(&mut rng, 20_000, 0.25);
    let zeros = s.attn.iter().filter(|&&v| v == 0.0).count() as f64 / 20_000.0;
    let mean = s.mlp.iter().map(|&v| v as f64).sum::<f64>() / 20_000.0;
    assert!((zeros - 0.25).abs() < 0.02, "drop rate {zeros}");
    assert!((mean - 1.0).abs() < 0.03, "expectation {mean}");
    assert!(s
        .attn
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
}
