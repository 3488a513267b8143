//! Training: the [`engine`] owns the loop, [`step`] is one step of it; [`pretrain`], [`finetune`]
//! and the augmented linear probe ([`probing`]) are the tasks it runs.
//! Beside them what the loop is made of: the optimizers ([`optim`]: AdamW; [`lars`]: the probe's
//! LARS; what checkpoints need of one, [`optimizer`]), the learning-rate schedule
//! ([`schedule`]), gradient clipping ([`clip`]), mixed precision ([`amp`]), checkpoints ([`checkpoint`]), the settings
//! ([`config`]), and the timing of the engine's step ([`bench`]).

pub mod amp;
pub mod bench;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod engine;
pub mod finetune;
pub mod lars;
pub mod optim;
pub mod optimizer;
pub mod pretrain;
pub mod probing;
pub mod schedule;
pub mod step;
