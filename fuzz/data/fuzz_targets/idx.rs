#![no_main]
//! Fuzz target `idx`: see `../../bodies/idx.rs`.

mod body {
    include!("../../bodies/idx.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
