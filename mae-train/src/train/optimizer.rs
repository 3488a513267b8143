//! What the engine and the checkpoints need of an optimizer: its state as named tensors and
//! metadata, and that state read back strictly (every tensor present, of the parameter's size,
//! finite; nothing applied until all of it is read).
//!
//! PyTorch counterpart: `optimizer.state_dict()` / `optimizer.load_state_dict()` as
//! `util/misc.save_model` / `load_model` use them. Implemented by [`AdamW`] (pretraining and
//! fine-tuning); the linear probe's LARS ([`crate::probe::Lars`]) is to implement it when the
//! probe trains on the engine.

use std::collections::{BTreeMap, BTreeSet};

use mae_core::weights::NamedTensor;
use mae_core::TensorFile;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optim::{AdamW, Moments};

/// An optimizer whose state a checkpoint holds.
pub trait Optimizer {
    /// A checkpoint's state, read and checked, not yet taken up.
    type Saved;
    /// The hyper-parameters and the step count: the state file's `optimizer` metadata (JSON).
    fn meta_json(&self) -> serde_json::Result<String>;
    /// The per-parameter state as named tensors (`exp_avg.<name>`, ...).
    fn state_tensors(&self) -> Result<Vec<NamedTensor>, TrainError>;
    /// The state in a checkpoint's state `file` (`meta`: its `optimizer` metadata) for the
    /// model's trainable `params`; `bad` makes an error that names the file.
    fn read_saved(
        meta: &str,
        file: &TensorFile,
        params: &[NamedTensor],
        bad: &dyn Fn(String) -> TrainError,
    ) -> Result<Self::Saved, TrainError>;
    /// Takes up a checkpoint's state.
    fn restore(&mut self, saved: Self::Saved);
}

/// The state tensor `{kind}.{name}` of one parameter (`[n]`).
pub fn state_tensor(kind: &str, name: &str, data: &[f32]) -> NamedTensor {
    NamedTensor {
        name: format!("{kind}.{name}"),
        shape: vec![data.len()],
        data: data.to_vec(),
        trainable: false,
    }
}

/// Reads the state tensor `{kind}.{p.name}` of `file`: present, of `p`'s size, finite.
pub fn read_state_tensor(
    file: &TensorFile,
    kind: &str,
    p: &NamedTensor,
    bad: &dyn Fn(String) -> TrainError,
) -> Result<Vec<f32>, TrainError> {
    let key = format!("{kind}.{}", p.name);
    let t = file
        .read(&key)?
        .ok_or_else(|| bad(format!("missing tensor `{key}`")))?;
    if t.data.len() != p.data.len() || t.data.iter().any(|v| !v.is_finite()) {
        return Err(bad(format!(
            "tensor `{key}` has {} values (or non-finite ones), the model needs {}",
            t.data.len(),
            p.data.len()
        )));
    }
    Ok(t.data)
}

/// The metadata JSON `meta` as `T`.
pub fn parse_meta<T: serde::de::DeserializeOwned>(
    meta: &str,
    bad: &dyn Fn(String) -> TrainError,
) -> Result<T, TrainError> {
    serde_json::from_str(meta).map_err(|e| bad(format!("optimizer: {e}")))
}

/// AdamW's checkpoint metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdamWMeta {
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    step: u64,
    decayed: BTreeSet<String>,
}

impl Optimizer for AdamW {
    type Saved = (AdamWMeta, BTreeMap<String, Moments>);

    fn meta_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(&AdamWMeta {
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step: self.step,
            decayed: self.decayed.clone(),
        })
    }

    fn state_tensors(&self) -> Result<Vec<NamedTensor>, TrainError> {
        let moments = self.moments()?;
        let mut tensors = Vec::with_capacity(2 * moments.len());
        for (name, m) in moments.iter() {
            tensors.push(state_tensor("exp_avg", name, &m.exp_avg));
            tensors.push(state_tensor("exp_avg_sq", name, &m.exp_avg_sq));
        }
        Ok(tensors)
    }

    fn read_saved(
        meta: &str,
        file: &TensorFile,
        params: &[NamedTensor],
        bad: &dyn Fn(String) -> TrainError,
    ) -> Result<Self::Saved, TrainError> {
        let meta: AdamWMeta = parse_meta(meta, bad)?;
        let mut moments = BTreeMap::new();
        if meta.step > 0 {
            for p in params {
                let m = Moments {
                    exp_avg: read_state_tensor(file, "exp_avg", p, bad)?,
                    exp_avg_sq: read_state_tensor(file, "exp_avg_sq", p, bad)?,
                };
                moments.insert(p.name.clone(), m);
            }
        }
        Ok((meta, moments))
    }

    fn restore(&mut self, (meta, moments): Self::Saved) {
        self.betas = meta.betas;
        self.eps = meta.eps;
        self.weight_decay = meta.weight_decay;
        self.step = meta.step;
        self.decayed = meta.decayed;
        self.set_moments(moments);
    }
}
