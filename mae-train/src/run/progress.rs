//! What a long job tells its caller while it runs: progress events handed to an [`Observer`]
//! the caller chooses. The library never prints; `mae` renders the events as a progress bar on a
//! terminal or as timestamped lines, a program that reuses the crate records or ignores them
//! ([`Quiet`]).
//!
//! PyTorch counterpart: `util/misc.MetricLogger.log_every` (the lines the official scripts
//! print) — here the loop reports, and printing is the caller's business.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::run::MetricsLine;

/// One thing a job reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'a> {
    /// A job (or one phase of it) starts: `total` units (optimizer steps, or images of an
    /// encoder pass), `done` of them done already (a resumed run).
    Started {
        /// What runs: `pretrain`, `finetune`, `linprobe`, `features train`, ...
        what: &'a str,
        /// The units of the whole job.
        total: u64,
        /// Those done before this start.
        done: u64,
        /// `steps` or `images`.
        unit: &'a str,
    },
    /// `done` units of the job are done.
    Progress {
        /// Units done.
        done: u64,
    },
    /// A training step's metrics line (also in `metrics.jsonl`).
    Metrics(&'a MetricsLine),
    /// An evaluation at an epoch's end: its values (`top1`, `knn_top1`, ...).
    Eval {
        /// Epochs done.
        epoch: u64,
        /// Optimizer steps done.
        step: u64,
        /// Names and values.
        values: &'a [(&'a str, f64)],
    },
    /// A checkpoint was written.
    Checkpoint(&'a Path),
    /// Something the user should read (resumed from, a leftover removed, a summary).
    Message(&'a str),
    /// Something went wrong that the job goes on without (a log file that cannot be written).
    Warning(&'a str),
    /// The job (or phase) ended.
    Finished,
}

/// Receives a job's events. Called from the job's thread; an observer must not fail the job
/// (it has no way to).
pub trait Observer: Send + Sync {
    /// One event.
    fn event(&self, event: &Event<'_>);
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// An observer that keeps every event as text (`{event:?}`), for tests and tools.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<String>>,
}

impl Recorder {
    /// The events so far.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Observer for Recorder {
    fn event(&self, event: &Event<'_>) {
        if let Ok(mut e) = self.events.lock() {
            e.push(format!("{event:?}"));
        }
    }
}

/// An observer as a field of a settings struct (`Debug`, `Clone`, quiet by default).
#[derive(Clone)]
pub struct Reporter(pub Arc<dyn Observer>);

impl Default for Reporter {
    /// [`Quiet`].
    fn default() -> Self {
        Reporter(Arc::new(Quiet))
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

/// Reports a pass over `total` images named `what` to `observer`: started now, then `done`
/// images at a time, finished when dropped.
pub struct Pass<'a> {
    observer: &'a dyn Observer,
    done: u64,
}

impl<'a> Pass<'a> {
    /// Starts the pass.
    pub fn start(observer: &'a dyn Observer, what: &str, total: usize) -> Self {
        observer.event(&Event::Started {
            what,
            total: total as u64,
            done: 0,
            unit: "images",
        });
        Pass { observer, done: 0 }
    }

    /// `n` more images done.
    pub fn add(&mut self, n: usize) {
        self.done += n as u64;
        self.observer.event(&Event::Progress { done: self.done });
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.observer.event(&Event::Finished);
    }
}

/// What a caller hands a training run besides its settings: the flag that stops it (set it from
/// a signal handler: the run finishes its step, saves and stops) and the observer of its
/// progress.
#[derive(Clone)]
pub struct Hooks {
    /// Polled after every optimizer step.
    pub stop: Arc<AtomicBool>,
    /// Receives the run's events.
    pub observer: Arc<dyn Observer>,
}

impl Hooks {
    /// `stop` and `observer`.
    pub fn new(stop: Arc<AtomicBool>, observer: Arc<dyn Observer>) -> Self {
        Hooks { stop, observer }
    }

    /// Quiet, never stopped, but by `stop`.
    pub fn stop_only(stop: Arc<AtomicBool>) -> Self {
        Hooks::new(stop, Arc::new(Quiet))
    }
}

impl Default for Hooks {
    /// Never stopped, quiet.
    fn default() -> Self {
        Hooks::stop_only(Arc::new(AtomicBool::new(false)))
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}
