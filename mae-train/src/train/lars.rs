//! LARS, the linear probe's optimizer: the update of one parameter ([`Lars::step`]) and the
//! momentum buffers of a run ([`LarsState`], which checkpoints hold).
//!
//! PyTorch counterpart: `util/lars.py` (`LARS`, from the MoCo v3 code): momentum 0.9, trust
//! coefficient 0.001, neither decay nor trust scaling on 1-D parameters (biases, norms).

use std::collections::BTreeMap;

use crate::error::TrainError;

/// LARS as `util/lars.py`: for parameters of 2 or more dims the update `g + wd·p` is scaled by
/// `trust · ‖p‖ / ‖update‖` (when both norms are positive); then heavy-ball momentum.
#[derive(Debug, Clone, PartialEq)]
pub struct Lars {
    /// Momentum.
    pub momentum: f32,
    /// Trust coefficient.
    pub trust_coefficient: f32,
    /// Weight decay (on ≥ 2-D parameters).
    pub weight_decay: f32,
}

impl Default for Lars {
    fn default() -> Self {
        Lars {
            momentum: 0.9,
            trust_coefficient: 0.001,
            weight_decay: 0.0,
        }
    }
}

impl Lars {
    /// One step on a parameter `p` with gradient `g` and momentum buffer `mu`; `matrix` says
    /// whether the parameter has 2 or more dims.
    pub fn step(&self, p: &mut [f32], g: &[f32], mu: &mut [f32], lr: f32, matrix: bool) {
        let mut dp: Vec<f32> = g.to_vec();
        if matrix {
            for (d, &w) in dp.iter_mut().zip(p.iter()) {
                *d += self.weight_decay * w;
            }
            let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let (pn, un) = (norm(p), norm(&dp));
            let q = if pn > 0.0 && un > 0.0 {
                (self.trust_coefficient as f64 * pn / un) as f32
            } else {
                1.0
            };
            dp.iter_mut().for_each(|d| *d *= q);
        }
        for ((w, m), d) in p.iter_mut().zip(mu.iter_mut()).zip(&dp) {
            *m = *m * self.momentum + d;
            *w -= lr * *m;
        }
    }
}

/// [`Lars`] with its momentum buffers by parameter name (`util/lars.py`'s `state[p]["mu"]`, made
/// at zero on a parameter's first step) and its step count.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LarsState {
    /// The hyper-parameters.
    pub lars: Lars,
    /// `mu` of each parameter.
    pub momentum_buffers: BTreeMap<String, Vec<f32>>,
    /// Steps taken.
    pub step: u64,
}

impl LarsState {
    /// The step of parameter `name` (`matrix`: 2 or more dims) with gradient `g` at `lr`.
    pub fn update_named(
        &mut self,
        name: &str,
        p: &mut [f32],
        g: &[f32],
        lr: f64,
        matrix: bool,
    ) -> Result<(), TrainError> {
        let mu = self
            .momentum_buffers
            .entry(name.to_string())
            .or_insert_with(|| vec![0.0; p.len()]);
        if g.len() != p.len() || mu.len() != p.len() {
            return Err(TrainError::Config(format!(
                "`{name}`: {} values, gradient {}, momentum {}",
                p.len(),
                g.len(),
                mu.len()
            )));
        }
        self.lars.step(p, g, mu, lr as f32, matrix);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lars_step_matches_a_hand_computation() {
        let lars = Lars {
            momentum: 0.9,
            trust_coefficient: 0.001,
            weight_decay: 0.5,
        };
        let mut p = vec![3.0f32, 4.0]; // ‖p‖ = 5
        let g = [0.1f32, -0.2];
        let mut mu = vec![0.2f32, 0.0];
        lars.step(&mut p, &g, &mut mu, 0.1, true);
        // dp = g + 0.5·p = [1.6, 1.8]; ‖dp‖ = sqrt(5.8); q = 0.001·5/sqrt(5.8)
        let q = 0.001 * 5.0 / 5.8f64.sqrt();
        let mu0 = 0.9 * 0.2 + 1.6 * q;
        let mu1 = 1.8 * q;
        assert!((mu[0] as f64 - mu0).abs() < 1e-7 && (mu[1] as f64 - mu1).abs() < 1e-7);
        assert!((p[0] as f64 - (3.0 - 0.1 * mu0)).abs() < 1e-6);
        assert!((p[1] as f64 - (4.0 - 0.1 * mu1)).abs() < 1e-6);
        // 1-D parameters: no decay, no trust ratio
        let mut b = vec![1.0f32];
        let mut mb = vec![0.0f32];
        lars.step(&mut b, &[0.5], &mut mb, 0.1, false);
        assert!((b[0] - 0.95).abs() < 1e-7 && (mb[0] - 0.5).abs() < 1e-7);
    }
}
