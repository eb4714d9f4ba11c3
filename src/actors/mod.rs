//! The daemon's actors, one per file, and (`observe`) the observable
//! state and restart bookkeeping they share.

pub mod bars;
pub mod consumer;
pub mod degradation;
pub mod feed;
pub mod gaps;
pub mod intake;
pub mod maintenance;
pub mod observe;
pub mod producer;
pub mod query;
pub mod tail;
pub mod writer;
