//! Fuzzing on the stable toolchain: every parser of external input takes
//! mutated real inputs and random bytes, and must answer Ok or Err, never
//! panic. Targets: the Binance frame parser, the capture reader, Avro
//! decoding, the spill log's segment scan and replay, and the SQL guard.
//!
//! Inputs are the recorded captures (and records and statements built from
//! them), mutated as a byte-level fuzzer does: bytes flipped, inserted,
//! deleted, runs duplicated, tails cut, two inputs spliced.
//!
//! The number of inputs per target is `TICKLAKE_FUZZ_CASES` (default 20,000,
//! the short form CI runs). The long form:
//! `TICKLAKE_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --nocapture`.
//! A failure prints the input (proptest shrinks it first).

mod common;

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ticklake::degrade::spill::SpillLog;
use ticklake::kafka::avro::Codec;
use ticklake::model::{DeadLetter, Dec8, Side, TradeV2};

fn cases() -> u32 {
    std::env::var("TICKLAKE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        // Shrinking is for readable failures; a long run stays bounded.
        max_shrink_iters: 2_000,
        ..Config::default()
    })
}

/// One mutation of a byte string.
#[derive(Debug, Clone)]
enum Op {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Duplicate(usize, usize),
    Truncate(usize),
    /// Replace the tail from this point with another seed's tail.
    Splice(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Op::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Op::Insert(p, b)),
        any::<usize>().prop_map(Op::Delete),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Op::Duplicate(p, n)),
        any::<usize>().prop_map(Op::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(p, s)| Op::Splice(p, s)),
    ]
}

fn mutate(seed: &[u8], ops: &[Op], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for op in ops {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
        match *op {
            Op::Flip(p, b) if !v.is_empty() => {
                let i = p % v.len();
                v[i] ^= b;
            }
            Op::Insert(p, b) => {
                let i = at(p, v.len());
                v.insert(i, b);
            }
            Op::Delete(p) if !v.is_empty() => {
                v.remove(p % v.len());
            }
            Op::Duplicate(p, n) if !v.is_empty() => {
                let i = p % v.len();
                let run: Vec<u8> = v[i..(i + n).min(v.len())].to_vec();
                v.splice(i..i, run);
            }
            Op::Truncate(p) => {
                let i = at(p, v.len());
                v.truncate(i);
            }
            Op::Splice(p, s) if !seeds.is_empty() => {
                let other = &seeds[s % seeds.len()];
                let i = at(p, v.len());
                let j = at(p / 3, other.len());
                v.truncate(i);
                v.extend_from_slice(&other[j..]);
            }
            _ => {}
        }
    }
    v
}

/// Mutated seeds, and now and then bytes with no seed at all.
fn inputs(seeds: Arc<Vec<Vec<u8>>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    prop_oneof![
        9 => (0..n, prop::collection::vec(op(), 0..12)).prop_map(move |(i, ops)| {
            mutate(&seeds[i], &ops, &seeds)
        }),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Runs `target` on `cases()` inputs and reports how many ran.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let seeds = Arc::new(seeds);
    let started = std::time::Instant::now();
    let n = std::cell::Cell::new(0u64);
    let result = runner().run(&inputs(seeds), |input| {
        n.set(n.get() + 1);
        target(&input);
        Ok(())
    });
    let n = n.get();
    println!(
        "fuzz {name}: {n} inputs in {:.1}s, 0 panics",
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

/// Every frame of every recorded capture.
fn frames() -> &'static Vec<Vec<u8>> {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        let mut out = Vec::new();
        for name in ["BINANCE-ee25be.0.txt", "BINANCE_US.ws.1.0.txt"] {
            let path = common::capture(name);
            let (_, frames) = ticklake::tools::capture::read_capture(&path).unwrap();
            out.extend(frames.into_iter().map(|f| f.data.into_bytes()));
        }
        out
    })
}

#[test]
fn binance_frames() {
    // The shipped rule, so mutated symbols meet the pattern check too.
    let instruments = ticklake::instruments::Instruments::builtin().unwrap();
    let symbols = instruments.symbol_rule("BINANCE").unwrap();
    fuzz("binance frame parser", frames().clone(), |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let _ = ticklake::exchanges::binance::parse_frame(&text, "BINANCE", symbols, 1);
    });
}

#[test]
fn capture_files() {
    // Whole files of each form: recorder format 1, format 2 and plain.
    let mut seeds = Vec::new();
    for name in ["BINANCE_US.ws.1.0.txt", "BINANCE-ee25be.0.txt"] {
        let text = std::fs::read(common::capture(name)).unwrap();
        // The first few KiB: whole files make each input slow to mutate.
        seeds.push(text[..text.len().min(16 << 10)].to_vec());
    }
    seeds.push(
        br#"{"t":"recv","ts":1.5,"data":"{\"e\":\"trade\"}"}
{"t":"send","ts":1.6,"data":"x"}
"#
        .to_vec(),
    );
    seeds.push(b"# plain\n{\"a\":1}\n\n{\"b\":2}\n".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzzed.txt");
    fuzz("capture reader", seeds, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        let _ = ticklake::tools::capture::read_capture(&path);
    });
}

fn trade(i: i64) -> TradeV2 {
    TradeV2::builder(
        "BINANCE",
        "BTCUSDT",
        &i.to_string(),
        1_700_000_000_000_000 + i,
    )
    .price(Dec8::parse("58792.76").unwrap())
    .quantity(Dec8::parse("0.0017").unwrap())
    .side(if i % 2 == 0 { Side::Buy } else { Side::Sell })
    .conditions(vec!["M".into()])
    .source_sequence(Some(i))
    .vendor_data(Some(
        [("stream".to_string(), "aggTrade".to_string())].into(),
    ))
    .build()
}

#[test]
fn avro_records() {
    let codec = Codec::new(1, 2).unwrap();
    let mut seeds: Vec<Vec<u8>> = (0..8)
        .map(|i| codec.encode_trade(&trade(i)).unwrap())
        .collect();
    for f in frames().iter().take(4) {
        let d = DeadLetter::new("BINANCE", "ws://x", 1, "fuzz".into(), f.clone());
        seeds.push(codec.encode_dead_letter(&d).unwrap());
    }
    fuzz("avro decode", seeds, |bytes| {
        let _ = codec.kind_of(bytes);
        let _ = codec.decode_trade(bytes);
        let _ = codec.decode_dead_letter(bytes);
    });
}

#[test]
fn spill_segments() {
    // A real segment, written by the spill log itself.
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    {
        let mut log = SpillLog::open(&real, 1 << 20).unwrap();
        for f in frames().iter().take(16) {
            log.append(f).unwrap();
        }
        log.sync().unwrap();
    }
    let segment = std::fs::read_dir(&real)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("spill-"))
        .unwrap()
        .path();
    let seeds = vec![std::fs::read(&segment).unwrap()];
    let name = segment.file_name().unwrap().to_owned();
    let work = dir.path().join("fuzzed");
    fuzz("spill segment scan and replay", seeds, |bytes| {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join(&name), bytes).unwrap();
        if let Ok(mut log) = SpillLog::open(&work, 1 << 20) {
            let _ = log.replay(|_| Ok::<(), std::convert::Infallible>(()));
        }
    });
}

#[test]
fn sql_guard() {
    let seeds: Vec<Vec<u8>> = [
        "select * from market.trades where symbol = 'BTCUSDT' limit 10",
        "with t as (select symbol, price from market.trades) select symbol, max(price) from t group by symbol",
        "select date_bin(interval '1 minute', timestamp) as m, first_value(price order by timestamp) from market.trades_live group by m",
        "select count(*) from market.\"trades$snapshots\"",
        "select * from (select * from market.trades) s join market.dead_letters d on s.exchange = d.exchange",
        "insert into market.trades values (1)",
        "copy (select 1) to 'x.csv'",
        "select * from read_parquet('/etc/passwd')",
        "select 1; select 2",
        "select ((((1))))",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // As the daemon runs it: on a query thread.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        ticklake::query::pool::handle()
            .spawn(async move {
                fuzz("sql guard", seeds, |bytes| {
                    let sql = String::from_utf8_lossy(bytes);
                    let _ = ticklake::query::sql_guard::check(&sql);
                });
            })
            .await
            .unwrap();
    });
}
