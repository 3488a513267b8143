//! What a run shows: loss curves ([`plot`]) and reconstructions ([`reconstruct`]).

pub mod plot;
pub mod reconstruct;
