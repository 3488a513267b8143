//! Walking an image folder: which entries become images, which are reported as skipped, which
//! are ignored. One unreadable corner of a million-image folder never stops the walk.
//!
//! PyTorch counterpart: `torchvision.datasets.folder.make_dataset` (`os.scandir` +
//! `os.walk(followlinks=True)`), which raises on the first unreadable folder.
//!
//! The rules (also in the crate's README):
//! - hidden entries (a name starting with `.`) are ignored;
//! - files with an image extension ([`crate::prepare::IMAGE_EXTENSIONS`]) are images, other files
//!   are ignored;
//! - links are followed, to files and to folders; a link whose target is missing or unreadable is
//!   reported (`broken link`); a link to a folder that contains it is reported (`link cycle`) and
//!   not followed; a folder reached twice through links is read twice;
//! - an entry with an image extension that is not a regular file (a FIFO, a socket, a device) is
//!   reported and never opened (reading a FIFO would wait forever);
//! - a folder or an entry that cannot be read is reported with the system's reason and the walk
//!   goes on; only an unreadable source folder itself is an error.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::format::Skipped;

/// Lists one folder: the paths of its entries, in any order.
pub(crate) type ListDir = dyn Fn(&Path) -> io::Result<Vec<PathBuf>>;

/// The entries of `dir` as `fs::read_dir` gives them (an entry that fails is an error).
pub(crate) fn list_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
}

/// What an entry is, by the rules above.
enum Kind {
    Folder,
    Image,
    Ignored,
}

/// One walk over a source folder, collecting what it skips.
pub(crate) struct Walk<'a> {
    root: &'a Path,
    list: &'a ListDir,
    /// Everything reported so far (paths relative to the root).
    pub skipped: Vec<Skipped>,
}

impl<'a> Walk<'a> {
    /// A walk of `root` that lists folders with `list`; `root` itself must be a readable folder.
    pub fn new(root: &'a Path, list: &'a ListDir) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(DataError::source(root, "not a directory"));
        }
        list(root).map_err(|e| DataError::io(root, e))?;
        Ok(Walk {
            root,
            list,
            skipped: Vec::new(),
        })
    }

    /// `path` relative to the root, as reports and the manifest name it.
    pub fn rel(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    fn skip(&mut self, path: &Path, reason: String) {
        self.skipped.push(Skipped {
            path: self.rel(path),
            reason,
        });
    }

    /// The entries of `dir`, sorted; an unreadable folder is reported and has none.
    fn entries(&mut self, dir: &Path) -> Vec<PathBuf> {
        match (self.list)(dir) {
            Ok(mut entries) => {
                entries.sort();
                entries
            }
            Err(e) => {
                self.skip(dir, format!("unreadable folder: {e}"));
                Vec::new()
            }
        }
    }

    fn kind(&mut self, path: &Path) -> Kind {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            return Kind::Ignored;
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => match fs::metadata(path) {
                Ok(target) => target,
                Err(e) => {
                    self.skip(path, format!("broken link: {e}"));
                    return Kind::Ignored;
                }
            },
            Ok(m) => m,
            Err(e) => {
                self.skip(path, format!("unreadable entry: {e}"));
                return Kind::Ignored;
            }
        };
        if meta.is_dir() {
            return Kind::Folder;
        }
        if !has_image_extension(path) {
            return Kind::Ignored;
        }
        if meta.is_file() {
            Kind::Image
        } else {
            self.skip(
                path,
                format!("not a regular file ({})", special_kind(&meta)),
            );
            Kind::Ignored
        }
    }

    /// The sub-folders of `dir` (links to folders included), not hidden, sorted: `(name, path)`.
    pub fn folders(&mut self, dir: &Path) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for path in self.entries(dir) {
            if let Kind::Folder = self.kind(&path) {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((name, path));
            }
        }
        out
    }

    /// The images directly in `dir`, sorted.
    pub fn images_in(&mut self, dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for path in self.entries(dir) {
            if let Kind::Image = self.kind(&path) {
                out.push(path);
            }
        }
        out
    }

    /// Every image under `dir`, recursively, sorted folder by folder.
    pub fn images_under(&mut self, dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut ancestors = Vec::new();
        if let Ok(c) = fs::canonicalize(self.root) {
            ancestors.push(c);
        }
        self.descend(dir, &mut ancestors, &mut out);
        out
    }

    fn descend(&mut self, dir: &Path, ancestors: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) {
        let real = match fs::canonicalize(dir) {
            Ok(r) => r,
            Err(e) => return self.skip(dir, format!("unreadable folder: {e}")),
        };
        if let Some(a) = ancestors.iter().find(|a| **a == real) {
            let a = a.display().to_string();
            return self.skip(dir, format!("link cycle: leads back to {a}, not followed"));
        }
        ancestors.push(real);
        for path in self.entries(dir) {
            match self.kind(&path) {
                Kind::Folder => self.descend(&path, ancestors, out),
                Kind::Image => out.push(path),
                Kind::Ignored => {}
            }
        }
        ancestors.pop();
    }
}

/// True for a name with one of the image extensions (any case).
pub(crate) fn has_image_extension(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        let e = e.to_string_lossy().to_ascii_lowercase();
        crate::prepare::IMAGE_EXTENSIONS.contains(&e.as_str())
    })
}

#[cfg(unix)]
fn special_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &fs::Metadata) -> &'static str {
    "not a file"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        if let Some(p) = path.parent() {
            fs::create_dir_all(p).expect("folder");
        }
        fs::write(path, b"x").expect("file");
    }

    #[test]
    fn an_unreadable_folder_is_reported_and_the_walk_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        touch(&root.join("cats/a.jpg"));
        touch(&root.join("dogs/b.jpg"));
        touch(&root.join("dogs/deep/c.png"));
        // the system refuses to list `dogs/deep` (permissions do not stop root, so the refusal
        // is made here)
        let deep = root.join("dogs/deep");
        let list = move |d: &Path| -> io::Result<Vec<PathBuf>> {
            if d == deep {
                Err(io::Error::from(io::ErrorKind::PermissionDenied))
            } else {
                list_dir(d)
            }
        };
        let mut walk = Walk::new(root, &list).expect("root readable");
        let images = walk.images_under(&root.join("dogs"));
        assert_eq!(images, vec![root.join("dogs/b.jpg")]);
        assert_eq!(walk.skipped.len(), 1);
        assert_eq!(walk.skipped[0].path, "dogs/deep");
        assert!(
            walk.skipped[0].reason.contains("unreadable folder"),
            "{:?}",
            walk.skipped
        );
        assert!(Walk::new(&root.join("none"), &list_dir).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn links_are_followed_broken_ones_and_cycles_reported_fifos_never_opened() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        touch(&root.join("elsewhere/x.jpg"));
        touch(&root.join("cats/a.jpg"));
        symlink(root.join("elsewhere/x.jpg"), root.join("cats/link.jpg")).expect("link");
        symlink(root.join("elsewhere"), root.join("cats/more")).expect("link");
        symlink(root.join("gone.jpg"), root.join("cats/broken.jpg")).expect("link");
        symlink(root.join("cats"), root.join("cats/loop")).expect("link");
        let fifo = root.join("cats/pipe.jpg");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let mut walk = Walk::new(root, &list_dir).expect("root readable");
        let images = walk.images_under(&root.join("cats"));
        let rel: Vec<String> = images.iter().map(|p| walk.rel(p)).collect();
        assert_eq!(rel, ["cats/a.jpg", "cats/link.jpg", "cats/more/x.jpg"]);
        let mut reasons: Vec<(String, String)> = walk
            .skipped
            .iter()
            .map(|s| (s.path.clone(), s.reason.clone()))
            .collect();
        reasons.sort();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].0 == "cats/broken.jpg" && reasons[0].1.starts_with("broken link"));
        assert!(reasons[1].0 == "cats/loop" && reasons[1].1.starts_with("link cycle"));
        assert!(reasons[2].0 == "cats/pipe.jpg" && reasons[2].1.contains("FIFO"));
    }
}
