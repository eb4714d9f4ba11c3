//! The dedup's Bloom filters and exact index are in memory once built,
//! under the allocator the daemon runs with. mimalloc hands out a large
//! zeroed block fresh from the OS without writing it, so its pages are only
//! mapped (and zeroed by the kernel) when first written; a filter or index
//! left so would fault tens of megabytes in at random under its first ids,
//! on the ingest path. The system allocator writes aligned zeroed blocks
//! itself, so a test under it (the library's own tests) could not tell the
//! difference: this one runs in its own binary with mimalloc.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This process's resident memory, as the daemon's `rss_bytes` signal
/// reads it.
fn resident_bytes() -> u64 {
    memory_stats::memory_stats()
        .expect("the process's memory figures")
        .physical_mem as u64
}

/// The exact window's index is in memory too: its keys land at random
/// across its buckets, so a commit's tens of thousands of ids would
/// otherwise fault all of them in at once on the ingest arbiter. Its
/// queue of keys is written in order as keys come, and is not.
#[test]
fn a_prepared_dedup_has_its_bloom_filters_and_index_in_memory() {
    // The writer's default capacity and rate: two generations, 47 MB.
    let lazy = ticklake::dedup::Dedup::with_rate(4_000_000, 1e-5);
    assert_eq!(lazy.stats().bloom_bytes, 0, "nothing built yet");
    let before = resident_bytes();
    let d = lazy.prepared();
    let after = resident_bytes();
    let bloom = d.stats().bloom_bytes as u64;
    assert!(bloom > 40_000_000, "{bloom}");
    // 4 million keys at most 7/8 of a power of two: 2^23 buckets of a
    // 4-byte sequence number and a control byte.
    let index = (1u64 << 23) * 5;
    let grew = after.saturating_sub(before);
    assert!(
        grew >= (bloom + index) / 10 * 9,
        "building {bloom} bytes of filter and {index} of index mapped only {grew} \
         (resident {before} -> {after})"
    );
}
