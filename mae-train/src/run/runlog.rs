//! What a training run records while it runs: `metrics.jsonl` lines, TensorBoard scalars
//! ([`crate::run::tensorboard`]), and the events its caller's [`Observer`] receives (the
//! library prints nothing). Shared by every training run.
//!
//! PyTorch counterpart: `util/misc.MetricLogger`, the `log.txt` JSON lines and the
//! `SummaryWriter` scalars that `main_pretrain.py` / `main_finetune.py` write.
//!
//! Logging never stops a run: a metrics or eval line or an event file that cannot be written (a
//! full disk) is reported once as a warning event and the run goes on; the checkpoint, which the
//! run cannot do without, is where a full disk stops it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::error::TrainError;
use crate::run::progress::{Event, Observer};
use crate::run::tensorboard::{is_event_file, EventWriter};

/// Appends one JSON line to `path`.
fn append_json_line(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string(value).map_err(std::io::Error::other)?;
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{text}")
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MetricsLine {
    /// Optimizer step.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Mean training loss of the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Throughput since the previous line.
    pub images_per_s: f64,
    /// Seconds since the run (or resume) started.
    pub elapsed_s: f64,
}

/// The metrics file, the event file, the observer and the throughput window of one run.
pub struct RunLog {
    /// `None` on ranks other than 0, which write and report nothing.
    metrics: Option<(File, PathBuf)>,
    observer: Arc<dyn Observer>,
    start: Instant,
    window: (Instant, usize),
    /// The run's TensorBoard event file (rank 0, unless turned off).
    events: Option<EventWriter>,
    /// Files whose write failed (each is reported once).
    failed: Vec<PathBuf>,
}

/// Where a run's log goes: which rank it is, whether it writes TensorBoard event files, and
/// what it is (the [`Event::Started`] name).
#[derive(Debug, Clone, Copy)]
pub struct LogPlace<'a> {
    /// Rank 0 (the others write and report nothing).
    pub main: bool,
    /// TensorBoard event files in the run folder.
    pub tensorboard: bool,
    /// `pretrain`, `finetune`, `linprobe`.
    pub what: &'a str,
}

impl RunLog {
    /// Appends to `run_dir/metrics.jsonl` and (with `place.tensorboard`) a new event file, and
    /// tells `observer` a run of `total_steps` starts at `step`. With `main` false (a
    /// data-parallel rank other than 0) it writes and reports nothing.
    pub fn open(
        run_dir: &Path,
        (total_steps, step): (u64, u64),
        place: LogPlace<'_>,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, TrainError> {
        let metrics = if place.main {
            let metrics_path = run_dir.join("metrics.jsonl");
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|e| TrainError::io(&metrics_path, e))?;
            Some((file, metrics_path))
        } else {
            None
        };
        let mut log = RunLog {
            metrics,
            observer,
            start: Instant::now(),
            window: (Instant::now(), 0),
            events: None,
            failed: Vec::new(),
        };
        if place.main {
            log.observer.event(&Event::Started {
                what: place.what,
                total: total_steps,
                done: step,
                unit: "steps",
            });
        }
        if place.main && place.tensorboard {
            log.open_events(run_dir, step);
        }
        Ok(log)
    }

    /// A new event file in `run_dir`; where earlier ones are (a resumed run, whose
    /// `metrics.jsonl` kept the lines up to `step`), it tells TensorBoard to drop their points
    /// after `step`. A file that cannot be made is reported and the run goes on without.
    fn open_events(&mut self, run_dir: &Path, step: u64) {
        let earlier = std::fs::read_dir(run_dir).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| is_event_file(&e.file_name().to_string_lossy())))
        });
        let purge = earlier.then_some(step.saturating_add(1));
        match EventWriter::create(run_dir, purge) {
            Ok(w) => self.events = Some(w),
            Err(e) => self.write_failed(&run_dir.join("events.out.tfevents.*"), &e),
        }
    }

    /// Adds TensorBoard scalars at optimizer `step` and writes them out; a failure is reported
    /// once and the run goes on.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) {
        let Some(w) = &mut self.events else {
            return;
        };
        let written = values
            .iter()
            .try_for_each(|(tag, v)| w.scalar(tag, step, *v))
            .and_then(|()| w.flush());
        if let Err(e) = written {
            let path = w.path().to_path_buf();
            self.events = None;
            self.write_failed(&path, &e);
        }
    }

    /// An evaluation at an epoch's end: its values as TensorBoard scalars (their names are the
    /// tags: `perf/test_acc1`, `knn/top1`, ...) and an [`Event::Eval`].
    pub fn eval(&mut self, epoch: u64, step: u64, values: &[(&str, f64)]) {
        self.scalars(step, values);
        if self.metrics.is_some() {
            self.observer.event(&Event::Eval {
                epoch,
                step,
                values,
            });
        }
    }

    /// Counts images toward the throughput of the next line.
    pub fn images(&mut self, n: usize) {
        self.window.1 += n;
    }

    /// Reports `step` optimizer steps done.
    pub fn position(&self, step: u64) {
        if self.metrics.is_some() {
            self.observer.event(&Event::Progress { done: step });
        }
    }

    /// Writes a metrics line (and reports it) for optimizer `step`.
    pub fn line(&mut self, step: u64, epoch: f64, loss: f64, lr: f64) -> Result<(), TrainError> {
        let secs = self.window.0.elapsed().as_secs_f64();
        let line = MetricsLine {
            step,
            epoch,
            loss,
            lr,
            images_per_s: self.window.1 as f64 / secs.max(1e-9),
            elapsed_s: self.start.elapsed().as_secs_f64(),
        };
        self.window = (Instant::now(), 0);
        self.scalars(
            step,
            &[
                ("train_loss", loss),
                ("lr", lr),
                ("epoch", epoch),
                ("images_per_s", line.images_per_s),
            ],
        );
        let Some((metrics, metrics_path)) = &mut self.metrics else {
            return Ok(());
        };
        let text = serde_json::to_string(&line).map_err(|e| TrainError::Config(e.to_string()))?;
        let written = writeln!(metrics, "{text}").and_then(|()| metrics.flush());
        if let Err(e) = written {
            let path = metrics_path.clone();
            self.write_failed(&path, &e);
        }
        self.observer.event(&Event::Metrics(&line));
        Ok(())
    }

    /// Appends `value` as a JSON line to `path` (an `eval.jsonl`); a failure is reported once
    /// and the run goes on.
    pub fn append(&mut self, path: &Path, value: &impl Serialize) {
        if let Err(e) = append_json_line(path, value) {
            self.write_failed(path, &e);
        }
    }

    fn write_failed(&mut self, path: &Path, e: &std::io::Error) {
        if self.failed.iter().any(|p| p == path) {
            return;
        }
        self.failed.push(path.to_path_buf());
        let text = format!(
            "{}: {e}; the run goes on without these lines",
            path.display()
        );
        self.observer.event(&Event::Warning(&text));
    }

    /// Reports a message (rank 0 only).
    pub fn message(&self, text: &str) {
        if self.metrics.is_some() {
            self.observer.event(&Event::Message(text));
        }
    }

    /// Reports a checkpoint written.
    pub fn checkpoint(&self, path: &Path) {
        if self.metrics.is_some() {
            self.observer.event(&Event::Checkpoint(path));
        }
    }

    /// Reports the run's end.
    pub fn finish(&self) {
        if self.metrics.is_some() {
            self.observer.event(&Event::Finished);
        }
    }
}
