#![no_main]
//! Fuzz target `dataset`: see `../../bodies/dataset.rs`.

mod body {
    include!("../../bodies/dataset.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
