//! What a training run shows and records while it runs: `metrics.jsonl` lines, a progress bar on
//! a terminal or plain log lines otherwise. Shared by pretraining and fine-tuning.
//!
//! PyTorch counterpart: `util/misc.MetricLogger` printing and the `log.txt` JSON lines that
//! `main_pretrain.py` / `main_finetune.py` write.
//!
//! Logging never stops a run: a closed or full stdout (`mae pretrain ... | head -1`, `> /dev/full`)
//! is ignored, and a metrics or eval line that cannot be written (a full disk) is reported once on
//! stderr and the run goes on; the checkpoint, which the run cannot do without, is where a full
//! disk stops it.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

/// One line on stdout; a closed or full stdout is ignored (logging never stops a run).
fn say(text: &str, to_stderr: bool) {
    let _ = match to_stderr {
        true => writeln!(std::io::stderr().lock(), "{text}"),
        false => writeln!(std::io::stdout().lock(), "{text}"),
    };
}

/// Appends one JSON line to `path`.
fn append_json_line(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string(value).map_err(std::io::Error::other)?;
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{text}")
}

use crate::error::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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

/// The metrics file, the progress display and the throughput window of one run.
pub struct RunLog {
    /// `None` on ranks other than 0, which write and print nothing.
    metrics: Option<(File, PathBuf)>,
    bar: indicatif::ProgressBar,
    interactive: bool,
    start: Instant,
    window: (Instant, usize),
    total_steps: u64,
    /// Files whose write failed (each is reported once).
    failed: Vec<PathBuf>,
    to_stderr: bool,
}

impl RunLog {
    /// Appends to `run_dir/metrics.jsonl`; shows a bar of `total_steps` at `step` on a terminal,
    /// or lines on stdout (on stderr with `to_stderr`). With `main` false (a data-parallel rank
    /// other than 0) it writes and shows nothing.
    pub fn open(
        run_dir: &Path,
        total_steps: u64,
        step: u64,
        (main, to_stderr): (bool, bool),
    ) -> Result<Self, TrainError> {
        let metrics = if main {
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
        let interactive = main
            && match to_stderr {
                true => std::io::stderr().is_terminal(),
                false => std::io::stdout().is_terminal(),
            };
        let bar = if interactive {
            let bar = indicatif::ProgressBar::new(total_steps);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
            {
                bar.set_style(style);
            }
            bar.set_position(step);
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Ok(RunLog {
            metrics,
            bar,
            interactive,
            to_stderr,
            start: Instant::now(),
            window: (Instant::now(), 0),
            total_steps,
            failed: Vec::new(),
        })
    }

    /// Counts images toward the throughput of the next line.
    pub fn images(&mut self, n: usize) {
        self.window.1 += n;
    }

    /// Moves the bar.
    pub fn position(&self, step: u64) {
        self.bar.set_position(step);
    }

    /// Writes a metrics line (and shows it) for optimizer `step`.
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
        let Some((metrics, metrics_path)) = &mut self.metrics else {
            return Ok(());
        };
        let text = serde_json::to_string(&line).map_err(|e| TrainError::Config(e.to_string()))?;
        let written = writeln!(metrics, "{text}").and_then(|()| metrics.flush());
        if let Err(e) = written {
            let path = metrics_path.clone();
            self.write_failed(&path, &e);
        }
        if self.interactive {
            self.bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} img/s",
                line.loss, line.lr, line.images_per_s
            ));
        } else {
            let text = format!(
                "step {}/{} epoch {:.2} loss {:.4} lr {:.3e} {:.1} img/s",
                line.step, self.total_steps, line.epoch, line.loss, line.lr, line.images_per_s
            );
            say(&text, self.to_stderr);
        }
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
        let _ = writeln!(
            std::io::stderr(),
            "warning: {}: {e}; the run goes on without these lines",
            path.display()
        );
    }

    /// Prints a message above the bar (or as a plain line).
    pub fn message(&self, text: &str) {
        if self.metrics.is_none() {
            return;
        }
        if self.interactive {
            self.bar.println(text);
        } else {
            say(text, self.to_stderr);
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
