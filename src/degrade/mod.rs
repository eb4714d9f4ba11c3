//! Graceful degradation building blocks: the level machine, the circuit
//! breaker and the on-disk spill log. Each is pure and driven by injected
//! time, so the supervisor that wires them to live signals stays thin.

pub mod breaker;
pub mod lag_time;
pub mod level;
pub mod policy;
pub mod quarantine;
pub mod spill;
