//! The batch loader: a seeded permutation per epoch, split across data-parallel ranks, and worker
//! threads that crop, flip and normalize ahead of the trainer into reused buffers.
//!
//! PyTorch counterpart: `DataLoader(dataset, sampler=DistributedSampler(dataset, num_replicas,
//! rank, shuffle=True), batch_size, num_workers, drop_last=True)` with `sampler.set_epoch(epoch)`.
//! Unlike `DistributedSampler`, no sample is repeated to pad ranks: the permutation is dealt out
//! round-robin (`perm[rank::world_size]`), and with `drop_last` every rank runs the same number of
//! steps, `floor(N / world_size) / batch_size`.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fast_image_resize::Resizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::augment::Augment;
use crate::dataset::{Dataset, SplitName};
use crate::error::DataError;

/// How batches are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch (per rank).
    pub batch_size: usize,
    /// Seed of the epoch permutations.
    pub seed: u64,
    /// Shuffle every epoch (pretraining) or keep the dataset order (evaluation).
    pub shuffle: bool,
    /// This process's rank.
    pub rank: usize,
    /// Number of data-parallel processes.
    pub world_size: usize,
    /// Drop the last incomplete batch (and keep all ranks at the same step count).
    pub drop_last: bool,
    /// Worker threads.
    pub workers: usize,
    /// Batches each worker may prepare ahead.
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            seed: 0,
            shuffle: true,
            rank: 0,
            world_size: 1,
            drop_last: true,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            prefetch: 2,
        }
    }
}

/// One batch, ready for a dfdx tensor. Dropping it hands its image buffer back to the loader that
/// made it, for a later batch: a batch at 224 px is tens of MB, and a fresh one costs a page fault
/// per 4 KiB (a quarter of the loader's time when measured, BENCHMARKS.md).
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[n, C, S, S]` normalized images, row-major.
    pub images: Vec<f32>,
    /// `[n]` labels (−1 when unlabeled).
    pub labels: Vec<i64>,
    /// `[n]` the samples' indices in the split.
    pub indices: Vec<usize>,
    /// Epoch of the batch.
    pub epoch: u64,
    /// Step of the batch within the epoch.
    pub step: usize,
    /// Where `images` goes back to when the batch is dropped.
    pool: Option<BufferPool>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.put(std::mem::take(&mut self.images));
        }
    }
}

/// Image buffers of dropped batches, kept for the next ones (at most `cap`).
#[derive(Clone)]
struct BufferPool {
    buffers: Arc<Mutex<Vec<Vec<f32>>>>,
    cap: usize,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("cap", &self.cap)
            .finish()
    }
}

impl BufferPool {
    fn new(cap: usize) -> Self {
        BufferPool {
            buffers: Arc::new(Mutex::new(Vec::new())),
            cap,
        }
    }

    /// A buffer of `len` values: a kept one when there is one (its contents are overwritten by
    /// the caller), else a new one.
    fn take(&self, len: usize) -> Vec<f32> {
        let kept = self.buffers.lock().ok().and_then(|mut b| b.pop());
        let mut v = kept.unwrap_or_default();
        v.resize(len, 0.0);
        v
    }

    fn put(&self, buffer: Vec<f32>) {
        if buffer.capacity() == 0 {
            return;
        }
        if let Ok(mut b) = self.buffers.lock() {
            if b.len() < self.cap {
                b.push(buffer);
            }
        }
    }
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Loads batches of one split of a dataset.
#[derive(Debug, Clone)]
pub struct Loader {
    dataset: Arc<Dataset>,
    split: SplitName,
    augment: Augment,
    config: LoaderConfig,
    pool: BufferPool,
}

impl Loader {
    /// A loader over `split` of `dataset`, transforming with `augment`.
    pub fn new(
        dataset: Arc<Dataset>,
        split: SplitName,
        augment: Augment,
        config: LoaderConfig,
    ) -> Result<Self, DataError> {
        if config.batch_size == 0 || config.workers == 0 || config.prefetch == 0 {
            return Err(DataError::Option(
                "batch size, workers and prefetch must be at least 1".into(),
            ));
        }
        if config.world_size == 0 || config.rank >= config.world_size {
            return Err(DataError::Option(format!(
                "rank {} is not below world size {}",
                config.rank, config.world_size
            )));
        }
        if augment.channels() != dataset.channels() {
            return Err(DataError::Option(format!(
                "normalization has {} channels, the dataset {}",
                augment.channels(),
                dataset.channels()
            )));
        }
        // every batch in flight (queued, being made, held by the consumer) can come back
        let cap = config
            .workers
            .saturating_mul(config.prefetch.saturating_add(1))
            .saturating_add(2);
        Ok(Loader {
            dataset,
            split,
            augment,
            config,
            pool: BufferPool::new(cap),
        })
    }

    /// The dataset read.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// This rank's sample indices for `epoch`, in order.
    pub fn epoch_indices(&self, epoch: u64) -> Vec<usize> {
        let n = self.dataset.split(self.split).len();
        let mut perm: Vec<usize> = (0..n).collect();
        if self.config.shuffle {
            let seed = self.config.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        }
        perm.into_iter()
            .skip(self.config.rank)
            .step_by(self.config.world_size)
            .collect()
    }

    /// Steps per epoch on this rank.
    pub fn steps_per_epoch(&self) -> usize {
        let n = self.dataset.split(self.split).len();
        let b = self.config.batch_size;
        if self.config.drop_last {
            (n / self.config.world_size) / b
        } else {
            let mine = self.epoch_indices_len(n);
            mine.div_ceil(b)
        }
    }

    fn epoch_indices_len(&self, n: usize) -> usize {
        let (r, w) = (self.config.rank, self.config.world_size);
        if n > r {
            (n - r).div_ceil(w)
        } else {
            0
        }
    }

    /// The batches of `epoch` from step `start_step` on (resuming needs no replay), produced by
    /// worker threads ahead of the consumer. Dropping the iterator stops the workers.
    pub fn epoch(&self, epoch: u64, start_step: usize) -> EpochIter {
        let indices = Arc::new(self.epoch_indices(epoch));
        let steps = self.steps_per_epoch();
        let workers = self
            .config
            .workers
            .min(steps.saturating_sub(start_step))
            .max(1);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<Result<Batch, DataError>>(self.config.prefetch);
            let job = WorkerJob {
                dataset: Arc::clone(&self.dataset),
                split: self.split,
                augment: self.augment.clone(),
                indices: Arc::clone(&indices),
                batch_size: self.config.batch_size,
                epoch,
                first: start_step + w,
                stride: workers,
                steps,
                pool: self.pool.clone(),
            };
            handles.push(std::thread::spawn(move || job.run(tx)));
            receivers.push(rx);
        }
        EpochIter {
            receivers,
            handles,
            start_step,
            next_step: start_step,
            steps,
        }
    }
}

struct WorkerJob {
    dataset: Arc<Dataset>,
    split: SplitName,
    augment: Augment,
    indices: Arc<Vec<usize>>,
    batch_size: usize,
    epoch: u64,
    first: usize,
    stride: usize,
    steps: usize,
    pool: BufferPool,
}

impl WorkerJob {
    fn run(self, tx: SyncSender<Result<Batch, DataError>>) {
        let mut resizer = Resizer::new();
        let mut scratch = Vec::new();
        let mut decoded = Vec::new();
        let split = self.dataset.split(self.split);
        let c = self.dataset.channels();
        let o = self.augment.out_size;
        let per_image = c * o * o;
        let mut step = self.first;
        while step < self.steps {
            let lo = step * self.batch_size;
            let hi = (lo + self.batch_size).min(self.indices.len());
            let ids = &self.indices[lo..hi];
            let mut batch = Batch {
                images: self.pool.take(ids.len() * per_image),
                labels: Vec::with_capacity(ids.len()),
                indices: Vec::with_capacity(ids.len()),
                epoch: self.epoch,
                step,
                pool: Some(self.pool.clone()),
            };
            // a checksum mismatch found in the background stops the run here, naming the shard
            let mut failure = self.dataset.integrity().err();
            for (k, &index) in ids.iter().enumerate() {
                if failure.is_some() {
                    break;
                }
                let Some(sample) = split.get(index) else {
                    failure = Some(DataError::Worker(format!("index {index} out of range")));
                    break;
                };
                let out = &mut batch.images[k * per_image..(k + 1) * per_image];
                let applied = sample.pixels(&mut decoded).and_then(|pixels| {
                    self.augment.apply(
                        &mut resizer,
                        &mut scratch,
                        pixels,
                        (sample.width, sample.height),
                        self.epoch,
                        index as u64,
                        out,
                    )
                });
                if let Err(e) = applied {
                    failure = Some(e);
                    break;
                }
                batch.labels.push(sample.label as i64);
                batch.indices.push(index);
            }
            let message = match failure {
                Some(e) => Err(e),
                None => Ok(batch),
            };
            let stop = message.is_err();
            if tx.send(message).is_err() || stop {
                return;
            }
            step += self.stride;
        }
    }
}

/// The batches of one epoch, in step order.
pub struct EpochIter {
    receivers: Vec<Receiver<Result<Batch, DataError>>>,
    handles: Vec<JoinHandle<()>>,
    start_step: usize,
    next_step: usize,
    steps: usize,
}

impl EpochIter {
    /// Steps left in this epoch.
    pub fn remaining(&self) -> usize {
        self.steps.saturating_sub(self.next_step)
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_step >= self.steps || self.receivers.is_empty() {
            return None;
        }
        // worker w produces steps start_step + w, start_step + w + workers, ...
        let w = (self.next_step - self.start_step) % self.receivers.len();
        self.next_step += 1;
        match self.receivers[w].recv() {
            Ok(result) => Some(result),
            Err(_) => Some(Err(DataError::Worker(
                "a loader worker stopped unexpectedly".into(),
            ))),
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // closing the channels makes blocked workers return
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BufferPool;

    #[test]
    fn the_pool_hands_back_what_was_put_up_to_its_cap() {
        let pool = BufferPool::new(2);
        let a = pool.take(1000);
        let b = pool.take(1000);
        let c = pool.take(1000);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        pool.put(a);
        pool.put(b);
        pool.put(c); // over the cap: freed
        let again = [pool.take(1000), pool.take(10)];
        let mut got: Vec<_> = again.iter().map(|v| v.as_ptr()).collect();
        let mut want = vec![pa, pb];
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert_eq!((again[0].len(), again[1].len()), (1000, 10));
        assert!(pool.buffers.lock().expect("not poisoned").is_empty());
        pool.put(Vec::new()); // nothing to keep
        assert!(pool.buffers.lock().expect("not poisoned").is_empty());
    }
}
