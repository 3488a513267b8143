// A checkpoint as `--resume` reads it: the input is split in two (a little-endian u32 length,
// the model file, then the state file), both written to a scratch folder as
// `checkpoint-3.safetensors` and `checkpoint-3.state.safetensors`, and loaded into the
// `parity` MAE with its AdamW state (names, shapes, moments, `train_state`, `optimizer`).

use mae_core::dfdx::prelude::*;
use mae_core::presets::Parity;
use mae_core::Mae;

pub fn run(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let rest = &data[4..];
    let (model, state) = rest.split_at(n.min(rest.len()));
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let Some((dir, mae)) = s.as_mut() else { return };
        let path = dir.path().join("checkpoint-3.safetensors");
        let state_path = mae_train::checkpoint::state_path(&path);
        if std::fs::write(&path, model).is_err() || std::fs::write(&state_path, state).is_err() {
            return;
        }
        let mut opt = mae_train::optim::AdamW::new(0.05, Default::default());
        let _ = mae_train::checkpoint::load(&path, mae, &mut opt);
        let _ = mae_train::checkpoint::resume_latest(dir.path(), mae, &mut opt);
    });
}

type Scratch = (tempfile::TempDir, Mae<Parity, f32, Cpu>);

thread_local! {
    // one folder and one model per thread, reused (a failed load leaves the model as it was)
    static SCRATCH: std::cell::RefCell<Option<Scratch>> = std::cell::RefCell::new(
        tempfile::tempdir()
            .ok()
            .zip(Mae::new(&Cpu::default()).ok()),
    );
}
