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

        let dev = Dev::seed_from_u64(0);
        let mut model = Mae::<P, f32, Dev>::new(&dev).unwrap();
        model.load_from(file, "model.").unwrap();

        let read = |name: &str| {
            file.read(name)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}"))
                .data
        };
        let imgs = read("input.imgs");
        let noise = read("input.noise");
        let batch = imgs.len() / P::image_numel();
        let l = P::num_patches();
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
            report.compare(
                &format!("{tag}.pred"),
                &out.pred.as_vec(),
                &read(&format!("expect.{tag}.pred")),
            );
            if !norm_pix {
                report.compare("latent", &out.latent.as_vec(), &read("expect.latent"));
            }
            let grads = out.loss.backward();
            let prefix = format!("expect.{tag}.grad.");
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
