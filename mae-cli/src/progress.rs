//! How `mae` shows a long job (the events of `mae_train::progress`): a bar with an ETA on
//! whichever stream is a terminal, timestamped plain lines with an ETA where the output is piped
//! or written to a file.
//!
//! Each command has a log stream: stdout, or stderr for a command whose stdout is its result
//! (`linprobe`, `knn`, `embed`). Plain lines go to the log stream unless the bar is drawn there;
//! the bar goes to the log stream when it is a terminal, else to stderr when that is one (so
//! `mae pretrain ... > log.txt` on a terminal shows the bar and writes the lines to the file).
//! Nothing here can stop a job: a closed or full stream is ignored.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mae_train::progress::{Event, Observer};

/// Plain progress lines of an encoder pass (no metrics lines) at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Where a command's progress lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error (the command's stdout is its result).
    Stderr,
}

impl Stream {
    fn is_terminal(self) -> bool {
        match self {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        }
    }

    /// Writes one line; a failure is ignored (logging never stops a job).
    fn line(self, text: &str) {
        let _ = match self {
            Stream::Stdout => writeln!(std::io::stdout().lock(), "{text}"),
            Stream::Stderr => writeln!(std::io::stderr().lock(), "{text}"),
        };
    }
}

/// The job under way.
struct Job {
    what: String,
    unit: String,
    total: u64,
    /// Units done when it started (a resumed run), and when.
    from: (u64, Instant),
    done: u64,
    last_plain: Instant,
}

impl Job {
    /// Time left at the rate since the start, once there is one.
    fn eta(&self) -> Option<Duration> {
        let (from, at) = self.from;
        let done = self.done.checked_sub(from).filter(|&d| d > 0)?;
        let per_unit = at.elapsed().as_secs_f64() / done as f64;
        let left = self.total.saturating_sub(self.done) as f64 * per_unit;
        Some(Duration::from_secs(left.round() as u64))
    }

    fn eta_text(&self) -> String {
        self.eta().map_or(String::new(), |d| {
            format!(" ETA {}", humantime::format_duration(d))
        })
    }
}

/// What the renderer holds between events.
struct State {
    log: Stream,
    bar: Option<(indicatif::ProgressBar, Stream)>,
    job: Option<Job>,
}

/// The observer `mae` hands its jobs.
pub struct Console {
    state: Mutex<State>,
}

impl Console {
    /// A renderer whose plain lines go to `log`.
    pub fn new(log: Stream) -> Arc<Self> {
        Arc::new(Console {
            state: Mutex::new(State {
                log,
                bar: None,
                job: None,
            }),
        })
    }
}

/// `2026-12-04T22:50:37Z` before a plain line.
fn stamped(text: &str) -> String {
    format!(
        "{} {text}",
        humantime::format_rfc3339_seconds(SystemTime::now())
    )
}

impl State {
    /// The stream to draw a bar on: the log stream if it is a terminal, else stderr if it is.
    fn bar_stream(&self) -> Option<Stream> {
        [self.log, Stream::Stderr]
            .into_iter()
            .find(|s| s.is_terminal())
    }

    fn start(&mut self, what: &str, total: u64, done: u64, unit: &str) {
        self.finish();
        self.bar = self.bar_stream().map(|stream| {
            let target = match stream {
                Stream::Stdout => indicatif::ProgressDrawTarget::stdout(),
                Stream::Stderr => indicatif::ProgressDrawTarget::stderr(),
            };
            let bar = indicatif::ProgressBar::with_draw_target(Some(total), target);
            let template = format!("{what} {{bar:30}} {{pos}}/{{len}} {unit} {{msg}} ETA {{eta}}");
            if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            bar.set_position(done);
            (bar, stream)
        });
        let now = Instant::now();
        self.job = Some(Job {
            what: what.to_string(),
            unit: unit.to_string(),
            total,
            from: (done, now),
            done,
            last_plain: now,
        });
    }

    /// Whether plain lines go to the log stream (no bar drawn there).
    fn plain(&self) -> bool {
        !matches!(&self.bar, Some((_, s)) if *s == self.log)
    }

    /// A line on the log stream: above the bar, or stamped.
    fn say(&self, text: &str) {
        match &self.bar {
            Some((bar, s)) if *s == self.log => bar.println(text),
            Some((bar, _)) => bar.suspend(|| self.log.line(&stamped(text))),
            None => self.log.line(&stamped(text)),
        }
    }

    fn progress(&mut self, done: u64) {
        if let Some((bar, _)) = &self.bar {
            bar.set_position(done);
        }
        let plain = self.plain();
        let Some(job) = &mut self.job else {
            return;
        };
        job.done = done;
        // training runs print their metrics lines; an encoder pass prints a line now and then
        if !plain || job.unit == "steps" || job.last_plain.elapsed() < PLAIN_EVERY {
            return;
        }
        job.last_plain = Instant::now();
        let text = format!(
            "{} {done}/{} {}{}",
            job.what,
            job.total,
            job.unit,
            job.eta_text()
        );
        self.say(&text);
    }

    fn metrics(&mut self, line: &mae_train::run::MetricsLine) {
        let text = format!(
            "loss {:.4} lr {:.3e} {:.1} img/s",
            line.loss, line.lr, line.images_per_s
        );
        if let Some((bar, _)) = &self.bar {
            bar.set_message(text.clone());
        }
        if let Some(job) = &mut self.job {
            job.done = line.step;
        }
        if !self.plain() {
            return;
        }
        let (total, eta) = self
            .job
            .as_ref()
            .map_or((0, String::new()), |j| (j.total, j.eta_text()));
        self.say(&format!(
            "step {}/{total} epoch {:.2} {text}{eta}",
            line.step, line.epoch
        ));
    }

    fn finish(&mut self) {
        if let Some((bar, _)) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.job = None;
    }
}

impl Observer for Console {
    fn event(&self, event: &Event<'_>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match *event {
            Event::Started {
                what,
                total,
                done,
                unit,
            } => state.start(what, total, done, unit),
            Event::Progress { done } => state.progress(done),
            Event::Metrics(line) => state.metrics(line),
            Event::Message(text) => state.say(text),
            Event::Warning(text) => {
                let text = format!("warning: {text}");
                match &state.bar {
                    Some((bar, _)) => bar.suspend(|| Stream::Stderr.line(&text)),
                    None => Stream::Stderr.line(&text),
                }
            }
            Event::Finished => state.finish(),
            Event::Eval { .. } | Event::Checkpoint(_) => {}
        }
    }
}
