//! What the engine and the checkpoints need of an optimizer: its state as named tensors and
//! metadata, and that state read back strictly (every tensor present, of the parameter's size,
//! finite; nothing applied until all of it is read).
//!
//! PyTorch counterpart: `optimizer.state_dict()` / `optimizer.load_state_dict()` as
//! `util/misc.save_model` / `load_model` use them. Implemented by [`AdamW`] (pretraining,
//! fine-tuning, the probe's `--optimizer adamw`), [`LarsState`] (the linear probe's LARS,
//! [`crate::lars`]) and [`ProbeOpt`], the probe's choice of the two.

use std::collections::{BTreeMap, BTreeSet};

use mae_core::weights::NamedTensor;
use mae_core::TensorFile;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::lars::{Lars, LarsState};
use crate::optim::{AdamW, Moments};
use crate::probe::{ProbeOpt, ProbeOptimizer};

/// An optimizer whose state a checkpoint holds.
pub trait Optimizer {
    /// A checkpoint's state, read and checked, not yet taken up.
    type Saved;
    /// The hyper-parameters and the step count: the state file's `optimizer` metadata (JSON).
    fn meta_json(&self) -> serde_json::Result<String>;
    /// The per-parameter state as named tensors (`exp_avg.<name>`, ...).
    fn state_tensors(&self) -> Result<Vec<NamedTensor>, TrainError>;
    /// The state in a checkpoint's state `file` (`meta`: its `optimizer` metadata) for the
    /// model's trainable `params`; `bad` makes an error that names the file. Refuses the state
    /// of another optimizer than `self`.
    fn read_saved(
        &self,
        meta: &str,
        file: &TensorFile,
        params: &[NamedTensor],
        bad: &dyn Fn(String) -> TrainError,
    ) -> Result<Self::Saved, TrainError>;
    /// Takes up a checkpoint's state.
    fn restore(&mut self, saved: Self::Saved);
}

/// The state tensor `{kind}.{name}` of one parameter (`[n]`).
fn state_tensor(kind: &str, name: &str, data: &[f32]) -> NamedTensor {
    NamedTensor {
        name: format!("{kind}.{name}"),
        shape: vec![data.len()],
        data: data.to_vec(),
        trainable: false,
    }
}

/// Reads the state tensor `{kind}.{p.name}` of `file`: present, of `p`'s size, finite.
fn read_state_tensor(
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

/// The `optimizer` metadata JSON `meta` as `T`.
fn parse_meta<T: serde::de::DeserializeOwned>(
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
        &self,
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

/// LARS's checkpoint metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LarsMeta {
    momentum: f32,
    trust_coefficient: f32,
    weight_decay: f32,
    step: u64,
}

impl Optimizer for LarsState {
    type Saved = (LarsMeta, BTreeMap<String, Vec<f32>>);

    fn meta_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(&LarsMeta {
            momentum: self.lars.momentum,
            trust_coefficient: self.lars.trust_coefficient,
            weight_decay: self.lars.weight_decay,
            step: self.step,
        })
    }

    fn state_tensors(&self) -> Result<Vec<NamedTensor>, TrainError> {
        let buffers = self.momentum_buffers.iter();
        Ok(buffers
            .map(|(name, mu)| state_tensor("momentum_buffer", name, mu))
            .collect())
    }

    fn read_saved(
        &self,
        meta: &str,
        file: &TensorFile,
        params: &[NamedTensor],
        bad: &dyn Fn(String) -> TrainError,
    ) -> Result<Self::Saved, TrainError> {
        let meta: LarsMeta = parse_meta(meta, bad)?;
        let mut buffers = BTreeMap::new();
        if meta.step > 0 {
            for p in params {
                let mu = read_state_tensor(file, "momentum_buffer", p, bad)?;
                buffers.insert(p.name.clone(), mu);
            }
        }
        Ok((meta, buffers))
    }

    fn restore(&mut self, (meta, buffers): Self::Saved) {
        self.lars = Lars {
            momentum: meta.momentum,
            trust_coefficient: meta.trust_coefficient,
            weight_decay: meta.weight_decay,
        };
        self.step = meta.step;
        self.momentum_buffers = buffers;
    }
}

/// A checkpoint's state of the probe's optimizer.
pub enum ProbeSaved {
    /// LARS's.
    Lars(<LarsState as Optimizer>::Saved),
    /// AdamW's.
    AdamW(<AdamW as Optimizer>::Saved),
}

/// The metadata key that names the probe's optimizer (`lars`, `adamw`).
const KIND: &str = "kind";

impl Optimizer for ProbeOpt {
    type Saved = ProbeSaved;

    /// The chosen optimizer's metadata with its [`ProbeOptimizer`] name under `kind`.
    fn meta_json(&self) -> serde_json::Result<String> {
        let inner = match self {
            ProbeOpt::Lars(o) => o.meta_json()?,
            ProbeOpt::AdamW(o) => o.meta_json()?,
        };
        let mut value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&inner)?;
        value.insert(KIND.into(), serde_json::to_value(self.kind())?);
        serde_json::to_string(&value)
    }

    fn state_tensors(&self) -> Result<Vec<NamedTensor>, TrainError> {
        match self {
            ProbeOpt::Lars(o) => o.state_tensors(),
            ProbeOpt::AdamW(o) => o.state_tensors(),
        }
    }

    fn read_saved(
        &self,
        meta: &str,
        file: &TensorFile,
        params: &[NamedTensor],
        bad: &dyn Fn(String) -> TrainError,
    ) -> Result<Self::Saved, TrainError> {
        #[derive(Deserialize)]
        struct Kind {
            kind: ProbeOptimizer,
        }
        let saved: Kind = parse_meta(meta, bad)?;
        if saved.kind != self.kind() {
            return Err(bad(format!(
                "trained with --optimizer {}, this run asks for {}: resume with the same optimizer",
                saved.kind.name(),
                self.kind().name()
            )));
        }
        Ok(match self {
            ProbeOpt::Lars(o) => ProbeSaved::Lars(o.read_saved(meta, file, params, bad)?),
            ProbeOpt::AdamW(o) => ProbeSaved::AdamW(o.read_saved(meta, file, params, bad)?),
        })
    }

    /// Takes up `saved` ([`Optimizer::read_saved`] made it of this optimizer's kind; one of the
    /// other kind replaces it, hyper-parameters and all, as its metadata holds them).
    fn restore(&mut self, saved: ProbeSaved) {
        match (self, saved) {
            (ProbeOpt::Lars(o), ProbeSaved::Lars(s)) => o.restore(s),
            (ProbeOpt::AdamW(o), ProbeSaved::AdamW(s)) => o.restore(s),
            (this, ProbeSaved::Lars(s)) => {
                let mut o = LarsState::default();
                o.restore(s);
                *this = ProbeOpt::Lars(o);
            }
            (this, ProbeSaved::AdamW(s)) => {
                let mut o = AdamW::new(0.0, BTreeSet::new());
                o.restore(s);
                *this = ProbeOpt::AdamW(o);
            }
        }
    }
}
