//! The learning-rate schedule: linear warmup, then half-cycle cosine to `min_lr`, per iteration.
//!
//! PyTorch counterpart: `util/lr_sched.adjust_learning_rate(optimizer, epoch, args)`, called with
//! the fractional epoch `data_iter_step / len(data_loader) + epoch`, and `args.lr = blr ·
//! eff_batch_size / 256` in `main_pretrain.py`.

/// `blr · batch · accum_iter · world_size / 256`.
pub fn absolute_lr(blr: f64, batch_size: usize, accum_iter: usize, world_size: usize) -> f64 {
    blr * (batch_size * accum_iter * world_size) as f64 / 256.0
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
