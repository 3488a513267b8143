//! Checkpoints: the mechanism (write, list, load, prune), separate from the policy of when to save
//! (the training loop's `--save-every`).
//!
//! PyTorch counterpart: `util/misc.save_model` / `load_model` (`checkpoint-{epoch}.pth` holding
//! `model`, `optimizer`, `epoch`, `scaler`, `args`).
//!
//! A checkpoint at optimizer step `s` is two safetensors files in the run directory:
//! - `checkpoint-s.safetensors`: the model under the official `models_mae.py` names, with metadata
//!   `preset`, `config` (JSON), `step`, `epoch`;
//! - `checkpoint-s.state.safetensors`: the training state: the optimizer's per-parameter tensors
//!   ([`Optimizer::state_tensors`]: AdamW's `exp_avg.<name>` and `exp_avg_sq.<name>`, LARS's
//!   `momentum_buffer.<name>`), and metadata `train_state` (JSON: step, epoch, position in the
//!   epoch, seed) and `optimizer` (JSON: its hyper-parameters and step).
//!
//! Each is written to a temporary file, synced and renamed; the state first, so a model file
//! never exists without its state (an orphan state file of an interrupted save is removed by the
//! next run, [`crate::rundir`]). Both carry a content checksum (`checksum` metadata, verified
//! whenever they are opened: a flipped byte is an error naming the file) and `written_by`. A
//! loaded state must agree with its file name's step. Masking noise and augmentation are
//! functions of `(seed, epoch, position)`, so no RNG stream needs saving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mae_core::dfdx::prelude::*;
use mae_core::weights::{named_tensors, write_safetensors, NamedTensor, WRITTEN_BY_KEY};
use mae_core::{Classifier, Mae, MaeDevice, MaePreset, Preset, TensorFile};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optimizer::Optimizer;

/// Where training stands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Epoch being run (or to run next).
    pub epoch: u64,
    /// Micro-batches of `epoch` already consumed.
    pub micro_step: usize,
    /// The run's seed.
    pub seed: u64,
    /// Images per micro-batch over all ranks (`batch_size · world_size`) when the state was
    /// saved, so that a run resumed with another world size finds its place in the epoch (0 in
    /// checkpoints from before this field: taken as unchanged).
    #[serde(default)]
    pub global_micro_batch: usize,
    /// The loss scaler of a mixed-precision run (`None` in f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<crate::amp::LossScaler>,
}

/// A model that checkpoints save and load: the MAE in pretraining, the classifier in
/// fine-tuning.
pub trait Checkpointable {
    /// The command whose checkpoints these are (their `written_by` metadata).
    const WRITER: &'static str;
    /// Every tensor, official names and shapes.
    fn tensors(&self) -> Result<Vec<NamedTensor>, TrainError>;
    /// Writes the model file (atomically) with `metadata`.
    fn save_model(
        &self,
        path: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), TrainError>;
    /// Loads the model file strictly; unchanged on error.
    fn load_model(&mut self, file: &TensorFile) -> Result<(), TrainError>;
}

impl<P: MaePreset, D: Device<f32>> Checkpointable for Mae<P, f32, D> {
    const WRITER: &'static str = "mae pretrain";
    fn tensors(&self) -> Result<Vec<NamedTensor>, TrainError> {
        Ok(named_tensors(self)?)
    }
    fn save_model(
        &self,
        path: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), TrainError> {
        Ok(self.save_safetensors(path, metadata)?)
    }
    fn load_model(&mut self, file: &TensorFile) -> Result<(), TrainError> {
        Ok(self.load_from(file, "")?)
    }
}

impl<P: MaePreset, D: MaeDevice> Checkpointable for Classifier<P, D> {
    const WRITER: &'static str = "mae finetune";
    fn tensors(&self) -> Result<Vec<NamedTensor>, TrainError> {
        Ok(self.named_tensors()?)
    }
    fn save_model(
        &self,
        path: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), TrainError> {
        Ok(self.save_safetensors(path, metadata)?)
    }
    fn load_model(&mut self, file: &TensorFile) -> Result<(), TrainError> {
        Ok(self.load_from(file, "")?)
    }
}

/// The model file of the checkpoint at `step`.
pub fn checkpoint_path(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(format!("checkpoint-{step}.safetensors"))
}

/// The training-state file that belongs to a model checkpoint file.
pub fn state_path(model_path: &Path) -> PathBuf {
    let name = model_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".safetensors").unwrap_or(&name);
    model_path.with_file_name(format!("{stem}.state.safetensors"))
}

/// The step in a `checkpoint-N.safetensors` file name.
pub fn step_of_name(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// The step in a `checkpoint-N.state.safetensors` file name.
pub fn step_of_state_name(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .strip_suffix(".state.safetensors")?
        .parse()
        .ok()
}

/// The step of `path` if it is a state file whose model file is missing (a save killed between
/// its two renames leaves one: the state is written first).
pub fn orphan_state_step(path: &Path) -> Option<u64> {
    let step = step_of_state_name(path)?;
    let dir = path.parent()?;
    (!checkpoint_path(dir, step).exists()).then_some(step)
}

/// The model checkpoints in `run_dir`, newest (highest step) first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(run_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(TrainError::io(run_dir, e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Some(step) = step_of_name(&path) {
            found.push((step, path));
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(found)
}

/// Writes the checkpoint of `state` and keeps only the newest `keep_last` up to it
/// ([`prune`]): the one just written is never among those removed.
pub fn save<M: Checkpointable, O: Optimizer>(
    run_dir: &Path,
    model: &M,
    opt: &O,
    state: &TrainState,
    config_json: &str,
    keep_last: usize,
) -> Result<PathBuf, TrainError> {
    let model_path = checkpoint_path(run_dir, state.step);
    // training state first
    let tensors = opt.state_tensors()?;
    let to_json = |r: serde_json::Result<String>| {
        r.map_err(|e| TrainError::checkpoint(&model_path, format!("metadata: {e}")))
    };
    let meta = BTreeMap::from([
        (
            "train_state".to_string(),
            to_json(serde_json::to_string(state))?,
        ),
        ("optimizer".to_string(), to_json(opt.meta_json())?),
        (WRITTEN_BY_KEY.to_string(), M::WRITER.to_string()),
    ]);
    write_safetensors(&state_path(&model_path), &tensors, &meta)?;
    let meta = BTreeMap::from([
        ("config".to_string(), config_json.to_string()),
        ("step".to_string(), state.step.to_string()),
        ("epoch".to_string(), state.epoch.to_string()),
        (WRITTEN_BY_KEY.to_string(), M::WRITER.to_string()),
    ]);
    model.save_model(&model_path, &meta)?;
    prune(run_dir, keep_last, state.step)?;
    Ok(model_path)
}

/// Deletes the checkpoints (model and state files) of steps up to `step` but the newest
/// `keep_last` of them (at least 1: the newest, `step`'s own, always stays). Checkpoints past
/// `step` are left alone: a run resumed past newer, unloadable ones (`--resume auto`) must not
/// count them (pruning by step would otherwise delete the checkpoint it just wrote).
pub fn prune(run_dir: &Path, keep_last: usize, step: u64) -> Result<(), TrainError> {
    remove_orphan_states(run_dir, step)?;
    let up_to_step = list_checkpoints(run_dir)?
        .into_iter()
        .filter(|(s, _)| *s <= step);
    for (_, path) in up_to_step.skip(keep_last.max(1)) {
        for p in [state_path(&path), path] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(TrainError::io(&p, e)),
            }
        }
    }
    Ok(())
}

/// Removes the orphan state files ([`orphan_state_step`]) of steps up to `step`.
fn remove_orphan_states(run_dir: &Path, step: u64) -> Result<(), TrainError> {
    let entries = std::fs::read_dir(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if orphan_state_step(&path).is_some_and(|s| s <= step) {
            std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, e))?;
        }
    }
    Ok(())
}

/// The preset a model file was saved with (its `preset` metadata), else, for weights from
/// elsewhere (`.pth`, Hugging Face, timm), the first preset whose shapes they have.
pub fn preset_of(path: &Path) -> Result<Preset, TrainError> {
    let (file, _) = mae_core::model_files::open_weights(path)?;
    let meta = file.metadata()?;
    if let Some(name) = meta.get("preset") {
        return Ok(name.parse()?);
    }
    let fits = mae_core::model_files::presets_matching(&file)?;
    fits.first().copied().ok_or_else(|| {
        TrainError::checkpoint(
            path,
            "no `preset` in the metadata and no preset has its shapes; give --preset",
        )
    })
}

/// Loads a checkpoint (model file + its state file) into `model` and `opt`; returns the state.
/// Nothing is changed when it fails.
pub fn load<M: Checkpointable, O: Optimizer>(
    model_path: &Path,
    model: &mut M,
    opt: &mut O,
) -> Result<TrainState, TrainError> {
    // the file asked for first, so that a missing or corrupt one is the error named
    let weights = TensorFile::open(model_path)?;
    let state_file_path = state_path(model_path);
    let file = TensorFile::open(&state_file_path)?;
    let meta = file.metadata()?;
    let bad = |m: String| TrainError::checkpoint(&state_file_path, m);
    let state: TrainState = serde_json::from_str(
        meta.get("train_state")
            .ok_or_else(|| bad("no train_state metadata".into()))?,
    )
    .map_err(|e| bad(format!("train_state: {e}")))?;
    if let Some(named) = step_of_name(model_path).filter(|n| *n != state.step) {
        return Err(bad(format!(
            "train_state says step {}, the file name says {named}",
            state.step
        )));
    }
    let optimizer = meta
        .get("optimizer")
        .ok_or_else(|| bad("no optimizer metadata".into()))?;
    // check the optimizer's state against the model's parameters before touching anything
    let params: Vec<NamedTensor> = model
        .tensors()?
        .into_iter()
        .filter(|t| t.trainable)
        .collect();
    let saved = opt.read_saved(optimizer, &file, &params, &bad)?;
    model.load_model(&weights)?;
    opt.restore(saved);
    Ok(state)
}

/// A newer checkpoint that `--resume auto` could not load, and why.
pub type Failure = (PathBuf, String);

/// `--resume auto`: the newest checkpoint of `run_dir` that loads. Returns its path and state,
/// and each newer checkpoint that failed to load with the reason.
pub fn resume_latest<M: Checkpointable, O: Optimizer>(
    run_dir: &Path,
    model: &mut M,
    opt: &mut O,
) -> Result<Option<(PathBuf, TrainState, Vec<Failure>)>, TrainError> {
    let mut failures = Vec::new();
    let candidates = list_checkpoints(run_dir)?;
    if candidates.is_empty() {
        return Ok(None);
    }
    for (_, path) in candidates {
        match load(&path, model, opt) {
            Ok(state) => return Ok(Some((path, state, failures))),
            Err(e) => failures.push((path, e.to_string())),
        }
    }
    Err(TrainError::NoCheckpoint {
        dir: run_dir.to_path_buf(),
        tried: failures.into_iter().map(|f| f.1).collect(),
    })
}
