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

/// Writes train and val features with labels as safetensors: `{split}.cls`, `{split}.avg`
/// (`[n, dim]` f32) and `{split}.labels` (`[n]`, f32 holding the integer labels), metadata
/// `num_classes`. A path ending in `.npy` writes one NumPy file per array instead, named
/// `{stem}.{split}.{cls|avg|labels}.npy` (labels as int64).
pub fn write_features(
    path: &Path,
    splits: &[(&str, &Features)],
    num_classes: usize,
) -> Result<Vec<std::path::PathBuf>, TrainError> {
    if path.extension().is_some_and(|e| e == "npy") {
        return write_npy_files(path, splits);
    }
    let mut tensors = Vec::new();
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
        tensors.push(mae_core::NamedTensor {
            name: format!("{name}.labels"),
            shape: vec![n],
            data: f.labels.iter().map(|&l| l as f32).collect(),
            trainable: false,
        });
    }
    let meta = std::collections::BTreeMap::from([
        ("num_classes".to_string(), num_classes.to_string()),
        (
            mae_core::weights::WRITTEN_BY_KEY.to_string(),
            "mae embed".to_string(),
        ),
    ]);
    mae_core::weights::write_safetensors(path, &tensors, &meta)?;
    Ok(vec![path.to_path_buf()])
}

/// The files [`write_features`] writes for `path` and splits named `splits`: `path` itself, or
/// for a `.npy` path `STEM.SPLIT.{cls,avg,labels}.npy` beside it.
pub fn feature_files(path: &Path, splits: &[&str]) -> Vec<std::path::PathBuf> {
    if path.extension().is_none_or(|e| e != "npy") {
        return vec![path.to_path_buf()];
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "features".into());
    splits
        .iter()
        .flat_map(|name| {
            ["cls", "avg", "labels"]
                .map(|kind| path.with_file_name(format!("{stem}.{name}.{kind}.npy")))
        })
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
        let (cls, avg, labels) = (get("cls")?, get("avg")?, get("labels")?);
        let n = labels.data.len();
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
            labels: labels.data.iter().map(|&l| l as i64).collect(),
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
