#![doc = include_str!("../README.md")]
//!
//! It owns time (steps, epochs); models come from `mae-core`, batches from `mae-data`.

pub mod bench;
