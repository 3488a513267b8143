#![no_main]
//! Fuzz target `config`: see `../../bodies/config.rs`.

mod body {
    include!("../../bodies/config.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
