//! Typed actix messages, grouped by the actor that receives them.

pub mod consumer;
pub mod gaps;
pub mod observe;
pub mod producer;
pub mod query;
pub mod tail;
pub mod writer;
