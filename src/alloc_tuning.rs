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
///
/// Then no transparent huge pages ([`refuse_huge_pages`]). Called first
/// thing in main, before logging is set up: what it returns is for the
/// caller to log.
pub fn tune_allocator() -> HugePages {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option of the allocator, first thing in
        // main, before any other thread exists to read it.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
    tune_c_malloc();
    if std::env::var_os(ALLOW_THP_ENV).is_some() {
        return HugePages::LeftToEnvironment;
    }
    refuse_huge_pages()
}

/// mimalloc's own switch for transparent huge pages; when it is set, it
/// decides, and the process's are left alone.
const ALLOW_THP_ENV: &str = "MIMALLOC_ALLOW_THP";

/// What became of transparent huge pages for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePages {
    /// Refused for the whole process (and the processes it starts).
    Refused,
    /// `MIMALLOC_ALLOW_THP` is set: mimalloc follows it.
    LeftToEnvironment,
    /// The kernel refused the request (before Linux 3.15), with its errno.
    Unavailable(i32),
}

/// Turns transparent huge pages off for the process: no later fault maps a
/// 2 MiB page, whatever asks for one. mimalloc asks for them on its arenas
/// (`madvise(MADV_HUGEPAGE)`), so with the kernel's default `madvise` mode
/// the first write to each fresh 2 MiB of the heap zeroed all of it in one
/// fault, on whichever thread touched it: the ingest arbiter, the feed's.
/// `ticklake bench-dedup --ids 4000000` printed a longest stall of 5.0 to
/// 10.7 ms a run with them and 0.2 to 1.3 ms without, and in alternating
/// runs of `ticklake bench-api freshness` the p99 fell from 21.9 to 28.3
/// ms to 18.3 to 20.1 at 10,000 trades/s and from 77 to 117 ms to 56 to 66
/// at 100,000, with the daemon's CPU per trade no higher
/// (`docs/performance.md`). The flag is the kernel's own
/// (`PR_SET_THP_DISABLE`): it also covers what was mapped before main, and
/// is inherited by the processes the daemon starts (its SQL workers).
pub fn refuse_huge_pages() -> HugePages {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and
        // only sets a flag of this process's memory map.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return HugePages::Unavailable(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            );
        }
        HugePages::Refused
    }
    #[cfg(not(target_os = "linux"))]
    HugePages::Unavailable(0)
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
    /// The process is marked: the kernel maps no huge page for it any more.
    #[test]
    fn huge_pages_are_refused_for_the_process() {
        assert_eq!(super::refuse_huge_pages(), super::HugePages::Refused);
        // SAFETY: reads the flag back; no memory is touched.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1, "PR_GET_THP_DISABLE");
        assert_eq!(huge_kib_after_writing_a_region_asking_for_them(), 0);
    }

    /// Maps 8 MiB that ask for huge pages as mimalloc's arenas do, writes
    /// every 4 KiB of it, and reads back how much of it the kernel mapped
    /// in huge pages. Where the kernel offers them (`madvise` or `always`)
    /// this is most of the region unless the process refuses them.
    fn huge_kib_after_writing_a_region_asking_for_them() -> u64 {
        const LEN: usize = 8 << 20;
        // SAFETY: a private anonymous mapping of our own, written within
        // its bounds and unmapped before returning.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            libc::madvise(p, LEN, libc::MADV_HUGEPAGE);
            for off in (0..LEN).step_by(4096) {
                *(p as *mut u8).add(off) = 1;
            }
            let kib = smaps_huge_kib(p as usize);
            libc::munmap(p, LEN);
            kib
        }
    }

    /// `AnonHugePages` of the mapping of `/proc/self/smaps` that holds `addr`.
    fn smaps_huge_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((from, to)) = range.split_once('-')
                && let (Ok(from), Ok(to)) = (
                    usize::from_str_radix(from, 16),
                    usize::from_str_radix(to, 16),
                )
            {
                inside = (from..to).contains(&addr);
            } else if inside && let Some(v) = line.strip_prefix("AnonHugePages:") {
                let kib = v.trim().trim_end_matches("kB").trim();
                return kib.parse().expect("AnonHugePages in kB");
            }
        }
        panic!("no mapping holds {addr:#x} in /proc/self/smaps");
    }

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
