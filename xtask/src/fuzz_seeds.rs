//! `cargo xtask fuzz-seeds`: writes the starting inputs of the fuzz targets into
//! `fuzz/corpus/TARGET/seed-*` (committed): small valid files of each kind, from the `mae`
//! binary where one writes them (weights, a checkpoint, a dataset) and made here otherwise
//! (images, idx and CIFAR-10 records, TOML settings), plus variants without their checksums so
//! that mutations reach past the checksum check.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{root, run_mae};

fn write(corpus: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = corpus.join(target);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Two files as one fuzz input: a little-endian u32 length, the first, then the second.
fn pair(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = (a.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out
}

/// A safetensors file with its `checksum` metadata entry taken out (the header rewritten).
fn without_checksum(bytes: &[u8]) -> Result<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
    if let Some(meta) = header
        .get_mut("__metadata__")
        .and_then(|m| m.as_object_mut())
    {
        meta.remove("checksum");
    }
    let mut text = header.to_string();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// A safetensors file of f32 tensors in Hugging Face ViTMAE names (no checksum).
fn hugging_face_seed() -> Vec<u8> {
    let names = [
        ("vit.embeddings.cls_token", vec![1, 1, 4]),
        (
            "vit.encoder.layer.0.attention.attention.query.weight",
            vec![4, 4],
        ),
        (
            "vit.encoder.layer.0.attention.attention.key.weight",
            vec![4, 4],
        ),
        (
            "vit.encoder.layer.0.attention.attention.value.weight",
            vec![4, 4],
        ),
        (
            "vit.encoder.layer.0.attention.attention.query.bias",
            vec![4],
        ),
        ("vit.encoder.layer.0.attention.attention.key.bias", vec![4]),
        (
            "vit.encoder.layer.0.attention.attention.value.bias",
            vec![4],
        ),
        ("vit.encoder.layer.0.layernorm_before.weight", vec![4]),
        ("decoder.decoder_pred.bias", vec![4]),
    ];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape) in names {
        let count: usize = shape.iter().product();
        let start = data.len();
        data.extend((0..count).flat_map(|i| (i as f32 * 0.25).to_le_bytes()));
        header.insert(
            name.into(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend(data);
    out
}

fn image_seeds(corpus: &Path) -> Result<()> {
    let img = image::RgbImage::from_fn(13, 7, |x, y| {
        image::Rgb([(x * 19) as u8, (y * 37) as u8, ((x ^ y) * 11) as u8])
    });
    let formats = [
        ("jpg", image::ImageFormat::Jpeg),
        ("png", image::ImageFormat::Png),
        ("gif", image::ImageFormat::Gif),
        ("webp", image::ImageFormat::WebP),
        ("bmp", image::ImageFormat::Bmp),
        ("tiff", image::ImageFormat::Tiff),
        ("ppm", image::ImageFormat::Pnm),
    ];
    for (ext, format) in formats {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut bytes, format)?;
        let bytes = bytes.into_inner();
        write(corpus, "image", ext, &bytes)?;
        if ext == "jpg" {
            write(corpus, "image", "jpg-truncated", &bytes[..bytes.len() / 2])?;
        }
    }
    Ok(())
}

fn record_seeds(corpus: &Path) -> Result<()> {
    let mut idx3 = vec![0, 0, 8, 3];
    for d in [2u32, 3, 3] {
        idx3.extend_from_slice(&d.to_be_bytes());
    }
    idx3.extend((0..18).map(|i| i as u8 * 13));
    write(corpus, "idx", "images", &idx3)?;
    let mut idx1 = vec![0, 0, 8, 1];
    idx1.extend_from_slice(&2u32.to_be_bytes());
    idx1.extend([3, 7]);
    write(corpus, "idx", "labels", &idx1)?;
    let cifar: Vec<u8> = std::iter::once(4u8)
        .chain((0..3072).map(|i| (i % 251) as u8))
        .collect();
    write(corpus, "idx", "cifar", &cifar)?;
    let configs = [
        ("full", "data = \"d\"\npreset = \"tiny\"\nout = \"o\"\nepochs = 3\nbatch_size = 32\naccum_iter = 4\nblr = 1.5e-4\nnorm_pix_loss = true\nmask_ratio = 0.6\nwarmup_epochs = 0.5\nsave_every = 10\nkeep_last = 2\n"),
        ("lr", "lr = 1e-3\nmin_lr = 0.0\nweight_decay = 0.05\nseed = 7\nmax_steps = 100\n"),
        ("device", "device = \"cpu\"\nprecision = \"amp-f16\"\neval_every = 1\ninput_size = 28\n"),
    ];
    for (name, text) in configs {
        write(corpus, "config", name, text.as_bytes())?;
    }
    Ok(())
}

/// A small image folder of 32×32 pictures in two classes, prepared at `size`.
fn prepared(tmp: &Path, size: usize) -> Result<PathBuf> {
    let src = tmp.join("src");
    for (class, shade) in [("a", 40u8), ("b", 200u8)] {
        let dir = src.join(class);
        std::fs::create_dir_all(&dir)?;
        for i in 0..3u32 {
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb([shade, (x * 8) as u8, (y * 8 + i * 30) as u8])
            });
            img.save(dir.join(format!("{i}.png")))?;
        }
    }
    let out = tmp.join(format!("ds{size}"));
    let s = |p: &Path| p.display().to_string();
    run_mae(
        &[
            "data",
            "prepare",
            "--from",
            "imagefolder",
            &s(&src),
            "--out",
            &s(&out),
            "--size",
            &size.to_string(),
            "--val-fraction",
            "0",
            "--force",
        ]
        .map(String::from),
    )?;
    Ok(out)
}

fn model_seeds(corpus: &Path, tmp: &Path) -> Result<()> {
    let s = |p: &Path| p.display().to_string();
    let init = tmp.join("init.safetensors");
    run_mae(&["init", "--preset", "parity", "--out", &s(&init), "--force"].map(String::from))?;
    let bytes = std::fs::read(&init)?;
    write(corpus, "weights", "parity", &bytes)?;
    write(
        corpus,
        "weights",
        "parity-no-checksum",
        &without_checksum(&bytes)?,
    )?;
    write(corpus, "weights", "hugging-face", &hugging_face_seed())?;

    let tiny = prepared(tmp, 4)?;
    let manifest = std::fs::read(tiny.join("manifest.json"))?;
    let shard = std::fs::read(tiny.join("train-00000.shard"))?;
    write(corpus, "dataset", "two-classes", &pair(&manifest, &shard))?;

    let data = prepared(tmp, 32)?;
    let run = tmp.join("run");
    run_mae(
        &[
            "pretrain",
            "--data",
            &s(&data),
            "--preset",
            "parity",
            "--out",
            &s(&run),
            "--batch-size",
            "2",
            "--max-steps",
            "3",
            "--epochs",
            "2",
            "--workers",
            "1",
        ]
        .map(String::from),
    )?;
    let model = std::fs::read(run.join("checkpoint-3.safetensors"))?;
    let state = std::fs::read(run.join("checkpoint-3.state.safetensors"))?;
    write(corpus, "checkpoint", "parity-3", &pair(&model, &state))?;
    let bare = pair(&without_checksum(&model)?, &without_checksum(&state)?);
    write(corpus, "checkpoint", "parity-3-no-checksum", &bare)?;
    Ok(())
}

/// Writes every seed.
pub fn fuzz_seeds() -> Result<()> {
    let corpus = root().join("fuzz/corpus");
    let tmp = std::env::temp_dir().join(format!("mae-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = image_seeds(&corpus)
        .and_then(|()| record_seeds(&corpus))
        .and_then(|()| model_seeds(&corpus, &tmp));
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    println!("seeds written to {}", corpus.display());
    Ok(())
}
