#![no_main]
//! Fuzz target `pth`: see `../../bodies/pth.rs`.

mod body {
    include!("../../bodies/pth.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
