//! Evaluation of encoders and classifiers: features of a frozen encoder ([`features`]) and their
//! files ([`feature_set`]), the weighted kNN ([`knn`]), the linear probe ([`probe`], and the
//! command over it, [`linprobe`]), top-1/top-5 of a fine-tuned classifier ([`classify`]).

pub mod classify;
pub mod feature_set;
pub mod features;
pub mod knn;
pub mod linprobe;
pub mod probe;
