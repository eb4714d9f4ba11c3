//! Everything that answers a query, below HTTP: the DataFusion session over
//! the lake (`session`), the engine that runs each `/v1` request and writes
//! its JSON answer (`engine`, `json`), the hybrid table that reads one
//! pinned snapshot plus the tail rows past its offsets (`hybrid`), the
//! read-only SQL guard (`sql_guard`), the tail's data store (`tail`), the
//! runtime queries run on (`pool`), and what bounds each query: its
//! deadline and cancellation (`cancel`), its answer's memory (`budget`),
//! and the size of what functions build from an argument's value
//! (`limits`); and the worker processes `/v1/sql` statements run in
//! (`isolate`).
//! The actors that own these live in `crate::actors` (`query`, `tail`);
//! the HTTP routes in `crate::api`.

pub mod budget;
pub mod cancel;
pub mod engine;
pub mod hybrid;
pub mod isolate;
pub mod json;
pub mod limits;
pub mod pool;
pub mod session;
pub mod sql_guard;
pub mod tail;
