use super::*;

const SEED: u128 = 0x7469_636b_6c61_6b65;

#[test]
fn drops_repeats_and_forgets_oldest() {
    let ids: Vec<String> = (0..3)
        .map(|i| uuid::Uuid::from_u128(i).to_string())
        .collect();
    let mut d = Dedup::new(2);
    assert!(d.first_time(&ids[0]));
    assert!(!d.first_time(&ids[0]));
    assert!(d.first_time(&ids[1]));
    assert!(d.first_time(&ids[2]));
    assert_eq!(d.len(), 2);
    // ids[0] was evicted, so it counts as new again
    assert!(d.first_time(&ids[0]));
    assert!(!d.first_time(&ids[2]));
}

/// Keys older than the window go first; one forgotten for room while
/// inside it is counted, since its second copy would pass.
#[test]
fn forgets_by_time_and_counts_what_room_forced_out_early() {
    let mut d = Dedup::new(3);
    for (k, at) in [(1u128, 10), (2, 20), (3, 30)] {
        assert!(d.first_time_key_at(k, at));
    }
    d.forget_before(15);
    assert_eq!(d.len(), 2);
    assert!(d.first_time_key_at(1, 40), "1 was older than the window");
    assert_eq!(d.forgotten_early(), 0);
    // Full (2, 3, 1): room for 4 forces 2 out, seen at 20 >= 15.
    assert!(d.first_time_key_at(4, 50));
    assert_eq!(d.forgotten_early(), 1);
    assert!(!d.first_time_key_at(3, 60));
    assert!(d.first_time_key_at(2, 60), "2 was forgotten");
}

/// Capacity 1,000, 3,000 ids: generation a took 0..1000, b 1000..2000,
/// and 2000 cleared a for 2000..3000. The window holds 2000..3000.
#[test]
fn generations_forget_old_ids_and_keep_catching_recent_ones() {
    let n = 1_000u128;
    let mut d = Dedup::seeded(n as usize, 1e-6, SEED);
    for k in 0..3 * n {
        assert!(d.first_time_key_at(k, 0));
    }
    assert_eq!(d.len(), n as usize);
    // Recent ids: all caught, by the window, with no confirmation wasted.
    for k in 2 * n..3 * n {
        assert!(d.contains_key(k));
        assert!(!d.first_time_key_at(k, 0));
    }
    assert_eq!(d.stats().false_positives, 0);
    // Two generations back: cleared from the filter, so a negative at once.
    for k in 0..n {
        assert!(!d.contains_key(k));
    }
    assert_eq!(d.stats().false_positives, 0);
    // One generation back: forgotten by the window, still in the filter:
    // each is a positive the window does not confirm, and new.
    for k in n..2 * n {
        assert!(!d.contains_key(k));
    }
    assert_eq!(d.stats().false_positives, n as u64);
}

/// A filter built for a high rate gives many positives for ids never
/// seen: each is looked up, counted, and the id stays new.
#[test]
fn false_positives_are_confirmed_by_the_window_and_counted() {
    let mut d = Dedup::seeded(200, 0.2, SEED);
    for k in 0..200u128 {
        d.first_time_key_at(k, 0);
    }
    let probes = 20_000u128;
    let found = (1 << 64..(1 << 64) + probes)
        .filter(|&k| d.contains_key(k))
        .count();
    assert_eq!(found, 0, "the window decides");
    let fp = d.stats().false_positives;
    // The current generation is full, at half the rate: about 0.1.
    let rate = fp as f64 / probes as f64;
    assert!((0.05..0.2).contains(&rate), "{fp} of {probes}");
    // A new id that is a positive is taken as new.
    let positive = (1u128 << 65..)
        .find(|&k| {
            d.contains_key(k);
            d.stats().false_positives > fp
        })
        .unwrap_or_default();
    assert!(d.first_time_key_at(positive, 0));
    assert_eq!(d.stats().false_positives, fp + 2);
    assert!(!d.first_time_key_at(positive, 0));
}

/// Far more ids than the capacity: memory stops growing once both
/// generations and the window are at size.
#[test]
fn memory_stays_bounded_past_the_capacity() {
    let cap = 10_000usize;
    let mut d = Dedup::seeded(cap, 1e-6, SEED);
    assert_eq!(d.stats().memory_bytes(), 0, "nothing until the first id");
    let mut k = 0u128;
    let mut insert = |d: &mut Dedup, n: usize| {
        for _ in 0..n {
            d.first_time_key_at(k, 0);
            k += 1;
        }
    };
    insert(&mut d, 5 * cap);
    let settled = d.stats();
    insert(&mut d, 45 * cap);
    let after = d.stats();
    assert_eq!(d.len(), cap);
    assert_eq!(after.bloom_bytes, settled.bloom_bytes);
    assert!(after.exact_bytes <= settled.exact_bytes * 2, "{after:?}");
    // Keys exactly at capacity; the index at most twice the buckets it needs.
    let buckets = (cap * 8 / 7).next_power_of_two();
    assert!(after.exact_bytes <= cap * 16 + 2 * buckets * 5 + 16 + 16 * 1024);
    // 2 x 75 bits a key of capacity at 1e-6 (split-block filters), in two
    // generations, rounded up to whole 32-byte blocks.
    let bloom_bits_per_key = (after.bloom_bytes * 8) as f64 / cap as f64;
    assert!(
        (150.0..151.0).contains(&bloom_bits_per_key),
        "{bloom_bits_per_key}"
    );
    let (set, all) = d.bloom_bits_set();
    let measured = set as f64 / all as f64;
    assert!(
        (after.bloom_fill_ratio - measured).abs() < 0.02,
        "{measured} {after:?}"
    );
}

/// The writer's use: once every id of the older generation is older than
/// the time window, the generation is cleared, so probes of those ids no
/// longer reach the window.
#[test]
fn a_time_window_retires_generations() {
    let mut d = Dedup::seeded(1_000_000, 1e-6, SEED);
    for k in 0..100u128 {
        d.first_time_key_at(k, 10);
    }
    d.forget_before(5);
    assert_eq!(d.len(), 100);
    for k in 100..200u128 {
        d.first_time_key_at(k, 20);
    }
    // Everything at 10 is forgotten: the generation holding it is retired.
    d.forget_before(15);
    assert_eq!(d.len(), 100);
    assert!((0..100u128).all(|k| !d.contains_key(k)));
    assert!((100..200u128).all(|k| d.contains_key(k)));
    // Everything forgotten: both generations are cleared.
    d.forget_before(25);
    assert!(d.is_empty());
    assert!((0..200u128).all(|k| !d.contains_key(k)));
    assert_eq!(d.stats().false_positives, 0);
    assert!(d.first_time_key_at(150, 30));
    assert!(!d.first_time_key_at(150, 30));
}

#[test]
fn rates_out_of_bounds_fall_back() {
    for (asked, built) in [
        (0.0, DEFAULT_FALSE_POSITIVE_RATE),
        (0.5, DEFAULT_FALSE_POSITIVE_RATE),
        (f64::NAN, DEFAULT_FALSE_POSITIVE_RATE),
        (1e-30, MIN_FALSE_POSITIVE_RATE),
        (1e-12, MIN_FALSE_POSITIVE_RATE),
        (1e-3, 1e-3),
    ] {
        assert_eq!(Dedup::with_rate(10, asked).false_positive_rate(), built);
    }
}

#[test]
fn reports_its_figures_as_its_owner() {
    let metrics = Metrics::new().unwrap();
    let mut d = Dedup::seeded(100, 0.3, SEED).reporting(&metrics, "feed.test");
    for k in 0..100u128 {
        d.first_time_key_at(k, 0);
    }
    for k in 1000..3000u128 {
        d.contains_key(k);
    }
    d.forget_before(i64::MIN);
    let owner = ["feed.test"];
    let s = d.stats();
    let memory = metrics.dedup_memory_bytes.with_label_values(&owner).get();
    assert_eq!(memory as usize, s.memory_bytes());
    let fill = metrics
        .dedup_bloom_fill_ratio
        .with_label_values(&owner)
        .get();
    assert!(fill > 0.1 && fill == s.bloom_fill_ratio, "{fill}");
    let fp = metrics
        .dedup_false_positives
        .with_label_values(&owner)
        .get();
    assert!(fp > 0 && fp == s.false_positives);
}

/// A prepared dedup has its filter before the first id, and behaves as a
/// lazy one.
#[test]
fn a_prepared_dedup_builds_its_filter_before_the_first_id() {
    let lazy = Dedup::seeded(10_000, 1e-6, SEED);
    assert_eq!(lazy.stats().bloom_bytes, 0);
    let mut d = Dedup::seeded(10_000, 1e-6, SEED).prepared();
    let built = d.stats().bloom_bytes;
    assert!(built > 0);
    assert!(d.first_time_key_at(7, 0));
    assert!(!d.first_time_key_at(7, 0));
    assert_eq!(d.stats().bloom_bytes, built, "not built twice");
    assert_eq!(d.stats().false_positives, 0);
}

/// A prepared dedup's window has the room for its whole capacity before
/// the first id: filling it to capacity grows nothing but the queue of
/// times (one run here), so the index never rehashes under a caller.
#[test]
fn a_prepared_window_does_not_grow_as_it_fills() {
    let cap = 10_000;
    let mut d = Dedup::seeded(cap, 1e-6, SEED).prepared();
    let before = d.stats().exact_bytes;
    // The keys (16 bytes each) and an index of at least 4 bytes a key.
    assert!(before >= cap * 20, "{before}");
    // Its pages written, the index is empty again (nothing left of that).
    assert_eq!((d.window.len(), d.window.index_len()), (0, 0));
    for k in 0..cap as u128 {
        assert!(d.first_time_key_at(k, 0));
    }
    assert_eq!(d.len(), cap);
    assert_eq!(d.window.index_len(), cap);
    // At most the times' first reservation: 1,024 runs of 16 bytes.
    let grown = d.stats().exact_bytes - before;
    assert!(grown <= 1024 * 16, "{grown}");
}

/// The split-block filter's false-positive model against what a filter
/// built by it does: sized for a rate, a full generation's measured rate
/// over a million fresh probes is within the rate (and not far below it:
/// the model is not merely an upper bound), and the fill estimate matches
/// the bits counted.
#[test]
fn split_block_filters_are_sized_by_their_measured_false_positive_rate() {
    for rate in [1e-2, 1e-3] {
        let cap = 100_000usize;
        let mut d = Dedup::seeded(cap, rate, SEED);
        // Fill the current generation exactly; the older stays empty.
        for k in 0..cap as u128 {
            d.first_time_key_at(k, 0);
        }
        let probes = 1_000_000u128;
        for k in 0..probes {
            d.contains_key(u128::MAX - k);
        }
        let measured = d.stats().false_positives as f64 / probes as f64;
        // The full generation is built for rate / 2; the empty one adds 0.
        let expected = d.stats().expected_false_positive_rate;
        assert!(
            expected <= rate / 2.0 && expected > rate / 4.0,
            "{expected}"
        );
        assert!(
            (measured - expected).abs() < expected * 0.2,
            "rate {rate}: measured {measured}, model {expected}"
        );
        let (set, all) = d.bloom_bits_set();
        let counted = set as f64 / all as f64;
        assert!(
            (d.stats().bloom_fill_ratio - counted).abs() < 0.01,
            "{counted} {:?}",
            d.stats()
        );
    }
}

/// The sizing: more bits for a lower rate, none wasted (one bit fewer
/// misses the rate), and the model's known points (Parquet's sizing table:
/// about 1 % at 10 bits a key, 0.1 % at 16).
#[test]
fn bits_per_key_is_the_fewest_that_meet_the_rate() {
    use crate::config::sizing::{bits_per_key, false_positive};
    let at = |bits: usize| false_positive(1.0, bits as f64 / 256.0);
    assert!((at(10) - 0.0126).abs() < 0.001, "{}", at(10));
    assert!((at(16) - 0.00132).abs() < 0.0001, "{}", at(16));
    let mut last = 0;
    for rate in [0.25, 1e-2, 1e-3, 5e-6, 5e-7, 5e-10] {
        let b = bits_per_key(rate);
        assert!(at(b) <= rate && at(b - 1) > rate, "{rate}: {b}");
        assert!(b > last);
        last = b;
    }
    assert_eq!(bits_per_key(5e-7), 75);
}

/// The estimate a config check uses is what a full dedup takes, and it
/// grows with the capacity and as the rate falls.
#[test]
fn memory_at_capacity_is_what_a_full_dedup_takes() {
    for (n, rate) in [(100_000usize, 1e-5), (250_000, 1e-7)] {
        let mut d = Dedup::seeded(n, rate, SEED);
        for k in 0..n as u128 {
            assert!(d.first_time_key_at(k, 0));
        }
        let taken = d.stats().memory_bytes() as f64;
        let estimate = memory_at_capacity(n, rate);
        assert!(
            (estimate - taken).abs() <= 0.05 * taken,
            "{n} ids at {rate}: estimate {estimate}, taken {taken}"
        );
    }
    assert!(memory_at_capacity(2_000_000, 1e-5) > 1.9 * memory_at_capacity(1_000_000, 1e-5));
    assert!(memory_at_capacity(1_000_000, 1e-8) > memory_at_capacity(1_000_000, 1e-5));
    // A capacity past what the window takes is sized as the window is.
    assert_eq!(
        memory_at_capacity(usize::MAX, 1e-5),
        memory_at_capacity(u32::MAX as usize, 1e-5)
    );
}

/// The prefetch hint goes to the block the filter crate reads: after one
/// insert into an empty filter, the only block with bits set is the one
/// `block_of` names.
#[test]
fn the_prefetched_block_is_the_one_an_insert_sets() {
    use bloom::block_of;
    use sbbf_rs_safe::Filter;
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    for blocks in [1usize, 7, 1000, 123_457] {
        let mut f = Filter::new(256, blocks);
        for _ in 0..50 {
            rng_state = rng_state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let hash = rng_state;
            f.reset();
            f.insert_hash(hash);
            let set: Vec<usize> = f
                .as_bytes()
                .chunks(32)
                .enumerate()
                .filter(|(_, b)| b.iter().any(|w| *w != 0))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(
                set,
                vec![block_of(&f, hash)],
                "{blocks} blocks, hash {hash:#x}"
            );
        }
    }
}

/// The batch calls, which hint ahead, answer as the one-key calls do, in
/// order, repeats within a batch included.
#[test]
fn batch_calls_answer_as_one_key_calls_do() {
    let mut batch = Dedup::seeded(1_000, 1e-5, SEED);
    let mut single = Dedup::seeded(1_000, 1e-5, SEED);
    // 0..600 in two batches that overlap, with a repeat inside each.
    for keys in [
        (0..400u128).chain([7]).collect::<Vec<_>>(),
        (300..600).chain([350]).collect(),
    ] {
        let one: usize = keys
            .iter()
            .filter(|k| single.first_time_key_at(**k, 5))
            .count();
        assert_eq!(batch.first_time_keys_at(&keys, 5), one);
    }
    assert_eq!(batch.len(), 600);
    // Shorter than the hint distance, empty, and across what is held.
    for keys in [vec![3u128, 900], vec![], (550..650).collect()] {
        let one: Vec<bool> = keys.iter().map(|k| single.contains_key(*k)).collect();
        assert_eq!(batch.contains_keys(&keys), one);
        assert_eq!(
            one.iter().filter(|s| **s).count(),
            keys.iter().filter(|k| **k < 600).count()
        );
    }
    // Each key's answer, as the feed asks for its batch of trades; a key
    // repeated within the batch is new only the first time.
    let keys: Vec<u128> = (590..610).chain([600, 3, 605]).collect();
    let one: Vec<bool> = keys
        .iter()
        .map(|k| single.first_time_key_at(*k, 0))
        .collect();
    assert_eq!(batch.first_time_each(&keys), one);
    assert_eq!(
        one,
        (590..610)
            .map(|k| k >= 600)
            .chain([false, false, false])
            .collect::<Vec<_>>()
    );
    assert_eq!(batch.len(), 610);
}
