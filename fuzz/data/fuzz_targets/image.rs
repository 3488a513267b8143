#![no_main]
//! Fuzz target `image`: see `../../bodies/image.rs`.

mod body {
    include!("../../bodies/image.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
