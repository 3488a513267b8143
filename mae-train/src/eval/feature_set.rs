//! A split's features with their labels ([`Features`], [`FeatureKind`]), and their files: `mae
//! embed` output as safetensors or NumPy `.npy`, and reading it back.
//!
//! PyTorch counterpart: what a user of the official code does by hand with `torch.save` /
//! `numpy.save` of the frozen encoder's features.

use std::path::Path;

use crate::error::TrainError;

/// Features of one split: `[n, dim]` row-major, with labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Feature width.
    pub dim: usize,
    /// cls token after the final norm, `[n, dim]`.
    pub cls: Vec<f32>,
    /// Mean of the patch tokens after the final norm, `[n, dim]`.
    pub avg: Vec<f32>,
    /// Labels (−1 when unlabeled).
    pub labels: Vec<i64>,
}

impl Features {
    /// No samples yet, room for `n` of width `dim`.
    pub fn with_capacity(dim: usize, n: usize) -> Self {
        Features {
            dim,
            cls: Vec::with_capacity(n * dim),
            avg: Vec::with_capacity(n * dim),
            labels: Vec::with_capacity(n),
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The `[n, dim]` rows of one kind of feature.
    pub fn select(&self, kind: FeatureKind) -> &[f32] {
        match kind {
            FeatureKind::Cls => &self.cls,
            FeatureKind::Avg => &self.avg,
        }
    }
}

/// Which feature a classifier uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    /// The cls token.
    #[default]
    Cls,
    /// The mean of the patch tokens.
    Avg,
}

impl FeatureKind {
    /// `cls` or `avg`, as parsed.
    pub fn name(self) -> &'static str {
        match self {
            FeatureKind::Cls => "cls",
            FeatureKind::Avg => "avg",
        }
    }
}

impl std::str::FromStr for FeatureKind {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cls" => Ok(FeatureKind::Cls),
            "avg" => Ok(FeatureKind::Avg),
            _ => Err(TrainError::Config(format!("feature `{s}`: cls or avg"))),
        }
    }
}

/// What features were computed from, recorded beside them (safetensors metadata, or the
/// `STEM.meta.json` beside `.npy` files): so that a row can be traced to its image and a label to
/// its class name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Provenance {
    /// Classes of the labels (0 for unlabeled images).
    pub num_classes: usize,
    /// Class names, label `k` is `class_names[k]` (empty when the source has none).
    #[serde(default)]
    pub class_names: Vec<String>,
    /// The prepared dataset: row `i` of split `S` is its split `S`'s sample `i`.
    #[serde(default)]
    pub dataset: Option<String>,
    /// The image files, row `i` of the `images` split is `paths[i]`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// The encoder's checkpoint.
    #[serde(default)]
    pub checkpoint: Option<String>,
}

/// Metadata keys of [`Provenance`] in a safetensors features file (values: JSON for the lists).
const CLASS_NAMES_KEY: &str = "class_names";
const DATASET_KEY: &str = "dataset";
const PATHS_KEY: &str = "paths";
const CHECKPOINT_KEY: &str = "checkpoint";

impl Provenance {
    fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        let mut meta = std::collections::BTreeMap::from([
            ("num_classes".to_string(), self.num_classes.to_string()),
            (
                mae_core::weights::WRITTEN_BY_KEY.to_string(),
                "mae embed".to_string(),
            ),
        ]);
        let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
        if !self.class_names.is_empty() {
            meta.insert(CLASS_NAMES_KEY.into(), json(&self.class_names));
        }
        if !self.paths.is_empty() {
            meta.insert(PATHS_KEY.into(), json(&self.paths));
        }
        for (key, value) in [
            (DATASET_KEY, &self.dataset),
            (CHECKPOINT_KEY, &self.checkpoint),
        ] {
            if let Some(v) = value {
                meta.insert(key.into(), v.clone());
            }
        }
        meta
    }
}

/// Writes features with labels as safetensors: `{split}.cls`, `{split}.avg` (`[n, dim]` f32)
/// and `{split}.labels` (`[n]` int64), with the [`Provenance`] in the metadata (`num_classes`,
/// `class_names` and `paths` as JSON lists, `dataset`, `checkpoint`). A path ending in `.npy`
/// writes one NumPy file per array instead, named `{stem}.{split}.{cls|avg|labels}.npy` (labels
/// as int64), and the provenance as `{stem}.meta.json`.
pub fn write_features(
    path: &Path,
    splits: &[(&str, &Features)],
    provenance: &Provenance,
) -> Result<Vec<std::path::PathBuf>, TrainError> {
    if path.extension().is_some_and(|e| e == "npy") {
        return write_npy_files(path, splits, provenance);
    }
    let mut tensors = Vec::new();
    let mut labels = Vec::new();
    for (name, f) in splits {
        let n = f.len();
        for (kind, data) in [("cls", &f.cls), ("avg", &f.avg)] {
            tensors.push(mae_core::NamedTensor {
                name: format!("{name}.{kind}"),
                shape: vec![n, f.dim],
                data: data.clone(),
                trainable: false,
            });
        }
        labels.push(mae_core::IndexTensor {
            name: format!("{name}.labels"),
            shape: vec![n],
            data: f.labels.clone(),
        });
    }
    mae_core::weights::write_safetensors_with_indices(
        path,
        &tensors,
        &labels,
        &provenance.metadata(),
    )?;
    Ok(vec![path.to_path_buf()])
}

/// The [`Provenance`] recorded in a features file written by [`write_features`]: a safetensors
/// file's metadata, or the `STEM.meta.json` beside `STEM.*.npy` files (for `path` = `STEM.npy`).
pub fn read_provenance(path: &Path) -> Result<Provenance, TrainError> {
    let bad = |m: String| TrainError::Config(format!("{}: {m}", path.display()));
    if path.extension().is_some_and(|e| e == "npy") {
        let meta = meta_json_path(path);
        let bytes = std::fs::read(&meta).map_err(|e| bad(format!("{}: {e}", meta.display())))?;
        return serde_json::from_slice(&bytes).map_err(|e| bad(format!("{}: {e}", meta.display())));
    }
    let meta = mae_core::TensorFile::open(path)?.metadata()?;
    let list = |key: &str| -> Result<Vec<String>, TrainError> {
        meta.get(key).map_or(Ok(Vec::new()), |v| {
            serde_json::from_str(v).map_err(|e| bad(format!("metadata `{key}`: {e}")))
        })
    };
    Ok(Provenance {
        num_classes: meta
            .get("num_classes")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        class_names: list(CLASS_NAMES_KEY)?,
        dataset: meta.get(DATASET_KEY).cloned(),
        paths: list(PATHS_KEY)?,
        checkpoint: meta.get(CHECKPOINT_KEY).cloned(),
    })
}

fn npy_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "features".into())
}

fn meta_json_path(path: &Path) -> std::path::PathBuf {
    path.with_file_name(format!("{}.meta.json", npy_stem(path)))
}

/// The files [`write_features`] writes for `path` and splits named `splits`: `path` itself, or
/// for a `.npy` path `STEM.SPLIT.{cls,avg,labels}.npy` beside it and `STEM.meta.json` last.
pub fn feature_files(path: &Path, splits: &[&str]) -> Vec<std::path::PathBuf> {
    if path.extension().is_none_or(|e| e != "npy") {
        return vec![path.to_path_buf()];
    }
    let stem = npy_stem(path);
    splits
        .iter()
        .flat_map(|name| {
            ["cls", "avg", "labels"]
                .map(|kind| path.with_file_name(format!("{stem}.{name}.{kind}.npy")))
        })
        .chain([meta_json_path(path)])
        .collect()
}

fn npy_bytes(descr: &str, shape: &[usize], data: Vec<u8>) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // magic (6) + version (2) + header length (2) + header + '\n', padded to 64 bytes
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

fn write_npy_files(
    path: &Path,
    splits: &[(&str, &Features)],
    provenance: &Provenance,
) -> Result<Vec<std::path::PathBuf>, TrainError> {
    let names: Vec<&str> = splits.iter().map(|(n, _)| *n).collect();
    let files = feature_files(path, &names);
    for ((_, f), paths) in splits.iter().zip(files.chunks_exact(3)) {
        let n = f.len();
        for (data, p) in [&f.cls, &f.avg].into_iter().zip(paths) {
            let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            mae_core::weights::write_atomic(p, &npy_bytes("<f4", &[n, f.dim], bytes))?;
        }
        let bytes = f.labels.iter().flat_map(|v| v.to_le_bytes()).collect();
        mae_core::weights::write_atomic(&paths[2], &npy_bytes("<i8", &[n], bytes))?;
    }
    let meta = serde_json::json!({
        "num_classes": provenance.num_classes,
        "class_names": provenance.class_names,
        "dataset": provenance.dataset,
        "paths": provenance.paths,
        "checkpoint": provenance.checkpoint,
        "written_by": "mae embed",
    });
    let text = serde_json::to_string_pretty(&meta).unwrap_or_default() + "\n";
    mae_core::weights::write_atomic(&meta_json_path(path), text.as_bytes())?;
    Ok(files)
}

/// The most classes a features file may declare (ImageNet-21k has 21,843).
pub const MAX_CLASSES: usize = 1 << 20;

/// Reads the train and val features of a file written by [`write_features`] (safetensors), and
/// the number of classes (its metadata, else the largest label + 1).
pub fn read_features(path: &Path) -> Result<(Features, Features, usize), TrainError> {
    let file = mae_core::TensorFile::open(path)?;
    let bad = |m: String| TrainError::Config(format!("{}: {m}", path.display()));
    let split = |name: &str| -> Result<Features, TrainError> {
        let get = |kind: &str| -> Result<mae_core::HostTensor, TrainError> {
            file.read(&format!("{name}.{kind}"))?
                .ok_or_else(|| bad(format!("no `{name}.{kind}` (not written by `mae embed`?)")))
        };
        let (cls, avg) = (get("cls")?, get("avg")?);
        // int64 labels; older files hold them as f32
        let labels = file
            .read_i64(&format!("{name}.labels"))?
            .ok_or_else(|| bad(format!("no `{name}.labels` (not written by `mae embed`?)")))?
            .data;
        let n = labels.len();
        let dim = cls.shape.get(1).copied().unwrap_or(0);
        if cls.shape != [n, dim] || avg.shape != [n, dim] || dim == 0 {
            return Err(bad(format!(
                "`{name}` features are {:?} / {:?} for {n} labels",
                cls.shape, avg.shape
            )));
        }
        Ok(Features {
            dim,
            cls: cls.data,
            avg: avg.data,
            labels,
        })
    };
    let (train, val) = (split("train")?, split("val")?);
    if train.dim != val.dim {
        return Err(bad("train and val features differ in width".into()));
    }
    let classes = match file.metadata()?.get("num_classes") {
        Some(c) => c
            .parse()
            .ok()
            .filter(|&c: &usize| c <= MAX_CLASSES)
            .ok_or_else(|| {
                bad(format!(
                    "num_classes `{c}` is not a number up to {MAX_CLASSES}"
                ))
            })?,
        None => train
            .labels
            .iter()
            .chain(&val.labels)
            .max()
            .map_or(0, |m| m.saturating_add(1).max(0) as usize),
    };
    if classes > MAX_CLASSES {
        return Err(bad(format!(
            "labels up to {} are more than {MAX_CLASSES} classes",
            classes - 1
        )));
    }
    Ok((train, val, classes))
}
