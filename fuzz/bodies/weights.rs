// The weights loader on arbitrary bytes: a safetensors file parsed and checked (offsets, sizes,
// the content checksum), every tensor read, loaded strictly into the `parity` MAE and into its
// encoder, and converted from Hugging Face names. Shared by the fuzz target and the stable
// regression test (`mae-cli/tests/fuzz_corpus.rs`), which runs every committed input through it.
// Errors are fine; a panic, an abort or a hang is a finding.

use mae_core::dfdx::prelude::*;
use mae_core::presets::Parity;
use mae_core::{Mae, TensorFile};

thread_local! {
    static MODEL: std::cell::RefCell<Option<Mae<Parity, f32, Cpu>>> =
        std::cell::RefCell::new(Mae::new(&Cpu::default()).ok());
}

pub fn run(data: &[u8]) {
    let Ok(file) = TensorFile::from_bytes("fuzz.safetensors", data.to_vec()) else {
        return;
    };
    let _ = file.metadata();
    if let Ok(names) = file.names() {
        for name in names.iter().take(64) {
            let _ = file.read(name);
            let _ = file.shape(name);
        }
    }
    // one model per thread, reused: a load either fails and leaves it as it was, or replaces
    // every tensor
    MODEL.with(|m| {
        if let Some(model) = m.borrow_mut().as_mut() {
            let _ = model.load_from(&file, "");
            let _ = model.encoder.load_from(&file, "");
        }
    });
    if mae_core::weights::is_hugging_face(&file).unwrap_or(false) {
        let _ = mae_core::weights::hugging_face_to_official(&file);
    }
}
