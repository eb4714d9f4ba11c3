//! The verbs that are not the daemon: benchmarks, recording and replay of
//! exchange captures, offline produce, loaders of historical data sets, lake
//! maintenance by hand, and the cost model. They use
//! the daemon's parts (`crate::daemon`, `crate::kafka`, `crate::query`); the
//! daemon never uses them.

pub mod bench;
pub mod bench_api;
pub mod bench_dedup;
pub mod bench_tail;
pub mod capture;
pub mod chaos;
pub mod cost;
pub mod loaders;
pub mod maintain;
pub mod produce;
pub mod record;
pub mod replay;
