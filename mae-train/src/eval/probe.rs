//! Linear probing on cached encoder features: `BatchNorm1d(affine=False, eps=1e-6)` + Linear,
//! trained with LARS.
//!
//! PyTorch counterpart: `main_linprobe.py` (head = `Sequential(BatchNorm1d(D, affine=False,
//! eps=1e-6), Linear(D, classes))`, head weight `trunc_normal_(std=0.01)`, bias 0; LARS from
//! `util/lars.py` with momentum 0.9, trust coefficient 0.001, no decay and no trust scaling on 1-D
//! parameters; `lr = blr · batch / 256`, per-iteration warmup then half-cycle cosine). The encoder
//! is frozen, so its features are computed once (`--no-aug`, the official recipe minus the crop
//! augmentation) and the head trains on them in plain Rust.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::knn::Accuracy;
use crate::schedule::lr_at;

use crate::lars::{Lars, LarsState};

/// The checkpoint names of the probe's head (`Sequential(BatchNorm1d, Linear)`: `head.0` the
/// BatchNorm, `head.1` the linear layer).
pub const WEIGHT: &str = "head.1.weight";
/// See [`WEIGHT`].
pub const BIAS: &str = "head.1.bias";
/// See [`WEIGHT`].
pub const RUNNING_MEAN: &str = "head.0.running_mean";
/// See [`WEIGHT`].
pub const RUNNING_VAR: &str = "head.0.running_var";

/// The probe's optimizer with its state, as [`ProbeConfig::optimizer`] chooses.
#[derive(Debug)]
pub enum ProbeOpt {
    /// LARS.
    Lars(LarsState),
    /// AdamW (β 0.9/0.999), decay on [`WEIGHT`] only.
    AdamW(crate::optim::AdamW),
}

impl ProbeOpt {
    /// A fresh optimizer of `cfg`.
    pub fn new(cfg: &ProbeConfig) -> Self {
        match cfg.optimizer {
            ProbeOptimizer::Lars => ProbeOpt::Lars(LarsState {
                lars: Lars {
                    weight_decay: cfg.weight_decay,
                    ..Lars::default()
                },
                ..LarsState::default()
            }),
            ProbeOptimizer::AdamW => {
                let decayed = std::iter::once(WEIGHT.to_string()).collect();
                let mut adamw = crate::optim::AdamW::new(cfg.weight_decay as f64, decayed);
                adamw.betas = (0.9, 0.999);
                ProbeOpt::AdamW(adamw)
            }
        }
    }

    /// Which one it is.
    pub fn kind(&self) -> ProbeOptimizer {
        match self {
            ProbeOpt::Lars(_) => ProbeOptimizer::Lars,
            ProbeOpt::AdamW(_) => ProbeOptimizer::AdamW,
        }
    }

    /// One optimizer step of the head's weight `w` and bias `b` with gradients `gw`, `gb`.
    pub fn step(
        &mut self,
        (w, gw): (&mut [f32], &[f32]),
        (b, gb): (&mut [f32], &[f32]),
        lr: f64,
    ) -> Result<(), TrainError> {
        match self {
            ProbeOpt::Lars(o) => {
                o.step += 1;
                o.update_named(WEIGHT, w, gw, lr, true)?;
                o.update_named(BIAS, b, gb, lr, false)
            }
            ProbeOpt::AdamW(o) => {
                o.step += 1;
                o.update_named(WEIGHT, w, gw, lr)?;
                o.update_named(BIAS, b, gb, lr)
            }
        }
    }
}

/// `BatchNorm1d(affine=False, eps=1e-6, momentum=0.1)`: batch statistics in training, running
/// statistics (updated with the unbiased batch variance) in evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// Running mean.
    pub running_mean: Vec<f32>,
    /// Running variance.
    pub running_var: Vec<f32>,
    /// ε.
    pub eps: f32,
    /// Running-statistics momentum.
    pub momentum: f32,
}

impl BatchNorm {
    /// Fresh statistics (mean 0, variance 1) for `dim` features.
    pub fn new(dim: usize) -> Self {
        BatchNorm {
            running_mean: vec![0.0; dim],
            running_var: vec![1.0; dim],
            eps: 1e-6,
            momentum: 0.1,
        }
    }

    /// Normalizes `x` (`[n, dim]`) in place: with the batch's statistics (biased variance) when
    /// `train`, updating the running ones; with the running ones otherwise.
    pub fn forward(&mut self, x: &mut [f32], train: bool) {
        let dim = self.running_mean.len();
        let n = x.len() / dim.max(1);
        if n == 0 {
            return;
        }
        let (mean, var) = if train {
            let mut mean = vec![0f64; dim];
            let mut sq = vec![0f64; dim];
            for row in x.chunks_exact(dim) {
                for (j, &v) in row.iter().enumerate() {
                    mean[j] += v as f64;
                    sq[j] += (v as f64) * (v as f64);
                }
            }
            let mut var = vec![0f32; dim];
            let mut m32 = vec![0f32; dim];
            for j in 0..dim {
                let m = mean[j] / n as f64;
                let biased = (sq[j] / n as f64 - m * m).max(0.0);
                let unbiased = if n > 1 {
                    biased * n as f64 / (n as f64 - 1.0)
                } else {
                    biased
                };
                self.running_mean[j] =
                    (1.0 - self.momentum) * self.running_mean[j] + self.momentum * m as f32;
                self.running_var[j] =
                    (1.0 - self.momentum) * self.running_var[j] + self.momentum * unbiased as f32;
                m32[j] = m as f32;
                var[j] = biased as f32;
            }
            (m32, var)
        } else {
            (self.running_mean.clone(), self.running_var.clone())
        };
        for row in x.chunks_exact_mut(dim) {
            for j in 0..dim {
                row[j] = (row[j] - mean[j]) / (var[j] + self.eps).sqrt();
            }
        }
    }
}

/// Probe settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Epochs over the cached features.
    pub epochs: usize,
    /// Batch size (per rank).
    pub batch_size: usize,
    /// Batches whose gradients are averaged into one optimizer step (`--accum_iter`), so the
    /// effective batch is `batch_size · accum_iter` (· ranks): the official probe's 16,384 on a
    /// machine that cannot hold it. A partial group at the end of an epoch is dropped, as
    /// `main_linprobe.py` drops it.
    #[serde(default = "one")]
    pub accum_iter: usize,
    /// Base learning rate (`lr = blr · batch · accum_iter / 256`).
    pub blr: f64,
    /// Warmup epochs.
    pub warmup_epochs: f64,
    /// LARS weight decay.
    pub weight_decay: f32,
    /// Seed of the head's initialization and the batch order.
    pub seed: u64,
    /// The optimizer: LARS as the official recipe, or AdamW (the simpler probe of the team's
    /// PyTorch baseline).
    pub optimizer: ProbeOptimizer,
    /// Random crops + flips of the training images every epoch (`main_linprobe.py`'s
    /// `RandomResizedCrop` + `RandomHorizontalFlip`), with an encoder pass per epoch; `false` is
    /// `--no-aug`: features computed once.
    pub augment: bool,
}

impl ProbeConfig {
    /// Checks the settings (NaN is refused everywhere).
    pub fn validate(&self) -> Result<(), TrainError> {
        use crate::config::{check_count, check_float, MAX_BATCH, MAX_EPOCHS};
        check_count("epochs", self.epochs, 1, MAX_EPOCHS)?;
        check_count("batch-size", self.batch_size, 1, MAX_BATCH)?;
        check_count("accum-iter", self.accum_iter, 1, MAX_BATCH)?;
        check_float("blr", self.blr, true)?;
        check_float("warmup-epochs", self.warmup_epochs, false)?;
        if self.warmup_epochs > 0.0 && self.warmup_epochs >= self.epochs as f64 {
            return Err(TrainError::Config(format!(
                "--warmup-epochs {} is not shorter than --epochs {}: the whole run would be \
                 warmup and the learning rate would never reach its peak (the official probe \
                 warms up for 10 of 90 epochs; leave --warmup-epochs out to get that ratio)",
                self.warmup_epochs, self.epochs
            )));
        }
        check_float("weight-decay", self.weight_decay as f64, false)
    }

    /// The warmup of a run of `epochs` when none is given: the official ratio, 10 of 90 epochs.
    pub fn default_warmup(epochs: usize) -> f64 {
        epochs as f64 / 9.0
    }

    /// The peak learning rate on `world_size` ranks: `blr · batch_size · accum_iter · ranks /
    /// 256` (`main_linprobe.py`'s `eff_batch_size`).
    pub fn peak_lr(&self, world_size: usize) -> f64 {
        crate::schedule::absolute_lr(self.blr, self.batch_size, self.accum_iter, world_size)
    }
}

fn one() -> usize {
    1
}

/// The probe's optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeOptimizer {
    /// `util/lars.py` (momentum 0.9, trust 0.001; no decay or scaling on 1-D parameters).
    #[default]
    Lars,
    /// `torch.optim.AdamW` (β 0.9/0.999, ε 1e-8), decay on the weight only.
    AdamW,
}

impl ProbeOptimizer {
    /// `lars` or `adamw`, as parsed.
    pub fn name(self) -> &'static str {
        match self {
            ProbeOptimizer::Lars => "lars",
            ProbeOptimizer::AdamW => "adamw",
        }
    }
}

impl std::str::FromStr for ProbeOptimizer {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lars" => Ok(ProbeOptimizer::Lars),
            "adamw" => Ok(ProbeOptimizer::AdamW),
            _ => Err(TrainError::Config(format!(
                "optimizer `{s}`: lars or adamw"
            ))),
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        // main_linprobe.py: 90 epochs, 10 warmup, blr 0.1, wd 0
        ProbeConfig {
            epochs: 90,
            batch_size: 256,
            accum_iter: 1,
            blr: 0.1,
            warmup_epochs: 10.0,
            weight_decay: 0.0,
            seed: 0,
            optimizer: ProbeOptimizer::Lars,
            augment: false,
        }
    }
}

/// A trained probe: BN statistics and the linear head.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbe {
    /// The BN without affine parameters.
    pub bn: BatchNorm,
    /// `[classes, dim]`.
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
    /// Feature width.
    pub dim: usize,
    /// Number of classes.
    pub classes: usize,
}

fn trunc_normal(rng: &mut impl Rng, std: f32) -> f32 {
    // timm's trunc_normal_ cuts at ±2 (absolute), far outside ±std for std 0.01
    loop {
        let u1: f32 = rng.gen::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos() * std;
        if z.abs() <= 2.0 {
            return z;
        }
    }
}

impl LinearProbe {
    /// Logits of normalized features `x` (`[n, dim]`) into `out` (`[n, classes]`).
    fn logits(&self, x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        for row in x.chunks_exact(self.dim) {
            for c in 0..self.classes {
                let w = &self.weight[c * self.dim..(c + 1) * self.dim];
                out.push(self.bias[c] + w.iter().zip(row).map(|(a, b)| a * b).sum::<f32>());
            }
        }
    }

    /// Top-1/top-5 of the probe on `features` (`[n, dim]`) with `labels`.
    pub fn evaluate(&self, features: &[f32], labels: &[i64]) -> Accuracy {
        let mut x = features.to_vec();
        let mut bn = self.bn.clone();
        bn.forward(&mut x, false);
        let mut logits = Vec::new();
        self.logits(&x, &mut logits);
        let (top1, top5) = crate::knn::topk_hits(&logits, labels, self.classes);
        let n = labels.len().max(1) as f64;
        Accuracy {
            top1: 100.0 * top1 as f64 / n,
            top5: 100.0 * top5 as f64 / n,
        }
    }
}

/// Trains a probe epoch by epoch on cached features.
pub struct ProbeTrainer {
    probe: LinearProbe,
    cfg: ProbeConfig,
    rng: rand_chacha::ChaCha8Rng,
    opt: ProbeOpt,
}

impl LinearProbe {
    /// A fresh probe for `dim` features and `classes`: fresh BatchNorm statistics, the head
    /// weight `trunc_normal(std=0.01)` drawn from `rng`, a zero bias.
    pub fn fresh(
        dim: usize,
        classes: usize,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<Self, TrainError> {
        if dim == 0 || classes == 0 {
            return Err(TrainError::Config(
                "probe: no features or no classes".into(),
            ));
        }
        let len = dim.checked_mul(classes).ok_or_else(|| {
            TrainError::Config(format!(
                "probe: {classes} classes × {dim} features overflow"
            ))
        })?;
        Ok(LinearProbe {
            bn: BatchNorm::new(dim),
            weight: (0..len).map(|_| trunc_normal(rng, 0.01)).collect(),
            bias: vec![0.0; classes],
            dim,
            classes,
        })
    }
}

impl ProbeTrainer {
    /// A fresh head (trunc-normal 0.01 weight, zero bias) for `dim` features and `classes`.
    pub fn new(dim: usize, classes: usize, cfg: &ProbeConfig) -> Result<Self, TrainError> {
        if cfg.batch_size == 0 || cfg.epochs == 0 || cfg.accum_iter == 0 {
            return Err(TrainError::Config(
                "probe: batch size, accum-iter and epochs must be at least 1".into(),
            ));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        let probe = LinearProbe::fresh(dim, classes, &mut rng)?;
        Ok(ProbeTrainer {
            probe,
            cfg: *cfg,
            rng,
            opt: ProbeOpt::new(cfg),
        })
    }

    /// One epoch over `train` (`[n, dim]`) with `labels` in `0..classes`, in a shuffled order.
    pub fn epoch(&mut self, epoch: usize, train: &[f32], labels: &[i64]) -> Result<(), TrainError> {
        let (dim, classes) = (self.probe.dim, self.probe.classes);
        let n = labels.len();
        if train.len() != n * dim || n == 0 {
            return Err(TrainError::Config(
                "probe: features and labels do not match".into(),
            ));
        }
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
            return Err(TrainError::Config(format!(
                "probe: label {bad} outside 0..{classes} (unlabeled data cannot be probed)"
            )));
        }
        let cfg = self.cfg;
        let lr_peak = cfg.peak_lr(1);
        let batches = n.div_ceil(cfg.batch_size);
        if batches < cfg.accum_iter {
            return Err(TrainError::Config(format!(
                "probe: {n} training samples make {batches} batches of --batch-size {}, fewer \
                 than --accum-iter {}: no optimizer step would be taken",
                cfg.batch_size, cfg.accum_iter
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        let mut grads = (vec![0f32; classes * dim], vec![0f32; classes]);
        for (k, chunk) in order.chunks(cfg.batch_size).enumerate() {
            // main_linprobe.py: the lr is set at the first batch of each accumulation group,
            // from the fractional epoch; a group left partial at the epoch's end is dropped
            if k % cfg.accum_iter == 0 {
                if k + cfg.accum_iter > batches {
                    break;
                }
                grads.0.fill(0.0);
                grads.1.fill(0.0);
            }
            let scale = 1.0 / (chunk.len() * cfg.accum_iter) as f32;
            self.accumulate(chunk, train, labels, scale, &mut grads);
            if (k + 1) % cfg.accum_iter == 0 {
                let group = k + 1 - cfg.accum_iter;
                let lr = lr_at(
                    epoch as f64 + group as f64 / batches as f64,
                    lr_peak,
                    0.0,
                    cfg.warmup_epochs,
                    cfg.epochs as f64,
                );
                let p = &mut self.probe;
                self.opt
                    .step((&mut p.weight, &grads.0), (&mut p.bias, &grads.1), lr)?;
            }
        }
        Ok(())
    }

    /// Adds the softmax cross-entropy gradient of the rows `chunk` of `train`, each weighted by
    /// `scale`, to `(weight, bias)` gradients; the BatchNorm normalizes the chunk with its own
    /// statistics, as one micro-batch of the official loop.
    fn accumulate(
        &mut self,
        chunk: &[usize],
        train: &[f32],
        labels: &[i64],
        scale: f32,
        (gw, gb): &mut (Vec<f32>, Vec<f32>),
    ) {
        let (dim, classes) = (self.probe.dim, self.probe.classes);
        let mut x = Vec::with_capacity(chunk.len() * dim);
        for &i in chunk {
            x.extend_from_slice(&train[i * dim..(i + 1) * dim]);
        }
        self.probe.bn.forward(&mut x, true);
        let mut logits = Vec::new();
        self.probe.logits(&x, &mut logits);
        for ((row, xr), &i) in logits
            .chunks_exact_mut(classes)
            .zip(x.chunks_exact(dim))
            .zip(chunk)
        {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row
                .iter_mut()
                .map(|v| {
                    *v = (*v - max).exp();
                    *v
                })
                .sum();
            for (c, v) in row.iter_mut().enumerate() {
                let grad = (*v / sum - (labels[i] as usize == c) as u8 as f32) * scale;
                gb[c] += grad;
                for (g, xv) in gw[c * dim..(c + 1) * dim].iter_mut().zip(xr) {
                    *g += grad * xv;
                }
            }
        }
    }

    /// The trained probe.
    pub fn finish(self) -> LinearProbe {
        self.probe
    }
}

/// Trains a probe on `train` features (`[n, dim]`) with labels in `0..classes`, `cfg.epochs`
/// epochs over the same features.
pub fn train_probe(
    train: &[f32],
    labels: &[i64],
    dim: usize,
    classes: usize,
    cfg: &ProbeConfig,
) -> Result<LinearProbe, TrainError> {
    let mut trainer = ProbeTrainer::new(dim, classes, cfg)?;
    for epoch in 0..cfg.epochs {
        trainer.epoch(epoch, train, labels)?;
    }
    Ok(trainer.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batchnorm_without_affine_normalizes_and_tracks_running_statistics() {
        let mut bn = BatchNorm::new(2);
        let mut x = vec![1.0, 10.0, 3.0, 10.0];
        bn.forward(&mut x, true);
        // column 0: mean 2, biased var 1 → ±1/sqrt(1 + 1e-6); column 1 constant → 0
        assert!((x[0] + 1.0).abs() < 1e-5 && (x[2] - 1.0).abs() < 1e-5);
        assert_eq!((x[1], x[3]), (0.0, 0.0));
        // running: 0.9·0 + 0.1·2; var 0.9·1 + 0.1·2 (unbiased: 2)
        assert!((bn.running_mean[0] - 0.2).abs() < 1e-6 && (bn.running_var[0] - 1.1).abs() < 1e-6);
        let mut y = vec![0.2, 1.0];
        bn.forward(&mut y, false);
        assert!(y[0].abs() < 1e-6);
    }

    #[test]
    fn a_probe_learns_separable_classes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (dim, classes, n) = (8, 4, 400);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let c = i % classes;
            for j in 0..dim {
                x.push(if j == c { 3.0 } else { 0.0 } + rng.gen::<f32>() - 0.5);
            }
            y.push(c as i64);
        }
        // LARS moves each weight matrix by about lr · 0.001 · ‖W‖ per step: it needs a large lr
        let cfg = ProbeConfig {
            epochs: 20,
            batch_size: 64,
            blr: 40.0,
            warmup_epochs: 2.0,
            ..ProbeConfig::default()
        };
        let probe = train_probe(&x, &y, dim, classes, &cfg).expect("valid");
        let acc = probe.evaluate(&x, &y);
        assert!(acc.top1 > 95.0, "{acc:?}");
        assert!(train_probe(&x, &y, dim, 2, &cfg).is_err());
    }

    /// `accum_iter` batches make one step at the lr of their whole batch; a partial group at the
    /// end of an epoch is dropped, and a training set of fewer batches than a group is refused.
    #[test]
    fn accumulated_batches_make_one_step_and_the_lr_scales_with_them() {
        let (dim, classes, n) = (4, 2, 100);
        let x: Vec<f32> = (0..n * dim).map(|i| ((i * 7) % 11) as f32).collect();
        let y: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
        let cfg = ProbeConfig {
            epochs: 3,
            batch_size: 32,
            accum_iter: 3,
            warmup_epochs: 0.0,
            optimizer: ProbeOptimizer::AdamW,
            ..ProbeConfig::default()
        };
        assert_eq!(cfg.peak_lr(2), 0.1 * 32.0 * 3.0 * 2.0 / 256.0);
        let steps = |cfg: &ProbeConfig| {
            let mut t = ProbeTrainer::new(dim, classes, cfg).expect("valid");
            for epoch in 0..cfg.epochs {
                t.epoch(epoch, &x, &y).expect("trains");
            }
            match t.opt {
                ProbeOpt::AdamW(o) => o.step,
                ProbeOpt::Lars(o) => o.step,
            }
        };
        // 100 samples = 4 batches of 32: one group of 3 an epoch, the 4th batch dropped
        assert_eq!(steps(&cfg), 3);
        assert_eq!(
            steps(&ProbeConfig {
                accum_iter: 2,
                ..cfg
            }),
            6
        );
        assert_eq!(
            steps(&ProbeConfig {
                accum_iter: 1,
                ..cfg
            }),
            12
        );
        let mut t = ProbeTrainer::new(
            dim,
            classes,
            &ProbeConfig {
                accum_iter: 5,
                ..cfg
            },
        )
        .expect("valid");
        let err = t.epoch(0, &x, &y).expect_err("refused").to_string();
        assert!(err.contains("--accum-iter 5"), "{err}");
        assert!(ProbeConfig {
            accum_iter: 0,
            ..cfg
        }
        .validate()
        .is_err());
    }

    /// Accumulating two halves of a batch whose halves hold the same rows gives the step of the
    /// whole batch: the gradient is the mean over the group, not the sum.
    #[test]
    fn two_equal_halves_accumulated_step_as_the_whole_batch() {
        let (dim, classes) = (3, 3);
        let half: Vec<f32> = vec![1.0, 0.0, 2.0, 0.5, 3.0, 1.0, 2.0, 1.0, 0.0, 0.2, 0.1, 0.9];
        let half_y = vec![0i64, 1, 2, 1];
        let x = [half.clone(), half].concat();
        let y = [half_y.clone(), half_y].concat();
        let base = ProbeConfig {
            epochs: 1,
            batch_size: 8,
            warmup_epochs: 0.0,
            optimizer: ProbeOptimizer::AdamW,
            ..ProbeConfig::default()
        };
        let step = |cfg: &ProbeConfig, order: Vec<usize>| {
            let mut t = ProbeTrainer::new(dim, classes, cfg).expect("valid");
            let mut grads = (vec![0f32; dim * classes], vec![0f32; classes]);
            let k = cfg.accum_iter;
            for chunk in order.chunks(cfg.batch_size) {
                t.accumulate(chunk, &x, &y, 1.0 / (chunk.len() * k) as f32, &mut grads);
            }
            grads
        };
        let whole = step(&base, (0..8).collect());
        let halves = step(
            &ProbeConfig {
                batch_size: 4,
                accum_iter: 2,
                ..base
            },
            (0..8).collect(),
        );
        for (a, b) in whole
            .0
            .iter()
            .chain(&whole.1)
            .zip(halves.0.iter().chain(&halves.1))
        {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert!(whole.0.iter().any(|g| g.abs() > 1e-3));
    }
}
