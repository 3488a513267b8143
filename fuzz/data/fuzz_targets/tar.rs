#![no_main]
//! Fuzz target `tar`: see `../../bodies/tar.rs`.

mod body {
    include!("../../bodies/tar.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
