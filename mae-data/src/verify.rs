//! Checksum verification off the critical path: a thread hashes each shard once per process
//! while training reads it, and the outcome is polled ([`Integrity::check`]) or awaited
//! ([`Integrity::wait`]).
//!
//! PyTorch counterpart: none (torchvision decodes whatever is on disk, and a corrupt file fails at
//! the step that reads it, or trains silently on garbage).

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::error::DataError;
use crate::format::{Checksum, ShardEntry};

/// Why verification failed (kept as data: `DataError` holds an `io::Error` and is not `Clone`).
#[derive(Debug, Clone)]
enum Failure {
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    Unreadable {
        path: PathBuf,
        message: String,
    },
}

impl Failure {
    fn to_error(&self) -> DataError {
        match self {
            Failure::Mismatch {
                path,
                expected,
                actual,
            } => DataError::Checksum {
                path: path.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            },
            Failure::Unreadable { path, message } => {
                DataError::shard(path, format!("cannot be read to verify it: {message}"))
            }
        }
    }
}

#[derive(Debug)]
enum State {
    Running,
    Passed,
    Failed(Failure),
}

/// The verification of one dataset's shards.
#[derive(Debug)]
pub struct Integrity {
    state: Mutex<State>,
    done: Condvar,
    cancelled: AtomicBool,
}

/// A shard as verified: path, checksum, bytes and modification time (a file rewritten since is
/// hashed again).
type Key = (PathBuf, String, u64, Option<std::time::SystemTime>);

/// Shards verified in this process.
fn verified() -> &'static Mutex<HashSet<Key>> {
    static SET: OnceLock<Mutex<HashSet<Key>>> = OnceLock::new();
    SET.get_or_init(Default::default)
}

impl Integrity {
    /// No verification: reports success at once.
    pub fn unchecked() -> Arc<Self> {
        Arc::new(Integrity {
            state: Mutex::new(State::Passed),
            done: Condvar::new(),
            cancelled: AtomicBool::new(false),
        })
    }

    /// Starts a thread hashing `shards` (path and manifest entry) in order; unless `all`, those
    /// verified earlier in this process (and not modified since) are skipped. The thread stops
    /// early when [`Integrity::cancel`] is called.
    pub fn spawn(shards: Vec<(PathBuf, ShardEntry)>, all: bool) -> Arc<Self> {
        let this = Arc::new(Integrity {
            state: Mutex::new(State::Running),
            done: Condvar::new(),
            cancelled: AtomicBool::new(false),
        });
        let worker = Arc::clone(&this);
        let spawned = std::thread::Builder::new()
            .name("mae-verify".into())
            .spawn(move || {
                let outcome = worker.hash_all(&shards, all);
                worker.settle(outcome);
            });
        if let Err(e) = spawned {
            this.settle(Err(Failure::Unreadable {
                path: PathBuf::from("<dataset>"),
                message: format!("no thread to verify checksums: {e}"),
            }));
        }
        this
    }

    fn settle(&self, outcome: Result<(), Failure>) {
        if let Ok(mut s) = self.state.lock() {
            *s = match outcome {
                Ok(()) => State::Passed,
                Err(f) => State::Failed(f),
            };
        }
        self.done.notify_all();
    }

    fn hash_all(&self, shards: &[(PathBuf, ShardEntry)], all: bool) -> Result<(), Failure> {
        for (path, entry) in shards {
            let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            let key = (path.clone(), entry.checksum.clone(), entry.bytes, mtime);
            if !all && verified().lock().is_ok_and(|set| set.contains(&key)) {
                continue;
            }
            let Some(actual) = self.hash_file(path)? else {
                return Ok(()); // cancelled
            };
            if actual != entry.checksum {
                return Err(Failure::Mismatch {
                    path: path.clone(),
                    expected: entry.checksum.clone(),
                    actual,
                });
            }
            if let Ok(mut set) = verified().lock() {
                set.insert(key);
            }
        }
        Ok(())
    }

    /// The checksum of one file, or `None` when cancelled midway.
    fn hash_file(&self, path: &PathBuf) -> Result<Option<String>, Failure> {
        let unreadable = |e: std::io::Error| Failure::Unreadable {
            path: path.clone(),
            message: e.to_string(),
        };
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        let mut sum = Checksum::new();
        let mut buf = vec![0u8; 4 << 20];
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let n = file.read(&mut buf).map_err(unreadable)?;
            if n == 0 {
                return Ok(Some(sum.finish()));
            }
            sum.update(&buf[..n]);
        }
    }

    /// `Err` once a shard failed; `Ok` while running or passed.
    pub fn check(&self) -> Result<(), DataError> {
        match self.state.lock() {
            Ok(s) => match &*s {
                State::Failed(f) => Err(f.to_error()),
                _ => Ok(()),
            },
            Err(_) => Err(DataError::Worker("the checksum verifier panicked".into())),
        }
    }

    /// Blocks until the verification ended; its outcome.
    pub fn wait(&self) -> Result<(), DataError> {
        let Ok(mut s) = self.state.lock() else {
            return Err(DataError::Worker("the checksum verifier panicked".into()));
        };
        while matches!(*s, State::Running) {
            s = match self.done.wait(s) {
                Ok(s) => s,
                Err(_) => return Err(DataError::Worker("the checksum verifier panicked".into())),
            };
        }
        match &*s {
            State::Failed(f) => Err(f.to_error()),
            _ => Ok(()),
        }
    }

    /// Stops the thread at its next read (the dataset is gone).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}
