// A PyTorch `.pth` file on arbitrary bytes: written to a scratch file (the reader opens a path)
// and read as every weights reader reads it (`TensorFile::open`: the container, the pickle, the
// allowed globals, the wrapper and `module.` prefix, every tensor gathered), then each tensor
// read as f32. Errors are fine; a panic, an abort or a hang is a finding.

use mae_core::TensorFile;

thread_local! {
    static SCRATCH: Option<tempfile::TempDir> = tempfile::tempdir().ok();
}

pub fn run(data: &[u8]) {
    SCRATCH.with(|dir| {
        let Some(dir) = dir else { return };
        let path = dir.path().join("fuzz.pth");
        if std::fs::write(&path, data).is_err() {
            return;
        }
        if let Ok(file) = TensorFile::open(&path) {
            if let Ok(names) = file.names() {
                for name in names.iter().take(64) {
                    let _ = file.read(name);
                }
            }
        }
    });
}
