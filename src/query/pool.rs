//! The runtime queries run on, apart from ingest.
//!
//! A user query is the daemon's least trusted work. Planning and
//! evaluating a deep expression recurses once per level, and a panic in
//! DataFusion or arrow (an oversized string result) used to reach the
//! process-wide panic hook, which stops the daemon. So queries run on
//! threads of their own: named `ticklake-query`, which the panic hook
//! recognises (such a panic fails the one query with a 500 and is counted,
//! the daemon carries on), and with a stack large enough for the deepest
//! expression the SQL guard lets through.

use std::sync::OnceLock;

/// Prefix of the query threads' names.
pub const THREAD_NAME: &str = "ticklake-query";

/// Stack of each query thread. The guard caps nesting (`sql_guard`), and
/// this leaves ample room under that cap in an unoptimized build.
const STACK_BYTES: usize = 64 << 20;

static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();

/// A handle of the query runtime: one worker per core. If it cannot be
/// built, queries run on the caller's runtime as before.
pub fn handle() -> tokio::runtime::Handle {
    let rt = RUNTIME.get_or_init(|| {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(THREAD_NAME)
            .thread_stack_size(STACK_BYTES)
            .enable_all()
            .build()
            .inspect_err(|e| {
                tracing::warn!(error = %e, "query: no runtime of its own; queries share the pool")
            })
            .ok()
    });
    match rt {
        Some(rt) => rt.handle().clone(),
        None => tokio::runtime::Handle::current(),
    }
}

/// Whether the current thread is one of the query runtime's.
pub fn on_query_thread() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with(THREAD_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_on_the_pool_fails_its_task_only() {
        assert!(!on_query_thread());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let failed = handle()
                .spawn(async {
                    assert!(on_query_thread());
                    panic!("a query went wrong");
                })
                .await;
            assert!(failed.unwrap_err().is_panic());
            // Deeper than a default 2 MiB stack allows in this build.
            fn depth(n: u64) -> u64 {
                let pad = std::hint::black_box([n; 64]);
                if n == 0 {
                    0
                } else {
                    1 + depth(n - 1) + (pad[63] - n)
                }
            }
            let deep = handle().spawn(async { depth(20_000) }).await.unwrap();
            assert_eq!(deep, 20_000, "the pool still runs, on a large stack");
        });
    }
}
