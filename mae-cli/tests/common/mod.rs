//! What the `mae` command-line tests share: running the binary, a scratch folder with the bundled
//! Fashion-MNIST prepared into it, the pretraining flags of a short run, and checkpoint
//! comparisons.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn mae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(args)
        .output()
        .unwrap()
}

/// The bundled Fashion-MNIST (idx files), as `mae data prepare` reads it.
pub fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist")
}

/// A fresh `tiny` MAE (`mae init`) written to `dir/init.safetensors`; its path.
pub fn init_tiny(dir: &Path) -> PathBuf {
    let ckpt = dir.join("init.safetensors");
    run_ok(&["init", "--preset", "tiny", "--out", ckpt.to_str().unwrap()]);
    ckpt
}

/// `mae data prepare --from idx BUNDLED --out OUT EXTRA...`
pub fn prepare_bundled(out: &Path, extra: &[&str]) -> Output {
    let src = bundled();
    let mut args = vec![
        "data",
        "prepare",
        "--from",
        "idx",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    mae(&args)
}

/// One test's scratch directory, removed when the test ends (pass or fail), with the bundled
/// Fashion-MNIST prepared into it.
pub struct Scratch {
    dir: tempfile::TempDir,
    data: String,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mae-cli-pretrain-")
            .tempdir()
            .unwrap();
        let out = dir.path().join("fmnist");
        let r = prepare_bundled(&out, &[]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let data = out.to_str().unwrap().to_string();
        Scratch { dir, data }
    }

    /// The prepared dataset.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// A fresh sub-directory.
    pub fn sub(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

/// A small labeled dataset prepared into `scratch`: `per_class` 28×28 grey images of each
/// `(class, shade)` (the shade plus a faint pattern), a quarter of each class held out for val.
/// Returns the prepared folder.
pub fn shades_dataset(scratch: &Scratch, classes: &[(&str, u8)], per_class: u8) -> PathBuf {
    let src = scratch.sub("shades");
    for &(class, shade) in classes {
        std::fs::create_dir_all(src.join(class)).unwrap();
        for i in 0..per_class {
            let img = image::GrayImage::from_fn(28, 28, |x, y| {
                image::Luma([shade.wrapping_add(((x + y) as u8 + i) % 9)])
            });
            img.save(src.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let data = scratch.sub("prepared").join("shades");
    run_ok(&[
        "data",
        "prepare",
        "--from",
        "imagefolder",
        src.to_str().unwrap(),
        "--out",
        data.to_str().unwrap(),
        "--size",
        "28",
        "--channels",
        "1",
        "--val-fraction",
        "0.25",
    ]);
    data
}

pub fn train_args<'a>(data: &'a str, out: &'a str, max_steps: &'a str) -> Vec<&'a str> {
    vec![
        "pretrain",
        "--data",
        data,
        "--preset",
        "tiny",
        "--out",
        out,
        "--batch-size",
        "16",
        "--epochs",
        "2",
        "--warmup-epochs",
        "0.05",
        "--blr",
        "1e-3",
        "--norm-pix-loss",
        "--save-every",
        "2",
        "--keep-last",
        "2",
        "--log-every",
        "1",
        "--workers",
        "2",
        "--max-steps",
        max_steps,
    ]
}

/// `args` with `flag`'s value set to `value` (replaced where the flag is given, else appended).
pub fn with_flag<'a>(mut args: Vec<&'a str>, flag: &'a str, value: &'a str) -> Vec<&'a str> {
    match args.iter().position(|a| *a == flag) {
        Some(at) => args[at + 1] = value,
        None => args.extend([flag, value]),
    }
    args
}

/// A fine-tuning of `tiny` from scratch (no pretrained encoder), `max_steps` optimizer steps.
pub fn finetune_args<'a>(data: &'a str, out: &'a str, max_steps: &'a str) -> Vec<&'a str> {
    vec![
        "finetune",
        "--from-scratch",
        "--preset",
        "tiny",
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        max_steps,
    ]
}

/// `args` resuming: `--resume auto` appended.
pub fn resumed(mut args: Vec<&str>) -> Vec<&str> {
    args.extend(["--resume", "auto"]);
    args
}

/// Flips one bit of the byte `from_end` bytes before the end of `path` (tensor data, in a
/// safetensors file).
pub fn flip_byte(path: &Path, from_end: usize) {
    let mut b = std::fs::read(path).unwrap();
    let n = b.len();
    b[n - from_end] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

/// Waits until `path` exists (a running command wrote it); fails after two minutes.
pub fn wait_for(path: &Path) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn run_ok(args: &[&str]) -> String {
    let r = mae(args);
    assert!(
        r.status.success(),
        "mae {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

pub fn weights(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

use mae_core::{HostTensor, TensorFile};

/// Calls `f(name, what, a, b)` for every tensor of two checkpoints, model file and training-state
/// file, after checking that both hold the same names and shapes (`what` names the tensor and the
/// two files, for messages).
fn for_each_tensor_pair(a: &Path, b: &Path, mut f: impl FnMut(&str, &str, HostTensor, HostTensor)) {
    for_each_tensor_of(a, b, &mut f);
    for_each_tensor_of(
        &mae_train::checkpoint::state_path(a),
        &mae_train::checkpoint::state_path(b),
        &mut f,
    );
}

/// [`for_each_tensor_pair`] for two safetensors files.
fn for_each_tensor_of(x: &Path, y: &Path, f: &mut impl FnMut(&str, &str, HostTensor, HostTensor)) {
    let (fx, fy) = (TensorFile::open(x).unwrap(), TensorFile::open(y).unwrap());
    let names = fx.names().unwrap();
    assert_eq!(names, fy.names().unwrap());
    for name in names {
        let (tx, ty) = (
            fx.read(&name).unwrap().unwrap(),
            fy.read(&name).unwrap().unwrap(),
        );
        let what = format!("{name} ({} vs {})", x.display(), y.display());
        assert_eq!(tx.shape, ty.shape, "{what}");
        f(&name, &what, tx, ty);
    }
}

/// Every tensor of two safetensors files (same names and shapes) to `rel` (L2 per tensor).
pub fn assert_close_files(a: &Path, b: &Path, rel: f64) {
    for_each_tensor_of(a, b, &mut |_, what, tx, ty| {
        assert_close(what, &tx.data, &ty.data, rel)
    });
}

/// Compares every tensor of two checkpoints (model and training state) bit for bit. The metadata
/// differs (the run directory is part of the configuration).
pub fn assert_same_checkpoint(a: &Path, b: &Path) {
    for_each_tensor_pair(a, b, |_, what, tx, ty| {
        let same = tx
            .data
            .iter()
            .zip(&ty.data)
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{what} differs");
    });
}

/// `‖a − b‖ ≤ rel · ‖b‖` (L2).
fn assert_close(what: &str, a: &[f32], b: &[f32], rel: f64) {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&p, &q) in a.iter().zip(b) {
        diff += (p as f64 - q as f64).powi(2);
        norm += (q as f64).powi(2);
    }
    let (diff, norm) = (diff.sqrt(), norm.sqrt());
    assert!(
        diff <= rel * norm,
        "{what}: ‖a − b‖ = {diff:e} > {rel:e} · ‖b‖ = {:e}",
        rel * norm
    );
}

/// Compares every tensor of two checkpoints (model and training state) to `rel`: per tensor,
/// `‖a − b‖ ≤ rel · ‖b‖` (L2), for runs that did the same arithmetic in another order (another
/// number of ranks).
///
/// One carve-out: the key third of each `attn.qkv.bias` (and its moments). Its gradient is exactly
/// zero in exact arithmetic (softmax does not change when a constant is added to every key's
/// score), so in any run its values are rounding noise that Adam's `m / (√v + ε)` scales up to
/// ~1% of a real update. It is checked to stay at that size: every difference at most a tenth of
/// the largest query-bias value of the same tensor.
pub fn assert_close_checkpoint(a: &Path, b: &Path, rel: f64) {
    for_each_tensor_pair(a, b, |name, what, tx, ty| {
        if !name.contains("attn.qkv.bias") {
            assert_close(what, &tx.data, &ty.data, rel);
            return;
        }
        let d = tx.data.len() / 3;
        let (q, k, v) = (0..d, d..2 * d, 2 * d..3 * d);
        assert_close(
            &format!("{what}, q"),
            &tx.data[q.clone()],
            &ty.data[q.clone()],
            rel,
        );
        assert_close(&format!("{what}, v"), &tx.data[v.clone()], &ty.data[v], rel);
        let q_max = ty.data[q].iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let k_diff = tx.data[k.clone()]
            .iter()
            .zip(&ty.data[k])
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            k_diff <= 0.1 * q_max,
            "{what}, k: max |a − b| = {k_diff:e} > 0.1 · max |q bias| = {:e}",
            0.1 * q_max
        );
    });
}

/// The `train_state` metadata of a checkpoint's state file, as JSON.
pub fn train_state(checkpoint: &Path) -> serde_json::Value {
    let file = TensorFile::open(mae_train::checkpoint::state_path(checkpoint)).unwrap();
    serde_json::from_str(&file.metadata().unwrap()["train_state"]).unwrap()
}

/// Optimizer steps the loss scaler of a mixed-precision checkpoint has seen: the clean ones since
/// its last change plus the skipped ones (all of them, while the scale has not grown).
pub fn loss_scaler_steps(state: &serde_json::Value) -> u64 {
    let scaler = &state["loss_scaler"];
    scaler["good_steps"].as_u64().unwrap() + scaler["skipped"].as_u64().unwrap()
}
