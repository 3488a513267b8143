//! Weights I/O: save → load round trip is exact, official names and shapes are used, encoder-only
//! files load into the encoder, and a bad file is an error naming the file, the key and both
//! shapes, leaving the model untouched.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mae_core::dfdx::prelude::*;
use mae_core::presets::{Parity, Tiny};
use mae_core::weights::{named_tensors, write_safetensors, NamedTensor};
use mae_core::{Mae, MaeError, TensorFile};

type Model = Mae<Parity, f32, Cpu>;

/// A path in a directory of its own, removed with it when dropped (end of test, pass or fail).
struct TempFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl std::ops::Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempFile {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

fn tmp(name: &str) -> TempFile {
    let dir = tempfile::Builder::new()
        .prefix("mae-core-weights-")
        .tempdir()
        .unwrap();
    let path = dir.path().join(name);
    TempFile { _dir: dir, path }
}

fn model(seed: u64) -> Model {
    Model::new(&Cpu::seed_from_u64(seed)).unwrap()
}

fn tensors(m: &Model) -> Vec<NamedTensor> {
    named_tensors(m).unwrap()
}

fn save(m: &Model, name: &str) -> TempFile {
    let path = tmp(name);
    m.save_safetensors(&path, &BTreeMap::new()).unwrap();
    path
}

/// Writes `tensors` after `edit`, and returns the path.
fn write_edited(name: &str, edit: impl FnOnce(&mut Vec<NamedTensor>)) -> TempFile {
    let mut t = tensors(&model(1));
    edit(&mut t);
    let path = tmp(name);
    write_safetensors(&path, &t, &BTreeMap::new()).unwrap();
    path
}

fn load_err(path: &Path) -> MaeError {
    let mut m = model(2);
    let before = tensors(&m);
    let err = m.load_safetensors(path).unwrap_err();
    assert_eq!(
        tensors(&m),
        before,
        "a failed load must leave the model untouched"
    );
    err
}

#[test]
fn save_then_load_is_exact() {
    let a = model(1);
    let path = save(&a, "roundtrip.safetensors");
    let mut b = model(2);
    assert_ne!(tensors(&a), tensors(&b));
    b.load_safetensors(&path).unwrap();
    assert_eq!(tensors(&a), tensors(&b));
    let meta = TensorFile::open(&path).unwrap().metadata().unwrap();
    assert_eq!(meta.get("preset").map(String::as_str), Some("parity"));
}

#[test]
fn files_use_the_official_names_and_shapes() {
    let path = save(&model(1), "names.safetensors");
    let file = TensorFile::open(&path).unwrap();
    let shape = |n: &str| {
        file.shape(n)
            .unwrap()
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(shape("patch_embed.proj.weight"), vec![48, 3, 4, 4]);
    assert_eq!(shape("patch_embed.proj.bias"), vec![48]);
    assert_eq!(shape("cls_token"), vec![1, 1, 48]);
    assert_eq!(shape("pos_embed"), vec![1, 65, 48]);
    assert_eq!(shape("blocks.1.attn.qkv.weight"), vec![144, 48]);
    assert_eq!(shape("blocks.0.mlp.fc1.weight"), vec![192, 48]);
    assert_eq!(shape("norm.weight"), vec![48]);
    assert_eq!(shape("mask_token"), vec![1, 1, 32]);
    assert_eq!(shape("decoder_pos_embed"), vec![1, 65, 32]);
    assert_eq!(shape("decoder_blocks.0.norm1.bias"), vec![32]);
    assert_eq!(shape("decoder_pred.weight"), vec![48, 32]);
    // encoder: patch_embed 2, cls + pos 2, 2 blocks × 12, norm 2;
    // decoder: embed 2, mask token + pos 2, 1 block × 12, norm 2, pred 2
    assert_eq!(
        file.names().unwrap().len(),
        (2 + 2 + 2 * 12 + 2) + (2 + 2 + 12 + 2 + 2)
    );
}

#[test]
fn initialization_follows_the_recipe() {
    let m = model(3);
    let t = tensors(&m);
    let get = |n: &str| t.iter().find(|x| x.name == n).unwrap().data.clone();
    // xavier-uniform bound for qkv [144, 48]: sqrt(6 / 192)
    let bound = (6.0f32 / 192.0).sqrt();
    let qkv = get("blocks.0.attn.qkv.weight");
    assert!(qkv.iter().all(|v| v.abs() <= bound));
    assert!(qkv.iter().any(|v| v.abs() > 0.8 * bound));
    assert!(get("blocks.0.attn.qkv.bias").iter().all(|&v| v == 0.0));
    assert!(get("norm.weight").iter().all(|&v| v == 1.0));
    let cls = get("cls_token");
    let std = (cls.iter().map(|v| v * v).sum::<f32>() / cls.len() as f32).sqrt();
    assert!(std > 0.01 && std < 0.04, "cls_token std {std}");
    assert_eq!(get("pos_embed")[..48], [0.0; 48]);
    // fixed embeddings are not trainable
    assert!(!t.iter().find(|x| x.name == "pos_embed").unwrap().trainable);
    assert!(t.iter().find(|x| x.name == "cls_token").unwrap().trainable);
}

#[test]
fn a_missing_key_is_named() {
    let path = write_edited("missing.safetensors", |t| {
        t.retain(|x| x.name != "blocks.1.norm2.bias")
    });
    let err = load_err(&path);
    let msg = err.to_string();
    assert!(matches!(err, MaeError::MissingKey { .. }), "{msg}");
    assert!(
        msg.contains("blocks.1.norm2.bias") && msg.contains("missing.safetensors"),
        "{msg}"
    );
}

#[test]
fn an_extra_key_is_named() {
    let path = write_edited("extra.safetensors", |t| {
        t.push(NamedTensor {
            name: "blocks.2.norm1.weight".into(),
            shape: vec![48],
            data: vec![1.0; 48],
            trainable: true,
        })
    });
    let msg = load_err(&path).to_string();
    assert!(
        msg.contains("unexpected tensor `blocks.2.norm1.weight`"),
        "{msg}"
    );
}

#[test]
fn a_wrong_shape_names_the_key_and_both_shapes() {
    let path = write_edited("shape.safetensors", |t| {
        let w = t
            .iter_mut()
            .find(|x| x.name == "patch_embed.proj.weight")
            .unwrap();
        w.shape = vec![48, 48];
    });
    let msg = load_err(&path).to_string();
    assert!(
        msg.contains("patch_embed.proj.weight")
            && msg.contains("[48, 48]")
            && msg.contains("[48, 3, 4, 4]"),
        "{msg}"
    );
}

#[test]
fn a_file_of_another_preset_is_refused() {
    let other = Mae::<Tiny, f32, Cpu>::new(&Cpu::seed_from_u64(0)).unwrap();
    let path = tmp("tiny.safetensors");
    other.save_safetensors(&path, &BTreeMap::new()).unwrap();
    let msg = load_err(&path).to_string();
    assert!(msg.contains("preset parity"), "{msg}");
}

#[test]
fn non_finite_values_and_broken_files_are_errors() {
    let path = write_edited("nan.safetensors", |t| {
        t.iter_mut().find(|x| x.name == "norm.bias").unwrap().data[3] = f32::NAN;
    });
    assert!(matches!(load_err(&path), MaeError::NonFinite { key, .. } if key == "norm.bias"));

    let good = save(&model(1), "good.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    let truncated = tmp("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&truncated);
    assert!(matches!(err, MaeError::Format { .. }), "{err}");
    assert!(err.to_string().contains("truncated.safetensors"));

    let garbage = tmp("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    assert!(matches!(load_err(&garbage), MaeError::Format { .. }));

    let err = load_err(&tmp("does-not-exist.safetensors"));
    assert!(matches!(err, MaeError::Io { .. }) && err.to_string().contains("does-not-exist"));
}

#[test]
fn half_precision_files_load() {
    // Write an f16 copy of the model by hand and check it loads within f16 rounding.
    let a = model(1);
    let t = tensors(&a);
    let bytes: Vec<Vec<u8>> = t
        .iter()
        .map(|x| {
            x.data
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = t
        .iter()
        .zip(&bytes)
        .map(|(x, b)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, x.shape.clone(), b)
                    .unwrap();
            (x.name.clone(), v)
        })
        .collect();
    let path = tmp("half.safetensors");
    safetensors::serialize_to_file(views, &None, &path).unwrap();
    let mut b = model(2);
    b.load_safetensors(&path).unwrap();
    for (x, y) in t.iter().zip(tensors(&b)) {
        for (u, v) in x.data.iter().zip(&y.data) {
            assert!(
                (u - v).abs() <= 1e-3 * u.abs().max(1e-2),
                "{}: {u} vs {v}",
                x.name
            );
        }
    }
}

#[test]
fn encoder_only_files_load_into_the_encoder() {
    let a = model(1);
    let encoder_only: Vec<NamedTensor> = tensors(&a)
        .into_iter()
        .filter(|t| !mae_core::weights::is_decoder_name(&t.name))
        .collect();
    assert_eq!(encoder_only.len(), 2 * 12 + 4 + 2);
    let path = tmp("encoder.safetensors");
    write_safetensors(&path, &encoder_only, &BTreeMap::new()).unwrap();
    let file = TensorFile::open(&path).unwrap();

    let mut b = model(2);
    b.encoder.load_from(&file, "").unwrap();
    let loaded = tensors(&b);
    for t in &encoder_only {
        assert_eq!(
            &loaded.iter().find(|x| x.name == t.name).unwrap().data,
            &t.data
        );
    }
    // the full model is strict: the decoder is missing
    assert!(matches!(
        b.load_from(&file, ""),
        Err(MaeError::MissingKey { .. })
    ));
    // and the encoder also loads from a full file, skipping the decoder
    let full = save(&a, "full-for-encoder.safetensors");
    let mut c = model(3);
    c.encoder
        .load_from(&TensorFile::open(&full).unwrap(), "")
        .unwrap();
}

#[test]
fn saving_replaces_atomically() {
    let path = save(&model(1), "atomic.safetensors");
    model(2).save_safetensors(&path, &BTreeMap::new()).unwrap();
    let dir = path.parent().unwrap();
    // the temporary file of this save is gone: the folder holds the file alone
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("atomic.safetensors")]);
    let mut m = model(3);
    m.load_safetensors(&path).unwrap();
    assert_eq!(tensors(&m), tensors(&model(2)));
    // a directory that does not exist is an I/O error naming the file
    let err = model(1)
        .save_safetensors(dir.join("no/such/dir/x.safetensors"), &BTreeMap::new())
        .unwrap_err();
    assert!(err.to_string().contains("x.safetensors"), "{err}");
}

/// Renames official tensors to Hugging Face ViTMAE names (splitting qkv), as a test input.
fn to_hugging_face(tensors: &[NamedTensor]) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    for t in tensors {
        let renamed = |name: String| NamedTensor { name, ..t.clone() };
        let n = t.name.as_str();
        let simple = [
            ("cls_token", "vit.embeddings.cls_token"),
            ("pos_embed", "vit.embeddings.position_embeddings"),
            (
                "patch_embed.proj.weight",
                "vit.embeddings.patch_embeddings.projection.weight",
            ),
            (
                "patch_embed.proj.bias",
                "vit.embeddings.patch_embeddings.projection.bias",
            ),
            ("norm.weight", "vit.layernorm.weight"),
            ("norm.bias", "vit.layernorm.bias"),
        ];
        if let Some((_, hf)) = simple.iter().find(|(o, _)| *o == n) {
            out.push(renamed(hf.to_string()));
            continue;
        }
        if !n.starts_with("blocks.") && !n.starts_with("decoder_blocks.") {
            out.push(renamed(format!("decoder.{n}")));
            continue;
        }
        let (prefix, rest) = if let Some(r) = n.strip_prefix("blocks.") {
            ("vit.encoder.layer", r)
        } else {
            (
                "decoder.decoder_layers",
                n.strip_prefix("decoder_blocks.").unwrap(),
            )
        };
        let (i, part) = rest.split_once('.').unwrap();
        if let Some(kind) = part.strip_prefix("attn.qkv.") {
            let third = t.data.len() / 3;
            for (k, which) in ["query", "key", "value"].iter().enumerate() {
                let mut shape = t.shape.clone();
                shape[0] /= 3;
                out.push(NamedTensor {
                    name: format!("{prefix}.{i}.attention.attention.{which}.{kind}"),
                    shape,
                    data: t.data[k * third..(k + 1) * third].to_vec(),
                    trainable: true,
                });
            }
            continue;
        }
        let hf = match part {
            "norm1.weight" => "layernorm_before.weight",
            "norm1.bias" => "layernorm_before.bias",
            "norm2.weight" => "layernorm_after.weight",
            "norm2.bias" => "layernorm_after.bias",
            "attn.proj.weight" => "attention.output.dense.weight",
            "attn.proj.bias" => "attention.output.dense.bias",
            "mlp.fc1.weight" => "intermediate.dense.weight",
            "mlp.fc1.bias" => "intermediate.dense.bias",
            "mlp.fc2.weight" => "output.dense.weight",
            "mlp.fc2.bias" => "output.dense.bias",
            other => panic!("{other}"),
        };
        out.push(renamed(format!("{prefix}.{i}.{hf}")));
    }
    out
}

#[test]
fn hugging_face_names_convert_to_the_official_ones() {
    let a = model(1);
    let official = tensors(&a);
    let path = tmp("hf.safetensors");
    write_safetensors(&path, &to_hugging_face(&official), &BTreeMap::new()).unwrap();
    let file = TensorFile::open(&path).unwrap();
    assert!(mae_core::weights::is_hugging_face(&file).unwrap());
    let converted = mae_core::weights::hugging_face_to_official(&file).unwrap();
    let back = tmp("hf-back.safetensors");
    write_safetensors(&back, &converted, &BTreeMap::new()).unwrap();
    let mut b = model(2);
    b.load_safetensors(&back).unwrap();
    assert_eq!(tensors(&b), official);
    // an unknown Hugging Face tensor is named
    let mut extra = to_hugging_face(&official);
    extra.push(NamedTensor {
        name: "vit.pooler.dense.weight".into(),
        shape: vec![1],
        data: vec![0.0],
        trainable: true,
    });
    write_safetensors(&path, &extra, &BTreeMap::new()).unwrap();
    let err =
        mae_core::weights::hugging_face_to_official(&TensorFile::open(&path).unwrap()).unwrap_err();
    assert!(err.to_string().contains("vit.pooler.dense.weight"), "{err}");
}

/// Hugging Face q/k/v that are scalars, or of different shapes, are an error naming the file,
/// not a panic (the stacking multiplies the first dimension by 3).
#[test]
fn hugging_face_qkv_of_odd_shapes_are_errors() {
    let official = tensors(&model(1));
    let path = tmp("hf-scalar.safetensors");
    for shape in [vec![], vec![7]] {
        let mut hf = to_hugging_face(&official);
        for t in hf
            .iter_mut()
            .filter(|t| t.name.contains("layer.0.attention.attention."))
        {
            if t.name.ends_with("key.bias") || shape.is_empty() {
                t.shape = shape.clone();
                t.data = vec![0.5; shape.iter().product()];
            }
        }
        write_safetensors(&path, &hf, &BTreeMap::new()).unwrap();
        let err = mae_core::weights::hugging_face_to_official(&TensorFile::open(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hf-scalar.safetensors") && err.contains("query/key/value"),
            "{err}"
        );
    }
}

/// Every file we write carries a content checksum: a flipped byte anywhere in the tensors or the
/// metadata is an error naming the file; a file without one (from elsewhere) loads as before.
#[test]
fn a_flipped_byte_is_caught_by_the_checksum() {
    let path = save(&model(1), "sum.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let meta = TensorFile::open(&path).unwrap().metadata().unwrap();
    assert!(meta["checksum"].starts_with("xxh3:"), "{meta:?}");
    // the last byte is tensor data; a byte of the header's metadata value too
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + header_len]).into_owned();
    let preset_at = 8 + header.find("parity").unwrap();
    for at in [bytes.len() - 1, bytes.len() / 2, preset_at] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x01;
        std::fs::write(&path, &flipped).unwrap();
        match TensorFile::open(&path) {
            Err(MaeError::Checksum { path: p, .. }) => assert_eq!(p, path.to_path_buf()),
            // a flip in the header may make it unparsable instead: also an error naming the file
            Err(e) => assert!(e.to_string().contains("sum.safetensors"), "{e}"),
            Ok(_) => panic!("byte {at} flipped and the file loaded"),
        }
    }
    // without a checksum (a file from elsewhere): loads
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let plain = safetensors::serialize(views, &None).unwrap();
    std::fs::write(&path, plain).unwrap();
    let mut m = model(3);
    m.load_safetensors(&path).unwrap();
    assert_eq!(tensors(&m), tensors(&model(1)));
}

/// A weights path that is a folder or a device is refused without reading it (`/dev/zero` would
/// be read until memory runs out); writing over a folder is refused too.
#[test]
fn folders_and_devices_are_not_weights_files() {
    let dir = tmp("x");
    let parent = dir.parent().unwrap().to_path_buf();
    for p in [parent.as_path(), Path::new("/dev/zero")] {
        let err = TensorFile::open(p).err().expect("refused").to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
    let err = model(1)
        .save_safetensors(&parent, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    assert!(parent.is_dir());
}

/// Integer tensors are written as I64 and read back exactly (beyond f32's 2^24), checksummed like
/// the rest; float labels of older files read as integers, fractional ones are an error.
#[test]
fn integer_tensors_are_i64_and_read_back_exactly() {
    use mae_core::weights::{write_safetensors_with_indices, IndexTensor};
    let path = tmp("labels.safetensors");
    let big = (1i64 << 40) + 1;
    let floats = [NamedTensor {
        name: "x".into(),
        shape: vec![2],
        data: vec![0.5, 3.0],
        trainable: false,
    }];
    let ints = [IndexTensor {
        name: "labels".into(),
        shape: vec![3],
        data: vec![-1, 7, big],
    }];
    write_safetensors_with_indices(&path, &floats, &ints, &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("labels").unwrap().dtype(),
        safetensors::Dtype::I64
    );
    let file = TensorFile::open(&path).unwrap();
    assert_eq!(file.read_i64("labels").unwrap(), Some(ints[0].clone()));
    assert_eq!(file.read_i64("missing").unwrap(), None);
    // a float tensor of whole numbers reads as integers; 0.5 is not one
    let err = file.read_i64("x").unwrap_err().to_string();
    assert!(
        err.contains("labels.safetensors") && err.contains("`x`"),
        "{err}"
    );
    let whole = tmp("old.safetensors");
    let old = [NamedTensor {
        data: vec![2.0, -1.0],
        ..floats[0].clone()
    }];
    write_safetensors(&whole, &old, &BTreeMap::new()).unwrap();
    let file = TensorFile::open(&whole).unwrap();
    let x = file.read_i64("x").unwrap().unwrap();
    assert_eq!((x.shape, x.data), (vec![2], vec![2, -1]));
    // a flipped label byte fails the checksum
    let mut flipped = bytes.clone();
    let at = flipped.len() - 1;
    flipped[at] ^= 1;
    assert!(TensorFile::from_bytes(path.to_path_buf(), flipped).is_err());
}
