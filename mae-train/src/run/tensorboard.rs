//! TensorBoard event files: the scalars of a run (`train_loss`, `lr`, throughput, evaluation
//! accuracy) in `events.out.tfevents.*` files that `tensorboard --logdir RUN` reads.
//!
//! PyTorch counterpart: `torch.utils.tensorboard.SummaryWriter` as `main_pretrain.py` /
//! `main_finetune.py` use it (`log_writer.add_scalar('train_loss', ...)`, `'lr'`,
//! `'perf/test_acc1'`), with `purge_step` on a resume.
//!
//! The format is TensorFlow's: a file of records, each `u64` length, masked CRC-32C of the length,
//! the data, masked CRC-32C of the data (little-endian); each record one `tensorflow.Event`
//! protocol buffer. Only the fields a scalar needs are written (`event.proto`, `summary.proto`):
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
//!           Summary summary = 5; SessionLog session_log = 6; }
//! Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
//! SessionLog { SessionStatus status = 1; }  // START = 1
//! ```
//!
//! A resumed run opens a new file whose first events say "the session restarted at step N"
//! (`SessionLog START`, as `SummaryWriter(purge_step=N)` writes): TensorBoard then drops the
//! points at and after N of the older files, which the interrupted run had logged past its last
//! checkpoint, so the curve has one value per step, as `metrics.jsonl` has.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// CRC-32C (Castagnoli), the checksum of TFRecord framing.
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The TFRecord checksum of `bytes`: CRC-32C rotated right by 15 bits plus a constant.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = CRC32C.checksum(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Protocol-buffer encoding of the few fields an event needs.
mod proto {
    /// A varint.
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A field key: number and wire type (0 varint, 1 64-bit, 2 length-delimited, 5 32-bit).
    pub fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire));
    }

    /// A length-delimited field (string, bytes, embedded message).
    pub fn bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
        key(out, field, 2);
        varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }
}

/// What an event carries besides its time and step.
enum What<'a> {
    FileVersion,
    /// A `SessionLog` with status START.
    SessionStart,
    Scalar(&'a str, f32),
}

/// One `tensorflow.Event`, encoded.
fn event(wall_time: f64, step: u64, what: What<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    proto::key(&mut out, 1, 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    proto::key(&mut out, 2, 0);
    proto::varint(&mut out, step);
    match what {
        What::FileVersion => proto::bytes(&mut out, 3, b"brain.Event:2"),
        What::SessionStart => {
            // SessionLog { status: START }
            proto::bytes(&mut out, 6, &[0x08, 0x01]);
        }
        What::Scalar(tag, value) => {
            let mut v = Vec::new();
            proto::bytes(&mut v, 1, tag.as_bytes());
            proto::key(&mut v, 2, 5);
            v.extend_from_slice(&value.to_le_bytes());
            let mut summary = Vec::new();
            proto::bytes(&mut summary, 1, &v);
            proto::bytes(&mut out, 5, &summary);
        }
    }
    out
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Whether a file named `name` is an event file, by TensorBoard's rule (`tfevents` in the
/// name).
pub fn is_event_file(name: &str) -> bool {
    name.contains("tfevents")
}

/// One event file of a run.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (`events.out.tfevents.<seconds>.<host>.<pid>.<n>`, never an
    /// existing one), opened with the file-version event; `resumed_at` (a resumed run's step)
    /// also writes the session restart that makes TensorBoard drop the older files' points from
    /// that step on.
    pub fn create(dir: &Path, resumed_at: Option<u64>) -> std::io::Result<Self> {
        let secs = now() as u64;
        let host = hostname();
        let pid = std::process::id();
        let (path, file) = (0..100)
            .find_map(|n| {
                let path = dir.join(format!("events.out.tfevents.{secs}.{host}.{pid}.{n}"));
                let file = File::options().write(true).create_new(true).open(&path);
                match file {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                    other => Some(other.map(|f| (path, f))),
                }
            })
            .unwrap_or_else(|| Err(std::io::Error::other("no free event-file name")))?;
        let mut w = EventWriter {
            file: BufWriter::new(file),
            path,
        };
        let step = resumed_at.unwrap_or(0);
        w.write(&event(now(), step, What::FileVersion))?;
        if resumed_at.is_some() {
            w.write(&event(now(), step, What::SessionStart))?;
        }
        w.flush()?;
        Ok(w)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds `value` under `tag` at `step` (kept in a buffer until [`EventWriter::flush`]).
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> std::io::Result<()> {
        self.write(&event(now(), step, What::Scalar(tag, value as f32)))
    }

    /// Writes the buffered events to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    fn write(&mut self, event: &[u8]) -> std::io::Result<()> {
        self.file.write_all(&record(event))
    }
}

/// The host name for the file name (as TensorFlow's writers put it there), letters, digits, `-`
/// and `.` only; `localhost` when it cannot be read.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let clean: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// Reading event files back: the records and the scalars in them (what `tensorboard`'s event
/// reader gives), for tests and tools.
pub mod read {
    use std::path::Path;

    /// A scalar read back.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Scalar {
        /// The event's step.
        pub step: u64,
        /// The summary value's tag.
        pub tag: String,
        /// Its `simple_value`.
        pub value: f32,
    }

    /// What an event file holds, in order.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Event {
        /// The file-version event.
        FileVersion(String),
        /// A session (re)start at a step.
        SessionStart(u64),
        /// A scalar.
        Scalar(Scalar),
    }

    /// The records of `bytes`, each checked against its two checksums. A record cut short at
    /// the end (a run killed while writing) ends the list, as TensorBoard's reader waits there
    /// for the rest.
    pub fn records(mut bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let Some(head) = bytes.get(..12) else {
                break;
            };
            let (len, crc) = head.split_at(8);
            if u32::from_le_bytes(crc.try_into().map_err(|_| "header")?)
                != super::masked_crc32c(len)
            {
                return Err(format!("record {}: length checksum mismatch", out.len()));
            }
            let n = u64::from_le_bytes(len.try_into().map_err(|_| "header")?);
            let n = usize::try_from(n).map_err(|_| "record too long")?;
            let end = n.checked_add(16).ok_or("record too long")?;
            let Some(rec) = bytes.get(..end) else {
                break;
            };
            let (data, crc) = rec[12..].split_at(n);
            if u32::from_le_bytes(crc.try_into().map_err(|_| "crc")?) != super::masked_crc32c(data)
            {
                return Err(format!("record {}: data checksum mismatch", out.len()));
            }
            out.push(data);
            bytes = &bytes[end..];
        }
        Ok(out)
    }

    /// The next `n` bytes of `b`.
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        let head = b.get(..n).ok_or("field cut short")?;
        *b = &b[n..];
        Ok(head)
    }

    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().ok_or("varint cut short")?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    /// One field of a message: its number, and its varint value or its payload.
    type Field<'a> = (u64, u64, &'a [u8]);

    /// The fields of one message.
    fn fields(mut b: &[u8]) -> Result<Vec<Field<'_>>, String> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b)?;
            let (field, wire) = (key >> 3, key & 7);
            match wire {
                0 => out.push((field, varint(&mut b)?, &[][..])),
                1 => out.push((field, 0, take(&mut b, 8)?)),
                2 => {
                    let n = usize::try_from(varint(&mut b)?).map_err(|_| "length")?;
                    out.push((field, 0, take(&mut b, n)?));
                }
                5 => out.push((field, 0, take(&mut b, 4)?)),
                w => return Err(format!("wire type {w}")),
            }
        }
        Ok(out)
    }

    /// The events of one encoded `Event` (a summary may hold several values).
    pub fn decode(data: &[u8]) -> Result<Vec<Event>, String> {
        let mut step = 0;
        let mut out = Vec::new();
        let mut values = Vec::new();
        for (field, v, payload) in fields(data)? {
            match field {
                2 => step = v,
                3 => out.push(Event::FileVersion(
                    String::from_utf8_lossy(payload).into_owned(),
                )),
                5 => values.extend(
                    fields(payload)?
                        .into_iter()
                        .filter(|f| f.0 == 1)
                        .map(|f| f.2),
                ),
                6 => out.push(Event::SessionStart(u64::MAX)),
                _ => {}
            }
        }
        for e in &mut out {
            if let Event::SessionStart(s) = e {
                *s = step;
            }
        }
        for value in values {
            let (mut tag, mut x) = (String::new(), None);
            for (field, _, payload) in fields(value)? {
                match field {
                    1 => tag = String::from_utf8_lossy(payload).into_owned(),
                    2 => x = Some(f32::from_le_bytes(payload.try_into().map_err(|_| "float")?)),
                    _ => {}
                }
            }
            let value = x.ok_or_else(|| format!("{tag}: no simple_value"))?;
            out.push(Event::Scalar(Scalar { step, tag, value }));
        }
        Ok(out)
    }

    /// Every event of the file at `path`.
    pub fn events(path: &Path) -> Result<Vec<Event>, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut out = Vec::new();
        for r in records(&bytes)? {
            out.extend(decode(r)?);
        }
        Ok(out)
    }

    /// The scalars of every event file in `dir` (files in name order, which is time order), as
    /// TensorBoard shows them: a session restart at step N drops the points at N and after
    /// that the earlier files hold.
    pub fn scalars(dir: &Path) -> Result<Vec<Scalar>, String> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| super::is_event_file(&n.to_string_lossy()))
            })
            .collect();
        files.sort();
        let mut out: Vec<Scalar> = Vec::new();
        for f in files {
            for e in events(&f)? {
                match e {
                    Event::SessionStart(step) => out.retain(|s| s.step < step),
                    Event::Scalar(s) => out.push(s),
                    Event::FileVersion(_) => {}
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::read::{self, Event, Scalar};
    use super::*;

    #[test]
    fn crc32c_and_its_mask_are_tensorflows() {
        // the CRC-32C check value (RFC 3720, B.4)
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
        assert_eq!(CRC32C.checksum(&[0u8; 32]), 0x8a91_36aa);
        // masked: rotated right 15 bits, plus 0xa282ead8 (worked out by hand from 0xe3069283)
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn a_record_is_length_crc_data_crc() {
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc32c(b"abc").to_le_bytes());
        assert_eq!(read::records(&r).expect("valid"), vec![&b"abc"[..]]);
        let mut bad = r.clone();
        bad[13] ^= 1;
        assert!(read::records(&bad).is_err());
        // a record cut short at the end is left out; one cut in the middle is not a file
        let two = [r.clone(), r.clone()].concat();
        assert_eq!(
            read::records(&two[..two.len() - 1]).expect("valid").len(),
            1
        );
        assert_eq!(read::records(&two[..5]).expect("valid").len(), 0);
    }

    #[test]
    fn a_scalar_event_encodes_as_protobuf() {
        let e = event(1.5, 300, What::Scalar("lr", 0.25));
        // wall_time (field 1, 64-bit), step (field 2, varint 300 = ac 02), summary (field 5)
        let mut expected = vec![0x09];
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        expected.extend_from_slice(&[0x10, 0xac, 0x02, 0x2a, 11, 0x0a, 9, 0x0a, 2, b'l', b'r']);
        expected.push(0x15);
        expected.extend_from_slice(&0.25f32.to_le_bytes());
        assert_eq!(e, expected);
        let back = read::decode(&e).expect("decodes");
        let want = Scalar {
            step: 300,
            tag: "lr".into(),
            value: 0.25,
        };
        assert_eq!(back, vec![Event::Scalar(want)]);
    }

    #[test]
    fn a_resumed_run_replaces_the_points_past_its_checkpoint() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut first = EventWriter::create(dir.path(), None).expect("creates");
        for step in 1..=5 {
            first
                .scalar("train_loss", step, step as f64)
                .expect("writes");
        }
        first.flush().expect("flushes");
        drop(first);
        let mut second = EventWriter::create(dir.path(), Some(3)).expect("creates");
        assert!(second.path().to_string_lossy().contains("tfevents"));
        second.scalar("train_loss", 4, 40.0).expect("writes");
        second.flush().expect("flushes");
        let events = read::events(second.path()).expect("reads");
        assert_eq!(events[0], Event::FileVersion("brain.Event:2".into()));
        assert_eq!(events[1], Event::SessionStart(3));
        let got: Vec<(u64, f32)> = read::scalars(dir.path())
            .expect("reads")
            .into_iter()
            .map(|s| (s.step, s.value))
            .collect();
        assert_eq!(got, vec![(1, 1.0), (2, 2.0), (4, 40.0)]);
    }
}
