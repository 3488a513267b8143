//! The learning-rate schedule: linear warmup, then half-cycle cosine to `min_lr`, per iteration.
//!
//! PyTorch counterpart: `util/lr_sched.adjust_learning_rate(optimizer, epoch, args)`, called with
//! the fractional epoch `data_iter_step / len(data_loader) + epoch`, and `args.lr = blr ·
//! eff_batch_size / 256` in `main_pretrain.py`.

/// `blr · batch · accum_iter · world_size / 256` (in f64: no integer product to overflow).
pub fn absolute_lr(blr: f64, batch_size: usize, accum_iter: usize, world_size: usize) -> f64 {
    blr * (batch_size as f64 * accum_iter as f64 * world_size as f64) / 256.0
}

/// The learning rate at fractional `epoch`.
pub fn lr_at(epoch: f64, lr: f64, min_lr: f64, warmup_epochs: f64, epochs: f64) -> f64 {
    if epoch < warmup_epochs {
        lr * epoch / warmup_epochs
    } else {
        let span = (epochs - warmup_epochs).max(f64::MIN_POSITIVE);
        let progress = ((epoch - warmup_epochs) / span).min(1.0);
        min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// How an epoch-based run divides into optimizer steps, as the official loops do it: an epoch has
/// `micro_per_epoch` micro-batches, of which the last incomplete accumulation group is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    /// Micro-batches the loader yields per epoch.
    pub micro_per_epoch: usize,
    /// Micro-batches used per epoch (a multiple of `accum_iter`).
    pub usable_micro: usize,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: u64,
    /// Steps of the whole schedule (`epochs × steps_per_epoch`).
    pub full_steps: u64,
    /// Steps this run makes (`full_steps`, or fewer with `--max-steps`).
    pub total_steps: u64,
}

impl StepPlan {
    /// The plan of `epochs` epochs of `micro_per_epoch` micro-batches, `accum_iter` per step.
    /// `what` names the data in the error when an epoch has fewer micro-batches than a step needs.
    pub fn new(
        micro_per_epoch: usize,
        accum_iter: usize,
        epochs: usize,
        max_steps: Option<u64>,
        what: impl FnOnce() -> String,
    ) -> Result<Self, crate::TrainError> {
        if micro_per_epoch < accum_iter.max(1) {
            return Err(crate::TrainError::Config(format!(
                "{}: {micro_per_epoch} batches per epoch, fewer than --accum-iter {accum_iter}",
                what()
            )));
        }
        let usable_micro = micro_per_epoch - micro_per_epoch % accum_iter;
        let steps_per_epoch = (usable_micro / accum_iter) as u64;
        let full_steps = (epochs as u64)
            .checked_mul(steps_per_epoch)
            .ok_or_else(|| {
                crate::TrainError::Config(format!(
                "{}: {epochs} epochs of {steps_per_epoch} steps are more steps than can be counted",
                what()
            ))
            })?;
        Ok(StepPlan {
            micro_per_epoch,
            usable_micro,
            steps_per_epoch,
            full_steps,
            total_steps: full_steps.min(max_steps.unwrap_or(u64::MAX)),
        })
    }

    /// The fractional epoch at micro-batch `k` of `epoch` (what the lr schedule reads).
    pub fn frac_epoch(&self, epoch: u64, k: usize) -> f64 {
        epoch as f64 + k as f64 / self.micro_per_epoch as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_official_schedule() {
        assert_eq!(absolute_lr(1.5e-4, 256, 1, 1), 1.5e-4);
        assert!((absolute_lr(1.5e-4, 64, 4, 16) - 1.5e-4 * 16.0).abs() < 1e-12);
        let (lr, min_lr, warm, epochs) = (1e-3, 1e-5, 4.0, 20.0);
        assert_eq!(lr_at(0.0, lr, min_lr, warm, epochs), 0.0);
        assert!((lr_at(1.0, lr, min_lr, warm, epochs) - 2.5e-4).abs() < 1e-15);
        assert!((lr_at(4.0, lr, min_lr, warm, epochs) - lr).abs() < 1e-15);
        // half-way through the cosine: the mean of lr and min_lr
        assert!((lr_at(12.0, lr, min_lr, warm, epochs) - (lr + min_lr) / 2.0).abs() < 1e-12);
        assert!((lr_at(20.0, lr, min_lr, warm, epochs) - min_lr).abs() < 1e-15);
        // monotone decrease after warmup
        let mut prev = f64::INFINITY;
        for i in 0..=160 {
            let e = 4.0 + i as f64 * 0.1;
            let v = lr_at(e, lr, min_lr, warm, epochs);
            assert!(v <= prev);
            prev = v;
        }
    }
}
