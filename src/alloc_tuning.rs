//! The allocator of the `ticklake` binary, and its one setting.

/// mimalloc instead of glibc's malloc. The daemon allocates small strings
/// for every trade on the ingest thread while commits free whole buffers
/// of them on another; under glibc those frees and the arena's
/// consolidation showed up as stalls of 100 ms and more on the ingest
/// thread at every commit (`ticklake bench-api freshness` at 10k trades/s).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its index in `mi_option_e` of
/// mimalloc.h, v2 and v3; the Rust bindings name the options only up to
/// `mi_option_eager_commit_delay`, 14).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS after 10 s unused, not mimalloc's 10 ms:
/// rows freed at a commit (every `writer.max_age_ms`, 5 s) are taken again
/// by the next ones, and purged sooner they were faulted back in and zeroed
/// page by page (at 10 ms, a query's p99 doubled; at 1 s, the lake threads
/// lost 5 to 15 % of their CPU to it in `ticklake bench`).
/// `MIMALLOC_PURGE_DELAY` in the environment still decides if set.
pub fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option of the allocator, first thing in
        // main, before any other thread exists to read it.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
}
