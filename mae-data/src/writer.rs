//! Writing a prepared dataset: shards of fixed-size records and the manifest, into a temporary
//! directory that is renamed into place only when everything is written and synced. An interrupted
//! run leaves no half dataset under the output name.

use std::fs;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::dataset::SplitName;
use crate::error::DataError;
use crate::format::{
    record_len, Checksum, Manifest, ShardEntry, ShardHeader, Skipped, SplitEntry, FORMAT_NAME,
    FORMAT_VERSION, MANIFEST, MAX_IMAGE_SIZE,
};

/// Default upper bound of one shard's size.
pub const DEFAULT_SHARD_BYTES: usize = 256 << 20;

struct OpenShard {
    path: PathBuf,
    file: BufWriter<fs::File>,
    samples: usize,
}

struct SplitWriter {
    name: SplitName,
    entries: Vec<ShardEntry>,
    current: Option<OpenShard>,
    count: usize,
}

/// Writes one dataset directory. Dropping it before [`DatasetWriter::finish`] removes the
/// temporary directory.
pub struct DatasetWriter {
    out: PathBuf,
    tmp: PathBuf,
    replaced: PathBuf,
    force: bool,
    image_size: usize,
    channels: usize,
    shard_samples: usize,
    train: SplitWriter,
    val: SplitWriter,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    val_sum: Vec<f64>,
    val_sum_sq: Vec<f64>,
    finished: bool,
}

impl DatasetWriter {
    /// Starts writing `out`. An existing `out` is an error unless `force` and it is a prepared
    /// dataset with nothing else in it; it is replaced only at [`DatasetWriter::finish`].
    pub fn create(
        out: &Path,
        image_size: usize,
        channels: usize,
        force: bool,
    ) -> Result<Self, DataError> {
        if image_size == 0 || image_size > MAX_IMAGE_SIZE {
            return Err(DataError::Option(format!(
                "image size {image_size} is outside 1..={MAX_IMAGE_SIZE}"
            )));
        }
        if !(channels == 1 || channels == 3) {
            return Err(DataError::Option(format!(
                "channels must be 1 or 3, not {channels}"
            )));
        }
        crate::outdir::check_replaceable(out, force)?;
        let (tmp, replaced) = crate::outdir::work_names(out)?;
        let parent = tmp.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let split = |name| SplitWriter {
            name,
            entries: Vec::new(),
            current: None,
            count: 0,
        };
        Ok(DatasetWriter {
            out: out.to_path_buf(),
            tmp,
            replaced,
            force,
            image_size,
            channels,
            shard_samples: (DEFAULT_SHARD_BYTES / record_len(image_size, channels)).max(1),
            train: split(SplitName::Train),
            val: split(SplitName::Val),
            sum: vec![0.0; channels],
            sum_sq: vec![0.0; channels],
            val_sum: vec![0.0; channels],
            val_sum_sq: vec![0.0; channels],
            finished: false,
        })
    }

    /// Caps the number of samples per shard (default: shards of at most 256 MiB).
    pub fn with_shard_samples(mut self, samples: usize) -> Self {
        self.shard_samples = samples.max(1);
        self
    }

    /// Samples written so far to `split`.
    pub fn count(&self, split: SplitName) -> usize {
        match split {
            SplitName::Train => self.train.count,
            SplitName::Val => self.val.count,
        }
    }

    /// Appends one sample (`S×S×C` HWC pixels) to `split`.
    pub fn push(&mut self, split: SplitName, pixels: &[u8], label: i32) -> Result<(), DataError> {
        let expected = self.image_size * self.image_size * self.channels;
        if pixels.len() != expected {
            return Err(DataError::Option(format!(
                "sample has {} bytes, expected {expected}",
                pixels.len()
            )));
        }
        let (sum, sum_sq) = match split {
            SplitName::Train => (&mut self.sum, &mut self.sum_sq),
            SplitName::Val => (&mut self.val_sum, &mut self.val_sum_sq),
        };
        let c = self.channels;
        for (i, &v) in pixels.iter().enumerate() {
            let v = v as f64;
            sum[i % c] += v;
            sum_sq[i % c] += v * v;
        }
        let (tmp, image_size, channels, shard_samples) = (
            &self.tmp,
            self.image_size,
            self.channels,
            self.shard_samples,
        );
        let writer = match split {
            SplitName::Train => &mut self.train,
            SplitName::Val => &mut self.val,
        };
        if writer.current.is_none() {
            let path = tmp.join(format!(
                "{}-{:05}.shard",
                writer.name.as_str(),
                writer.entries.len()
            ));
            let file = fs::File::create(&path).map_err(|e| DataError::io(&path, e))?;
            let mut file = BufWriter::with_capacity(1 << 20, file);
            let header = ShardHeader {
                image_size: image_size as u32,
                channels: channels as u32,
                count: 0,
            };
            file.write_all(&header.to_bytes())
                .map_err(|e| DataError::io(&path, e))?;
            writer.current = Some(OpenShard {
                path,
                file,
                samples: 0,
            });
        }
        if let Some(shard) = writer.current.as_mut() {
            shard
                .file
                .write_all(&label.to_le_bytes())
                .and_then(|_| shard.file.write_all(pixels))
                .map_err(|e| DataError::io(&shard.path, e))?;
            shard.samples += 1;
            writer.count += 1;
            if shard.samples >= shard_samples {
                close_shard(writer, image_size, channels)?;
            }
        }
        Ok(())
    }

    /// Closes the shards, writes the manifest, syncs, and renames the directory into place.
    pub fn finish(
        mut self,
        classes: Vec<String>,
        source: String,
        skipped: Vec<Skipped>,
    ) -> Result<Manifest, DataError> {
        close_shard(&mut self.train, self.image_size, self.channels)?;
        close_shard(&mut self.val, self.image_size, self.channels)?;
        // statistics of the train split (of val when there is no train data)
        let pixels_per_channel = |n: usize| (n * self.image_size * self.image_size) as f64;
        let (sum, sum_sq, n) = if self.train.count > 0 {
            (
                &self.sum,
                &self.sum_sq,
                pixels_per_channel(self.train.count),
            )
        } else {
            (
                &self.val_sum,
                &self.val_sum_sq,
                pixels_per_channel(self.val.count),
            )
        };
        let mean: Vec<f64> = sum.iter().map(|s| s / n.max(1.0) / 255.0).collect();
        let std: Vec<f64> = sum_sq
            .iter()
            .zip(&mean)
            .map(|(sq, m)| {
                ((sq / n.max(1.0) / (255.0 * 255.0)) - m * m)
                    .max(0.0)
                    .sqrt()
            })
            .collect();
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            image_size: self.image_size,
            channels: self.channels,
            count: self.train.count + self.val.count,
            classes,
            mean,
            std,
            source,
            train: SplitEntry {
                count: self.train.count,
                shards: std::mem::take(&mut self.train.entries),
            },
            val: SplitEntry {
                count: self.val.count,
                shards: std::mem::take(&mut self.val.entries),
            },
            skipped,
        };
        let path = self.tmp.join(MANIFEST);
        let json = serde_json::to_string_pretty(&manifest).map_err(|e| DataError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_synced(&path, json.as_bytes())?;
        if let Ok(d) = fs::File::open(&self.tmp) {
            let _ = d.sync_all();
        }
        if fs::symlink_metadata(&self.out).is_ok() {
            // checked again: the folder may have changed while the shards were written
            crate::outdir::check_replaceable(&self.out, self.force)?;
            let old = &self.replaced;
            fs::rename(&self.out, old).map_err(|e| DataError::io(&self.out, e))?;
            fs::rename(&self.tmp, &self.out).map_err(|e| DataError::io(&self.out, e))?;
            fs::remove_dir_all(old).map_err(|e| DataError::io(old, e))?;
        } else {
            fs::rename(&self.tmp, &self.out).map_err(|e| DataError::io(&self.out, e))?;
        }
        self.finished = true;
        Ok(manifest)
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let mut f = fs::File::create(path).map_err(|e| DataError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| DataError::io(path, e))
}

/// Finishes the open shard of `writer`: writes the real count into the header, syncs, and records
/// size and checksum.
fn close_shard(
    writer: &mut SplitWriter,
    image_size: usize,
    channels: usize,
) -> Result<(), DataError> {
    let Some(shard) = writer.current.take() else {
        return Ok(());
    };
    let path = shard.path;
    let io = |e| DataError::io(&path, e);
    let mut file = shard.file.into_inner().map_err(|e| io(e.into_error()))?;
    let header = ShardHeader {
        image_size: image_size as u32,
        channels: channels as u32,
        count: shard.samples as u64,
    };
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&header.to_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    let bytes = fs::read(&path).map_err(io)?;
    writer.entries.push(ShardEntry {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        samples: shard.samples,
        bytes: bytes.len() as u64,
        checksum: Checksum::of(&bytes),
    });
    Ok(())
}
