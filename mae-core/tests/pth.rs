//! PyTorch `.pth` files as `torch.save` writes them (fixtures made by
//! `tools/reference/pth_fixtures.py` from `mae-parity-a.safetensors`'s weights): every layout a
//! weights file comes in reads to the same values, bit for bit or exactly converted from
//! f16/bf16/f64, and hostile or broken files are errors naming the file, never a panic.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mae_core::dfdx::prelude::*;
use mae_core::model_files::import_file;
use mae_core::presets::Parity;
use mae_core::pth::{PTH_FORMAT_KEY, PTH_PREFIX_KEY, PTH_WRAPPER_KEY};
use mae_core::{Classifier, ClassifierLayout, MaeError, Pooling, Preset, TensorFile};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The source weights: `model.*` of the parity fixture, without the prefix.
fn source() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    model_tensors(&fixture("mae-parity-a.safetensors"))
}

/// The `model.*` tensors of a reference fixture, without the prefix.
fn model_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let f = TensorFile::open(path).unwrap();
    f.names()
        .unwrap()
        .into_iter()
        .filter_map(|n| {
            let short = n.strip_prefix("model.")?.to_string();
            let t = f.read(&n).unwrap().unwrap();
            Some((short, (t.shape, t.data)))
        })
        .collect()
}

fn read_all(f: &TensorFile) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    f.names()
        .unwrap()
        .into_iter()
        .map(|n| {
            let t = f.read(&n).unwrap().unwrap();
            (n, (t.shape, t.data))
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn error_of(path: &Path) -> String {
    match TensorFile::open(path) {
        Ok(_) => panic!("{} was read", path.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            msg
        }
    }
}

#[test]
fn a_full_checkpoint_reads_bit_for_bit_without_its_wrapper() {
    let f = TensorFile::open(fixture("pth/full.pth")).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(meta.get(PTH_WRAPPER_KEY).map(String::as_str), Some("model"));
    assert_eq!(meta.get(PTH_FORMAT_KEY).map(String::as_str), Some("zip"));
    assert_eq!(meta.get(PTH_PREFIX_KEY), None);
    let (got, want) = (read_all(&f), source());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, (shape, data)) in &want {
        assert_eq!(&got[name].0, shape, "{name}");
        assert_eq!(bits(&got[name].1), bits(data), "{name}");
    }
}

#[test]
fn an_official_training_checkpoint_reads_its_model_and_skips_the_rest() {
    // model, optimizer state, epoch, scaler and an argparse.Namespace of args
    let f = TensorFile::open(fixture("pth/checkpoint.pth")).unwrap();
    let got = read_all(&f);
    assert_eq!(got.len(), source().len());
    assert!(got.keys().all(|k| !k.starts_with("optimizer")));
}

#[test]
fn ddp_prefixes_come_off_and_f16_converts_exactly() {
    let f = TensorFile::open(fixture("pth/ddp_f16.pth")).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(
        meta.get(PTH_WRAPPER_KEY).map(String::as_str),
        Some("state_dict")
    );
    assert_eq!(
        meta.get(PTH_PREFIX_KEY).map(String::as_str),
        Some("module.")
    );
    let got = read_all(&f);
    for (name, (shape, data)) in source() {
        let halved: Vec<f32> = data
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        assert_eq!(got[&name].0, shape, "{name}");
        assert_eq!(bits(&got[&name].1), bits(&halved), "{name}");
    }
}

#[test]
fn encoder_only_files_import_with_a_fresh_decoder() {
    let f = TensorFile::open(fixture("pth/encoder.pth")).unwrap();
    assert!(f.names().unwrap().iter().all(|n| !n.starts_with("decoder")));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported.safetensors");
    let how = import_file(Preset::Parity, &f, &out, &BTreeMap::new()).unwrap();
    assert!(how.starts_with("encoder only"), "{how}");
    let imported = read_all(&TensorFile::open(&out).unwrap());
    for (name, (_, data)) in source().iter().filter(|(n, _)| n.starts_with("blocks.")) {
        assert_eq!(bits(&imported[name].1), bits(data), "{name}");
    }
}

/// `base = arange(24) / 7` in f32, as torch computes it.
fn base(i: usize) -> f32 {
    i as f32 / 7.0
}

#[test]
fn views_dtypes_and_the_legacy_format_read_exactly() {
    for (file, format) in [("pth/views.pth", "zip"), ("pth/legacy.pth", "legacy")] {
        let f = TensorFile::open(fixture(file)).unwrap();
        assert_eq!(
            f.metadata()
                .unwrap()
                .get(PTH_FORMAT_KEY)
                .map(String::as_str),
            Some(format)
        );
        let got = read_all(&f);
        let bf16: Vec<f32> = (0..12)
            .map(|i| half::bf16::from_f32(i as f32 / 3.0 - 2.0).to_f32())
            .collect();
        assert_eq!(got["bf16"], (vec![3, 4], bf16), "{file}");
        let f64s: Vec<f32> = (0..6).map(|i| (i as f64 / 9.0) as f32).collect();
        assert_eq!(got["f64"], (vec![2, 3], f64s), "{file}");
        // base[:12].reshape(3, 4).t(): element (i, j) is base[j * 4 + i]
        let transposed: Vec<f32> = (0..4)
            .flat_map(|i| (0..3).map(move |j| base(j * 4 + i)))
            .collect();
        assert_eq!(got["transposed"], (vec![4, 3], transposed), "{file}");
        let offset: Vec<f32> = (5..17).map(base).collect();
        assert_eq!(got["offset"], (vec![2, 6], offset), "{file}");
        assert_eq!(
            got["int64"],
            (vec![5], vec![-2.0, -1.0, 0.0, 1.0, 2.0]),
            "{file}"
        );
        assert_eq!(got["scalar"], (vec![], vec![2.5]), "{file}");
    }
}

#[test]
fn a_pickle_that_would_run_a_command_is_refused_naming_the_global() {
    let msg = error_of(&fixture("pth/os_system.pth"));
    assert!(
        msg.contains("posix.system") && msg.contains("refused"),
        "{msg}"
    );
    // the same as a bare pickle (no zip): GLOBAL posix.system, REDUCE
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.pth");
    std::fs::write(
        &bare,
        b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.",
    )
    .unwrap();
    let msg = error_of(&bare);
    assert!(msg.contains("posix.system"), "{msg}");
}

#[test]
fn broken_and_absurd_files_are_errors_naming_them() {
    let msg = error_of(&fixture("pth/short_storage.pth"));
    assert!(msg.contains("storage"), "{msg}");
    let msg = error_of(&fixture("pth/expanded.pth"));
    assert!(msg.contains("bytes"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(fixture("pth/full.pth")).unwrap();
    for cut in [full.len() / 2, full.len() - 30, 100, 4] {
        let p = dir.path().join(format!("cut-{cut}.pth"));
        std::fs::write(&p, &full[..cut]).unwrap();
        let msg = error_of(&p);
        assert!(!msg.is_empty());
    }
    // a zip that is not a PyTorch file
    let p = dir.path().join("other.pth");
    std::fs::write(&p, b"PK\x03\x04 not really a zip").unwrap();
    error_of(&p);
    // an empty state dict
    assert!(matches!(
        TensorFile::open(fixture("pth/empty.pth")),
        Err(MaeError::Format { .. })
    ));
}

#[test]
fn exported_pth_and_safetensors_read_back_identical() {
    use mae_core::model_files::{export_file, ExportFormat};
    let dir = tempfile::tempdir().unwrap();
    let src = TensorFile::open(fixture("pth/full.pth")).unwrap();
    let want = read_all(&src);
    for (format, name) in [
        (ExportFormat::Pth, "out.pth"),
        (ExportFormat::Safetensors, "out.safetensors"),
    ] {
        for encoder_only in [false, true] {
            let out = dir.path().join(format!("{encoder_only}-{name}"));
            let n = export_file(
                Preset::Parity,
                &src,
                format,
                encoder_only,
                &out,
                &BTreeMap::new(),
            )
            .unwrap();
            let back = TensorFile::open(&out).unwrap();
            let got = read_all(&back);
            assert_eq!(got.len(), n);
            let expected: Vec<&String> = want
                .keys()
                .filter(|k| !encoder_only || !mae_core::weights::is_decoder_name(k))
                .collect();
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                expected,
                "{}",
                out.display()
            );
            for (k, (shape, data)) in &got {
                assert_eq!(shape, &want[k].0, "{k}");
                assert_eq!(bits(data), bits(&want[k].1), "{k}");
            }
            if format == ExportFormat::Pth {
                let meta = back.metadata().unwrap();
                assert_eq!(meta.get(PTH_WRAPPER_KEY).map(String::as_str), Some("model"));
            }
        }
    }
}

#[test]
fn the_pth_writer_handles_scalars_and_large_dimensions() {
    use mae_core::pth::pth_bytes;
    use mae_core::weights::NamedTensor;
    let t = |name: &str, shape: Vec<usize>| {
        let n = shape.iter().product();
        NamedTensor {
            name: name.into(),
            shape,
            data: (0..n).map(|i| i as f32 * 0.5 - 3.0).collect(),
            trainable: true,
        }
    };
    // sizes needing BININT2 and BININT, a 0-d tensor, a name with non-ASCII text
    let tensors = vec![
        t("scalar", vec![]),
        t("wide", vec![1, 70_000]),
        t("größe", vec![300, 2]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pth");
    std::fs::write(&path, pth_bytes(&path, &tensors, None).unwrap()).unwrap();
    let got = read_all(&TensorFile::open(&path).unwrap());
    for x in &tensors {
        assert_eq!(
            got[&x.name],
            (x.shape.clone(), x.data.clone()),
            "{}",
            x.name
        );
    }
    let bad = vec![NamedTensor {
        name: "x".into(),
        shape: vec![2, 2],
        data: vec![1.0],
        trainable: true,
    }];
    assert!(pth_bytes(&path, &bad, None).is_err());
}

#[test]
fn a_hugging_face_export_reads_back_through_its_folder() {
    use mae_core::model_files::{export_file, open_weights, ExportFormat};
    let dir = tempfile::tempdir().unwrap();
    let src = TensorFile::open(fixture("pth/full.pth")).unwrap();
    let want = read_all(&src);
    for encoder_only in [false, true] {
        let out = dir.path().join(format!("hf-{encoder_only}"));
        export_file(
            Preset::Parity,
            &src,
            ExportFormat::HuggingFace,
            encoder_only,
            &out,
            &BTreeMap::new(),
        )
        .unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["hidden_size"], 48);
        assert_eq!(
            config["model_type"],
            if encoder_only { "vit" } else { "vit_mae" }
        );
        let raw = TensorFile::open(out.join("model.safetensors"))
            .unwrap()
            .names()
            .unwrap();
        let prefixed = raw.iter().filter(|n| n.starts_with("vit.")).count();
        assert_eq!(prefixed > 0, !encoder_only, "{raw:?}");
        assert!(raw
            .iter()
            .any(|n| n.ends_with("attention.attention.query.weight")));
        let (back, naming) = open_weights(&out).unwrap();
        assert!(naming.contains("Hugging Face"), "{naming}");
        let got = read_all(&back);
        for (k, (shape, data)) in &want {
            if encoder_only && mae_core::weights::is_decoder_name(k) {
                assert!(!got.contains_key(k), "{k}");
                continue;
            }
            assert_eq!((&got[k].0, bits(&got[k].1)), (shape, bits(data)), "{k}");
        }
    }
}

#[test]
fn fine_tuned_and_timm_classifiers_load_with_their_own_head() {
    for (file, source, pooling) in [
        (
            "finetuned.pth",
            "vit-parity-a.safetensors",
            Pooling::GlobalPool,
        ),
        (
            "timm_vit.pth",
            "vit-parity-token.safetensors",
            Pooling::ClsToken,
        ),
    ] {
        let f = TensorFile::open(fixture("pth").join(file)).unwrap();
        let layout = ClassifierLayout::of_file(&f).unwrap().unwrap();
        assert_eq!(layout.pooling, pooling, "{file}");
        assert_eq!(layout.num_classes, 5, "{file}");
        let mut model =
            Classifier::<Parity, Cpu>::with_pooling(&Cpu::default(), 5, pooling).unwrap();
        model.load_from(&f, "").unwrap();
        let expected = model_tensors(&fixture("vit").join(source));
        // the encoder of the cls-token classifier (its `norm` is the encoder's) loads too, the
        // head skipped; the global-pool one has no final `norm`: a clear error naming it
        let mut encoder = mae_core::Mae::<Parity, f32, Cpu>::new(&Cpu::default())
            .unwrap()
            .encoder;
        match (pooling, encoder.load_from(&f, "")) {
            (Pooling::ClsToken, Ok(())) => {
                assert_eq!(
                    bits(&encoder.norm.weight.as_vec()),
                    bits(&expected["norm.weight"].1)
                )
            }
            (Pooling::GlobalPool, Err(e)) => assert!(e.to_string().contains("norm.weight"), "{e}"),
            (p, r) => panic!("{file} ({p:?}): {r:?}"),
        }
        let loaded = model.named_tensors().unwrap();
        assert_eq!(loaded.len(), expected.len(), "{file}");
        for t in loaded {
            let (shape, data) = &expected[&t.name];
            // the official layouts are [1, 1, D] and [1, 1 + L, D]; ours drop the leading ones
            assert_eq!(t.data.len(), shape.iter().product::<usize>(), "{}", t.name);
            assert_eq!(bits(&t.data), bits(data), "{file}: {}", t.name);
        }
    }
}
