//! The allocators of the `ticklake` binary, and their settings: mimalloc
//! for Rust's allocations, and glibc's malloc for those of the C libraries
//! linked in (librdkafka, zstd, SQLite).

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
    tune_c_malloc();
}

/// Largest block glibc's malloc serves from its heaps rather than from a
/// mapping of its own: glibc's maximum on 64-bit (half its 64 MiB heap).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const C_MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the top of a glibc heap is handed back to the OS only
/// above this; a thread's heap is at most 64 MiB, so on those it never is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const C_TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// glibc's malloc keeps what the C libraries free, rather than unmapping
/// it: each Parquet column chunk a commit writes builds zstd contexts of
/// up to a few MiB (their hash tables), and librdkafka decompresses each
/// fetch into a fresh buffer. At glibc's defaults (blocks from 128 KiB
/// mapped on their own, heaps trimmed past twice that) these were mapped,
/// faulted in, zeroed by the kernel and unmapped again over and over: in a
/// 1,000,000-trade `ticklake bench` at 150,000/s the commit thread took
/// about 13,900 page faults and librdkafka's broker threads 49,600; with
/// these settings 1,100 and 5,700. What glibc keeps is bounded by what the
/// C libraries hold at once (the run's peak resident memory did not move).
/// `GLIBC_TUNABLES` naming either setting still decides.
fn tune_c_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        // SAFETY: mallopt sets an integer parameter of glibc's malloc under
        // its own lock; called first thing in main, it changes only where
        // later blocks come from.
        unsafe {
            if !tunables.contains("glibc.malloc.mmap_threshold") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, C_MMAP_THRESHOLD);
            }
            if !tunables.contains("glibc.malloc.trim_threshold") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, C_TRIM_THRESHOLD);
            }
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// A block of megabytes from a C library comes out of glibc's heaps,
    /// where a later one can reuse it, not from a mapping of its own that
    /// is unmapped when freed (glibc's default past 128 KiB).
    #[test]
    fn c_blocks_of_megabytes_are_served_from_the_heap() {
        super::tune_c_malloc();
        // SAFETY: plain malloc and free of one block, and glibc's counters.
        unsafe {
            let before = libc::mallinfo2().hblks;
            let block = libc::malloc(8 << 20);
            assert!(!block.is_null());
            let during = libc::mallinfo2().hblks;
            libc::free(block);
            assert_eq!(during, before, "an 8 MiB block was mapped on its own");
        }
    }
}
