//! `mae pretrain --init WEIGHTS`: a fresh run from given weights (encoder only here, the decoder
//! initialized as without them), its preset read from the weights, and a bad `--init` refused
//! before anything is written.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use mae_core::weights::{is_decoder_name, write_safetensors, NamedTensor};
use mae_core::TensorFile;

mod common;
use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let f = TensorFile::open(path).unwrap();
    f.names()
        .unwrap()
        .into_iter()
        .map(|n| {
            let t = f.read(&n).unwrap().unwrap();
            (n, t.data)
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn pretraining_starts_from_init_weights_with_a_fresh_decoder() {
    let scratch = Scratch::new();
    let dir = scratch.sub("w");
    // an encoder-only file: `mae init --seed 7` without its decoder
    let full = dir.join("full.safetensors");
    run_ok(&["init", "--preset", "tiny", "--seed", "7", "--out", s(&full)]);
    let f = TensorFile::open(&full).unwrap();
    let encoder: Vec<NamedTensor> = f
        .names()
        .unwrap()
        .into_iter()
        .filter(|n| !is_decoder_name(n))
        .map(|n| {
            let t = f.read(&n).unwrap().unwrap();
            NamedTensor {
                name: n,
                shape: t.shape,
                data: t.data,
                trainable: true,
            }
        })
        .collect();
    let init = dir.join("encoder.safetensors");
    write_safetensors(&init, &encoder, &BTreeMap::new()).unwrap();

    // one step at a negligible learning rate: the weights stay where they started
    let run = |out: &Path, init: Option<&Path>| {
        let mut args = train_args(scratch.data(), s(out), "1");
        args = with_flag(args, "--blr", "1e-12");
        if let Some(i) = init {
            args.extend(["--init", s(i)]);
            // the preset comes from the weights' shapes
            let at = args.iter().position(|a| *a == "--preset").unwrap();
            args.drain(at..at + 2);
        }
        run_ok(&args)
    };
    let (with, without) = (scratch.sub("with"), scratch.sub("without"));
    let said = run(&with, Some(&init));
    assert!(
        said.contains("started from") && said.contains("encoder only"),
        "{said}"
    );
    run(&without, None);
    let (a, b) = (
        tensors(&with.join("checkpoint-1.safetensors")),
        tensors(&without.join("checkpoint-1.safetensors")),
    );
    let given = tensors(&init);
    for (name, v) in &a {
        if is_decoder_name(name) {
            assert!(
                max_diff(v, &b[name]) < 1e-6,
                "{name}: the decoder is not the fresh one"
            );
        } else {
            assert!(
                max_diff(v, &given[name]) < 1e-6,
                "{name}: not the --init weights"
            );
            if name.ends_with("qkv.weight") || name.ends_with("fc1.weight") {
                assert!(
                    max_diff(v, &b[name]) > 1e-3,
                    "{name}: the same as without --init"
                );
            }
        }
    }
    let config = std::fs::read_to_string(with.join("config.json")).unwrap();
    assert!(config.contains("encoder.safetensors"), "{config}");
}

#[test]
fn a_bad_init_is_refused_before_anything_is_written() {
    let scratch = Scratch::new();
    let out = scratch.sub("parent").join("run");
    let missing = scratch.sub("w").join("nope.pth");
    let mut args = train_args(scratch.data(), s(&out), "1");
    args.extend(["--init", s(&missing)]);
    let r = mae(&args);
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("nope.pth") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!out.exists(), "the run directory was created");
    // weights of another preset (parity's .pth against the tiny preset)
    let parity =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../mae-core/tests/fixtures/pth/full.pth");
    let mut args = train_args(scratch.data(), s(&out), "1");
    args.extend(["--init", s(&parity)]);
    let r = mae(&args);
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("full.pth") && err.contains("tiny"), "{err}");
    assert!(!out.exists(), "the run directory was created");
}
