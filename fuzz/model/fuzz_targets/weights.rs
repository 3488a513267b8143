#![no_main]
//! Fuzz target `weights`: see `../../bodies/weights.rs`.

mod body {
    include!("../../bodies/weights.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
