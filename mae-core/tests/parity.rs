//! Parity with the PyTorch reference (`tools/reference/torch_mae.py`, which follows the official
//! `models_mae.py`): masking, latent, prediction, loss (raw and `norm_pix_loss`) and every
//! parameter gradient, relative error ‖ours − ref‖ / ‖ref‖ ≤ 1e-4 per tensor.
//!
//! Data-driven: every `tests/fixtures/*.safetensors` (or `$MAE_FIXTURES_DIR/*.safetensors`) plus
//! every file listed in `MAE_PARITY_FIXTURES` (colon-separated). The preset comes from the file's `meta.preset`.
//! Prints one line per fixture: its file name and the largest relative error.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mae_core::dfdx::prelude::*;
use mae_core::weights::named_gradients;
use mae_core::{tape_from, Mae, MaePreset, Masking, Preset, PresetVisitor, TensorFile};

const TOLERANCE: f64 = 1e-4;

fn fixture_files() -> Vec<PathBuf> {
    // `MAE_FIXTURES_DIR` where the test binary runs away from its source tree (a GPU machine)
    let dir = std::env::var_os("MAE_FIXTURES_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
        PathBuf::from,
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if let Ok(list) = std::env::var("MAE_PARITY_FIXTURES") {
        files.extend(list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    files
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
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

/// Where the checks run: the first GPU in a build with the `cuda` feature (`cargo xtask
/// gpu-build`, run on a GPU machine by `tools/gpu_check.sh`), the CPU otherwise. Same fixtures,
/// same tolerances.
#[cfg(feature = "cuda")]
type Dev = Cuda;
#[cfg(not(feature = "cuda"))]
type Dev = Cpu;

/// Running record of the comparisons of one fixture.
struct Report {
    file: String,
    worst: (f64, String),
    failures: Vec<String>,
    checked: usize,
}

impl Report {
    fn compare(&mut self, what: &str, ours: &[f32], reference: &[f32]) {
        self.checked += 1;
        if ours.len() != reference.len() {
            self.failures.push(format!(
                "{what}: {} values, reference has {}",
                ours.len(),
                reference.len()
            ));
            return;
        }
        let e = rel_err(ours, reference);
        if e > self.worst.0 || self.worst.1.is_empty() {
            self.worst = (e, what.to_string());
        }
        if e.is_nan() || e > TOLERANCE {
            self.failures
                .push(format!("{what}: relative error {e:.3e} > {TOLERANCE:e}"));
        }
    }
}

impl Report {
    /// A formula fixture's summary of a tensor: `[Σx², Σx·probe]` with `probe =
    /// formula("probe." + name)`. The first within 2·TOLERANCE relative (it is squared), the
    /// second within TOLERANCE of `‖x‖·‖probe‖` (the error seen along a random direction).
    fn compare_summary(&mut self, what: &str, ours: &[f32], name: &str, reference: &[f32]) {
        self.checked += 1;
        let probe = formula_values(&format!("probe.{name}"), ours.len());
        let sq: f64 = ours.iter().map(|&v| v as f64 * v as f64).sum();
        let dot: f64 = ours.iter().zip(&probe).map(|(&v, p)| v as f64 * p).sum();
        let probe_norm = probe.iter().map(|p| p * p).sum::<f64>().sqrt();
        let (ref_sq, ref_dot) = (reference[0] as f64, reference[1] as f64);
        let e_sq = (sq - ref_sq).abs() / ref_sq.max(f64::MIN_POSITIVE) / 2.0;
        let e_dot = (dot - ref_dot).abs() / (ref_sq.sqrt() * probe_norm).max(f64::MIN_POSITIVE);
        let e = e_sq.max(e_dot);
        if e > self.worst.0 || self.worst.1.is_empty() {
            self.worst = (e, what.to_string());
        }
        if e.is_nan() || e > TOLERANCE {
            self.failures.push(format!(
                "{what}: summary error {e:.3e} > {TOLERANCE:e} (Σx² {sq} vs {ref_sq}, Σx·probe {dot} vs {ref_dot})"
            ));
        }
    }
}

/// `n` numbers in `[-1, 1)` on a 2⁻²³ grid from `(name, index)` alone: SplitMix64 of
/// `index · golden + fnv1a(name)`, as `formula` in `tools/reference/torch_mae.py`.
fn formula_values(name: &str, n: usize) -> Vec<f64> {
    let mut salt: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        salt = (salt ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..n as u64)
        .map(|i| {
            let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(salt);
            x ^= x >> 30;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 27;
            x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
            (x >> 40) as f64 / f64::from(1u32 << 23) - 1.0
        })
        .collect()
}

/// The weights of a formula fixture (`formula_weight` in `torch_mae.py`) under the official
/// names, the fixed position embeddings as the model has them.
fn formula_weights<P: MaePreset>(model: &Mae<P, f32, Dev>) -> TensorFile {
    let mut tensors = mae_core::weights::named_tensors(model).unwrap();
    for t in tensors.iter_mut().filter(|t| t.trainable) {
        let u = formula_values(&t.name, t.data.len());
        let is_norm_weight =
            t.shape.len() == 1 && t.name.contains("norm") && t.name.ends_with("weight");
        t.data = if is_norm_weight {
            u.iter().map(|u| (1.0 + 0.1 * u) as f32).collect()
        } else if t.shape.len() == 1 || t.name.contains("token") {
            u.iter().map(|u| (0.02 * u) as f32).collect()
        } else {
            let fan_in: usize = t.shape[1..].iter().product();
            let scale = (3.0 / fan_in as f64).sqrt();
            u.iter().map(|u| (u * scale) as f32).collect()
        };
    }
    let path = Path::new("formula-weights");
    let bytes = mae_core::weights::safetensors_bytes(path, &tensors, &BTreeMap::new()).unwrap();
    TensorFile::from_bytes(path, bytes).unwrap()
}

fn meta(file: &TensorFile) -> serde_json::Value {
    let meta = file.metadata().unwrap();
    serde_json::from_str(meta.get("meta").expect("fixture has __metadata__.meta")).unwrap()
}

struct Check<'a> {
    file: &'a TensorFile,
    report: &'a mut Report,
}

impl PresetVisitor for Check<'_> {
    type Output = ();
    fn visit<P: MaePreset>(self) -> Self::Output {
        let Check { file, report } = self;
        let meta = meta(file);
        let dims = P::PRESET.dims();
        for (key, ours) in [
            ("img", dims.img_size),
            ("patch", dims.patch_size),
            ("chans", dims.in_chans),
            ("dim", dims.embed_dim),
            ("depth", dims.depth),
            ("heads", dims.num_heads),
            ("decoder_dim", dims.decoder_embed_dim),
            ("decoder_depth", dims.decoder_depth),
            ("decoder_heads", dims.decoder_num_heads),
        ] {
            if let Some(theirs) = meta.get(key).and_then(|v| v.as_u64()) {
                assert_eq!(theirs as usize, ours, "{}: meta.{key}", report.file);
            }
        }
        let mask_ratio = meta["mask_ratio"].as_f64().expect("meta.mask_ratio");

        let formula = meta.get("weights").and_then(|v| v.as_str()) == Some("formula");

        let dev = Dev::seed_from_u64(0);
        let mut model = Mae::<P, f32, Dev>::new(&dev).unwrap();
        let read = |name: &str| {
            file.read(name)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}"))
                .data
        };
        let l = P::num_patches();
        let (imgs, noise) = if formula {
            model.load_from(&formula_weights(&model), "").unwrap();
            let batch = read("expect.mask").len() / l;
            let imgs = formula_values("input.imgs", batch * P::image_numel());
            let noise = formula_values("input.noise", batch * l);
            (
                imgs.iter().map(|u| (2.0 * u) as f32).collect(),
                noise.iter().map(|u| (0.5 + 0.5 * u) as f32).collect(),
            )
        } else {
            model.load_from(file, "model.").unwrap();
            (read("input.imgs"), read("input.noise"))
        };
        let batch = imgs.len() / P::image_numel();
        let masking = Masking::from_noise(&noise, batch, l, mask_ratio).unwrap();
        report.compare("mask", &masking.mask, &read("expect.mask"));
        let ids_restore: Vec<f32> = masking.ids_restore.iter().map(|&i| i as f32).collect();
        report.compare("ids_restore", &ids_restore, &read("expect.ids_restore"));
        if masking.mask != read("expect.mask") || ids_restore != read("expect.ids_restore") {
            report.failures.push("masking differs exactly".into());
        }

        let param_names: Vec<String> = mae_core::weights::named_tensors(&model)
            .unwrap()
            .into_iter()
            .filter(|t| t.trainable)
            .map(|t| t.name)
            .collect();
        for tag in ["raw", "norm_pix"] {
            let norm_pix = tag == "norm_pix";
            let grads = model.alloc_grads();
            let out = model
                .forward(&imgs, &masking, norm_pix, tape_from(&dev, grads))
                .unwrap();
            report.compare(
                &format!("{tag}.loss"),
                &[out.loss.array()],
                &read(&format!("expect.{tag}.loss")),
            );
            if formula {
                report.compare_summary(
                    &format!("{tag}.pred"),
                    &out.pred.as_vec(),
                    "pred",
                    &read(&format!("expect.{tag}.predsum")),
                );
            } else {
                report.compare(
                    &format!("{tag}.pred"),
                    &out.pred.as_vec(),
                    &read(&format!("expect.{tag}.pred")),
                );
            }
            if !norm_pix {
                report.compare("latent", &out.latent.as_vec(), &read("expect.latent"));
            }
            let grads = out.loss.backward();
            let kind = if formula { "gradsum" } else { "grad" };
            let prefix = format!("expect.{tag}.{kind}.");
            let expected: Vec<String> = file
                .names()
                .unwrap()
                .into_iter()
                .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
                .collect();
            if expected.is_empty() {
                continue;
            }
            let mut ours = BTreeMap::new();
            for g in named_gradients(&model, &grads).unwrap() {
                ours.insert(g.name.clone(), g);
            }
            let mut expected_sorted = expected.clone();
            expected_sorted.sort();
            let mut names = param_names.clone();
            names.sort();
            assert_eq!(
                names, expected_sorted,
                "{}: trainable parameters vs fixture gradients",
                report.file
            );
            for name in expected {
                let g = &ours[&name];
                let expected = file.read(&format!("{prefix}{name}")).unwrap().unwrap();
                let (shape, reference) = (expected.shape, expected.data);
                if formula {
                    report.compare_summary(
                        &format!("{tag}.grad.{name}"),
                        &g.data,
                        &name,
                        &reference,
                    );
                    continue;
                }
                assert_eq!(g.shape, shape, "{}: shape of grad {name}", report.file);
                report.compare(&format!("{tag}.grad.{name}"), &g.data, &reference);
            }
        }
    }
}

#[test]
fn parity_with_the_reference_implementation() {
    let files = fixture_files();
    assert!(!files.is_empty(), "no fixtures found");
    let mut failures = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let file = TensorFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let preset_name = meta(&file)["preset"]
            .as_str()
            .unwrap_or("<missing>")
            .to_string();
        let preset: Preset = match preset_name.parse() {
            Ok(p) => p,
            Err(e) => panic!("{name}: fixture preset is unknown: {e}"),
        };
        let mut report = Report {
            file: name.clone(),
            worst: (0.0, String::new()),
            failures: Vec::new(),
            checked: 0,
        };
        preset.visit(Check {
            file: &file,
            report: &mut report,
        });
        println!(
            "{name}: preset {preset}, {} tensors checked, largest relative error {:.3e} ({})",
            report.checked, report.worst.0, report.worst.1
        );
        failures.extend(report.failures.iter().map(|f| format!("{name}: {f}")));
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
