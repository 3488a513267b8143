#![no_main]
//! Fuzz target `checkpoint`: see `../../bodies/checkpoint.rs`.

mod body {
    include!("../../bodies/checkpoint.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
