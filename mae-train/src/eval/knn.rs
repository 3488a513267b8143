//! The weighted k-nearest-neighbour classifier on encoder features, and top-k counting.
//!
//! PyTorch counterpart: DINO's `knn_classifier` (`eval_knn.py`): L2-normalized features, cosine
//! similarity, the `k` nearest training samples vote with weight `exp(sim / T)`, T = 0.07.

use crate::error::TrainError;
use crate::feature_set::FeatureKind;
use crate::features::FeatureSource;

/// Top-1/top-5 counts of `logits` (`[n, classes]`) against `labels`.
pub fn topk_hits(logits: &[f32], labels: &[i64], classes: usize) -> (usize, usize) {
    let (mut top1, mut top5) = (0usize, 0usize);
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        top1 += (order[0] as i64 == label) as usize;
        top5 += order[..5.min(classes)].iter().any(|&c| c as i64 == label) as usize;
    }
    (top1, top5)
}

/// Top-1 and top-5 accuracy of a classifier, in percent.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Accuracy {
    /// Top-1, %.
    pub top1: f64,
    /// Top-5, %.
    pub top5: f64,
}

fn l2_normalize(rows: &[f32], dim: usize) -> Vec<f32> {
    let mut out = rows.to_vec();
    for row in out.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    out
}

/// DINO's weighted kNN: each test row's `k` most cosine-similar training rows vote for their label
/// with weight `exp(sim / temperature)`. Labels must be in `0..num_classes`.
#[allow(clippy::too_many_arguments)]
pub fn knn_classify(
    train: &[f32],
    train_labels: &[i64],
    test: &[f32],
    test_labels: &[i64],
    dim: usize,
    k: usize,
    temperature: f32,
    num_classes: usize,
) -> Result<Accuracy, TrainError> {
    if dim == 0 || train.len() != train_labels.len() * dim || test.len() != test_labels.len() * dim
    {
        return Err(TrainError::Config(
            "kNN: features and labels do not match".into(),
        ));
    }
    if train_labels.is_empty() || test_labels.is_empty() || k == 0 || num_classes == 0 {
        return Err(TrainError::Config(
            "kNN needs labeled train and test samples and k ≥ 1".into(),
        ));
    }
    crate::config::check_float("temperature", temperature as f64, true)?;
    if let Some(bad) = train_labels
        .iter()
        .chain(test_labels)
        .find(|&&l| l < 0 || l as usize >= num_classes)
    {
        return Err(TrainError::Config(format!(
            "kNN: label {bad} outside 0..{num_classes} (unlabeled data cannot be scored)"
        )));
    }
    let train = l2_normalize(train, dim);
    let test = l2_normalize(test, dim);
    let k = k.min(train_labels.len());
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut sims: Vec<(f32, usize)> = Vec::with_capacity(train_labels.len());
    for (q, &label) in test.chunks_exact(dim).zip(test_labels) {
        sims.clear();
        sims.extend(
            train
                .chunks_exact(dim)
                .enumerate()
                .map(|(j, t)| (q.iter().zip(t).map(|(a, b)| a * b).sum::<f32>(), j)),
        );
        sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        let mut votes = vec![0f64; num_classes];
        for &(sim, j) in &sims[..k] {
            votes[train_labels[j] as usize] += ((sim / temperature) as f64).exp();
        }
        let mut order: Vec<usize> = (0..num_classes).collect();
        order.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]).then(a.cmp(&b)));
        let label = label as usize;
        top1 += (order[0] == label) as usize;
        top5 += order[..5.min(num_classes)].contains(&label) as usize;
    }
    let n = test_labels.len() as f64;
    Ok(Accuracy {
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
    })
}

/// `mae knn`: weighted kNN of the val split against the train split, with the encoder's passes
/// over the images shared out over the ranks of `comm` ([`extract_sharded`]); every rank then
/// classifies the same features.
pub fn knn_eval(
    input: &FeatureSource,
    k: usize,
    temperature: f32,
    feature: FeatureKind,
    comm: &crate::dist::Comm,
) -> Result<Accuracy, TrainError> {
    // the settings before the encoder's passes, which take minutes
    crate::config::check_count("k", k, 1, usize::MAX)?;
    crate::config::check_float("temperature", temperature as f64, true)?;
    input.validate()?;
    let (train, val, classes) = input.load(comm)?;
    knn_classify(
        train.select(feature),
        &train.labels,
        val.select(feature),
        &val.labels,
        train.dim,
        k,
        temperature,
        classes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_on_a_case_with_a_known_answer() {
        // two clusters on the unit circle; the test points sit next to one each
        let train = [
            1.0, 0.0, 0.9, 0.1, 0.95, -0.05, 0.0, 1.0, 0.1, 0.9, -0.1, 0.95,
        ];
        let train_labels = [0, 0, 0, 1, 1, 1];
        let test = [0.8, 0.05, 0.05, 2.0, 3.0, 0.2];
        let test_labels = [0, 1, 1];
        let acc = knn_classify(&train, &train_labels, &test, &test_labels, 2, 3, 0.07, 2)
            .expect("valid input");
        // the third point (3.0, 0.2) is near class 0: one of three wrong
        assert!((acc.top1 - 200.0 / 3.0).abs() < 1e-9, "{acc:?}");
        assert_eq!(acc.top5, 100.0);
        // k = 1 with a misleading neighbour: the nearest one decides
        let acc =
            knn_classify(&train, &train_labels, &[0.0, 1.0], &[1], 2, 1, 0.07, 2).expect("valid");
        assert_eq!(acc.top1, 100.0);
        assert!(knn_classify(&train, &train_labels, &test, &[0, 1, 7], 2, 3, 0.07, 2).is_err());
    }
}
