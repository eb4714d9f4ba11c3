//! Fuzzing on the stable toolchain: every parser of external input takes
//! mutated real inputs and random bytes, and must answer Ok or Err, never
//! panic. Targets: the Binance, Kraken (v2, v1) and Coinbase (Advanced
//! Trade, Exchange) frame parsers, the capture reader, Avro
//! decoding (where the direct trade decoder must also agree with
//! apache-avro's), the spill log's segment scan and replay, and the SQL guard
//! together with DataFusion's planning on the daemon's session.
//!
//! Inputs are the recorded captures (and records and statements built from
//! them), mutated as a byte-level fuzzer does: bytes flipped, inserted,
//! deleted, runs duplicated, tails cut, two inputs spliced. SQL also comes
//! from a grammar of hostile fragments (`hostile_sql`).
//!
//! The number of inputs per target is `TICKLAKE_FUZZ_CASES`; without it,
//! the short form CI runs: 20,000 per target, and 5,000 for SQL planning,
//! which is slower than parsing. Inputs follow from `TICKLAKE_FUZZ_SEED`
//! (default 0), so a run is repeatable and CI sees the same inputs. The long form (README, "Tests"):
//! `TICKLAKE_FUZZ_CASES=1000000 cargo test --test fuzz -- --nocapture --test-threads=1`.
//! A failure prints the input (proptest shrinks it first).

mod common;
mod hostile_sql;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::prelude::SessionContext;
use futures::FutureExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use ticklake::degrade::spill::SpillLog;
use ticklake::kafka::avro::{AvroError, Codec};
use ticklake::kafka::avro_direct::STRICTER_THAN_APACHE_AVRO;
use ticklake::model::{DeadLetter, Dec8, Side, TradeV2};
use ticklake::query::{pool, session, sql_guard};

/// Inputs per target: `TICKLAKE_FUZZ_CASES`, else the target's short form.
fn cases(short: u32) -> u32 {
    std::env::var("TICKLAKE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(short)
}

/// The run's seed: `TICKLAKE_FUZZ_SEED`, else 0. Each target draws its own
/// inputs from it, the same ones on every run with the same seed, so CI
/// is repeatable and any failure is reproduced by the seed it prints.
fn seed() -> u64 {
    std::env::var("TICKLAKE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn runner(name: &str, cases: u32) -> TestRunner {
    // The seed, then the target's name (FNV-1a), so targets differ.
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed().to_le_bytes());
    key[8..16].copy_from_slice(&name_hash.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        // Shrinking is for readable failures; a long run stays bounded.
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
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

/// Runs `target` on `cases()` inputs (20,000 unless told) and reports how
/// many ran. A panic fails the run at once, with the input, shrunk.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    fuzz_with(name, cases(20_000), inputs(Arc::new(seeds)), |input| {
        target(&input);
        false
    });
}

/// Runs `target` on `n` inputs drawn from `strategy`. The target returns
/// whether it caught a panic of its own (and tallies it); one it does not
/// catch fails the run at once.
fn fuzz_with<S: Strategy>(name: &str, n: u32, strategy: S, target: impl Fn(S::Value) -> bool) {
    let started = std::time::Instant::now();
    let ran = std::cell::Cell::new(0u64);
    let caught = std::cell::Cell::new(0u64);
    let result = runner(name, n).run(&strategy, |input| {
        ran.set(ran.get() + 1);
        if target(input) {
            caught.set(caught.get() + 1);
        }
        Ok(())
    });
    let (ran, secs) = (ran.get(), started.elapsed().as_secs_f64());
    let panics = caught.get() + u64::from(result.is_err());
    println!(
        "fuzz {name}: {ran} inputs in {secs:.1}s ({:.0}/s), {panics} panics (seed {})",
        ran as f64 / secs.max(1e-9),
        seed()
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

/// A capture of the Kraken and Coinbase feeds, of the repository's fixtures.
fn venue_capture(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/captures")
        .join(name);
    assert!(p.exists(), "missing capture fixture {}", p.display());
    p
}

/// The received frames of `names`, up to 2 KiB each: the large book
/// snapshots would only slow every input down.
fn venue_frames(names: &[&str]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for name in names {
        let (_, frames) = ticklake::tools::capture::read_capture(&venue_capture(name)).unwrap();
        out.extend(
            frames
                .into_iter()
                .filter(|f| f.data.len() <= 2048)
                .map(|f| f.data.into_bytes()),
        );
    }
    out
}

/// A venue protocol's parser on mutated frames, with the shipped symbol
/// rule. Besides never panicking it keeps its promise on the output: a
/// frame's trades, all of them, or nothing.
fn protocol_frames(
    name: &str,
    kind: ticklake::config::ProtocolKind,
    exchange: &str,
    seeds: Vec<Vec<u8>>,
) {
    use ticklake::exchanges::{Frame, ParseCtx};
    let instruments = ticklake::instruments::Instruments::builtin().unwrap();
    let symbols = instruments.symbol_rule(exchange).unwrap();
    let protocol = ticklake::exchanges::protocol(kind);
    fuzz(name, seeds, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let ctx = ParseCtx {
            exchange,
            symbols,
            received_us: 1,
        };
        let mut out = Vec::new();
        match protocol.parse(&text, &ctx, &mut out) {
            Ok(Frame::Trades(n)) => assert!(n > 0 && n == out.len(), "{n} trades, {}", out.len()),
            Ok(Frame::Skipped(_)) | Err(_) => assert!(out.is_empty(), "{text}"),
        }
    });
}

/// Kraken v2 frames from its documentation (there is no v2 capture), with
/// the number forms a float printer writes.
const KRAKEN_V2_SEEDS: &[&str] = &[
    r#"{"channel":"trade","type":"snapshot","data":[{"symbol":"MATIC/USD","side":"buy","price":0.5147,"qty":6423.46326,"ord_type":"limit","trade_id":4665846,"timestamp":"2023-09-25T07:48:36.925533Z"},{"symbol":"MATIC/USD","side":"sell","price":0.5147,"qty":1136.19677815,"ord_type":"market","trade_id":4665847,"timestamp":"2023-09-25T07:49:36.925603Z"}]}"#,
    r#"{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"sell","price":26958.7,"qty":1e-8,"ord_type":"market","trade_id":67592453,"timestamp":"2023-09-25T09:04:31.742648Z"}]}"#,
    r#"{"method":"subscribe","result":{"channel":"trade","snapshot":true,"symbol":"MATIC/USD"},"success":true,"time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#,
    r#"{"error":"Currency pair not supported","method":"subscribe","success":false,"symbol":"MATIC/XYZ","time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#,
    r#"{"channel":"heartbeat"}"#,
    r#"{"channel":"status","data":[{"api_version":"v2","connection_id":12393906104898154338,"system":"online","version":"2.0.4"}],"type":"update"}"#,
    r#"{"method":"pong","req_id":101,"time_in":"2023-09-24T14:10:23.799685Z","time_out":"2023-09-24T14:10:23.799703Z"}"#,
    r#"{"channel":"trade","type":"update","data":[{"symbol":"XBT\/USD","side":"buy","price":1.5E+3,"qty":-0.0,"ord_type":"l\u0069mit","trade_id":0,"timestamp":"2023-09-25T09:04:31Z"}]}"#,
];

/// Coinbase Advanced Trade frames from its documentation (there is no
/// capture of it).
const COINBASE_ADVANCED_SEEDS: &[&str] = &[
    r#"{"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z","sequence_num":0,"events":[{"type":"snapshot","trades":[{"trade_id":"000000000","product_id":"ETH-USD","price":"1260.01","size":"0.3","side":"BUY","time":"2019-08-14T20:42:27.265Z"}]}]}"#,
    r#"{"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z","sequence_num":4,"events":[{"type":"update","trades":[{"trade_id":"512346","product_id":"BTC-USD","price":"21921.74","size":"0.06317609","side":"SELL","time":"2023-02-09T20:19:35.384436Z"},{"trade_id":"512347","product_id":"BTC-USD","price":"21921.73","size":"0.00000001","side":"BUY","time":"2023-02-09T20:19:35.384436Z"}]}]}"#,
    r#"{"channel":"heartbeats","client_id":"","timestamp":"2023-06-23T20:31:26.122969572Z","sequence_num":0,"events":[{"current_time":"2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105","heartbeat_counter":"3049"}]}"#,
    r#"{"channel":"subscriptions","client_id":"","timestamp":"2023-02-09T20:32:58.036498466Z","sequence_num":1,"events":[{"subscriptions":{"market_trades":["ETH-USD"],"heartbeats":["heartbeats"]}}]}"#,
    r#"{"type":"error","message":"failure to subscribe"}"#,
];

fn seeds_of(frames: &[&str]) -> Vec<Vec<u8>> {
    frames.iter().map(|f| f.as_bytes().to_vec()).collect()
}

#[test]
fn kraken_v2_frames() {
    protocol_frames(
        "kraken v2 frame parser",
        ticklake::config::ProtocolKind::Kraken,
        "KRAKEN",
        seeds_of(KRAKEN_V2_SEEDS),
    );
}

#[test]
fn kraken_v1_frames() {
    protocol_frames(
        "kraken v1 frame parser",
        ticklake::config::ProtocolKind::KrakenV1,
        "KRAKEN",
        venue_frames(&["KRAKEN.ws.48.0.txt", "KRAKEN.ws.50.0.txt"]),
    );
}

#[test]
fn coinbase_advanced_frames() {
    protocol_frames(
        "coinbase advanced frame parser",
        ticklake::config::ProtocolKind::Coinbase,
        "COINBASE",
        seeds_of(COINBASE_ADVANCED_SEEDS),
    );
}

#[test]
fn coinbase_exchange_frames() {
    protocol_frames(
        "coinbase exchange frame parser",
        ticklake::config::ProtocolKind::CoinbaseExchange,
        "COINBASE",
        venue_frames(&["COINBASE.ws.28.0.txt"]),
    );
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
        [("stream".to_string(), "aggTrade".to_string())]
            .into_iter()
            .collect(),
    ))
    .build()
}

#[test]
fn avro_records() {
    let codec = Codec::new(1, 2).unwrap();
    let mut trades: Vec<TradeV2> = (0..8).map(trade).collect();
    // The shapes `trade` does not make: no conditions, no vendor data, a map
    // of several entries, multi-byte text.
    let mut bare = trade(8);
    bare.trade_conditions.clear();
    bare.vendor_data = None;
    bare.platform_sequence = Some(-1);
    let mut full = trade(9);
    full.trade_conditions = vec!["é".into(), String::new(), "中".into()];
    full.vendor_data = Some((0..4).map(|i| (format!("k{i}"), "v".repeat(i))).collect());
    trades.extend([bare, full]);
    let mut seeds: Vec<Vec<u8>> = trades
        .iter()
        .map(|t| codec.encode_trade(t).unwrap())
        .collect();
    for f in frames().iter().take(4) {
        let d = DeadLetter::new("BINANCE", "ws://x", 1, "fuzz".into(), f.clone());
        seeds.push(codec.encode_dead_letter(&d).unwrap());
    }
    fuzz("avro decode", seeds, |bytes| {
        let _ = codec.kind_of(bytes);
        // decode_trade is the direct decoder: where apache-avro's refuses,
        // it must refuse; where both read, they must read the same record;
        // it may refuse more only for the reasons it names.
        match (
            codec.decode_trade_reference(bytes),
            codec.decode_trade(bytes),
        ) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "the trade decoders disagree"),
            (Err(_), Err(_)) => {}
            (Err(e), Ok(t)) => {
                panic!("apache-avro refuses ({e}) what the direct decoder reads: {t:?}")
            }
            (Ok(t), Err(e)) => assert!(
                matches!(&e, AvroError::Field { reason, .. }
                    if STRICTER_THAN_APACHE_AVRO.contains(&reason.as_str())),
                "the direct decoder refuses ({e}) what apache-avro reads: {t:?}"
            ),
        }
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

/// The outcome of a statement whose planning panicked (and was caught).
const PANICKED: &str = "panicked, caught on the query thread";

/// How one statement ended.
#[derive(Debug)]
enum Outcome {
    /// Refused by the guard, with its class.
    Refused(&'static str),
    /// Planning failed with a typed DataFusion error, by kind.
    PlanError(&'static str),
    /// A physical plan, ready to run.
    Planned,
}

/// The kind of a DataFusion error, from its root cause.
fn error_kind(e: &datafusion::error::DataFusionError) -> &'static str {
    use datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::SQL(..) => "sql",
        E::Plan(_) => "plan",
        E::SchemaError(..) => "schema",
        E::NotImplemented(_) => "not_implemented",
        E::Internal(_) => "internal",
        E::Execution(_) => "execution",
        E::ArrowError(..) => "arrow",
        E::ResourcesExhausted(_) => "resources_exhausted",
        E::Configuration(_) => "configuration",
        E::External(_) => "external",
        _ => "other",
    }
}

/// The guard, then planning as `POST /v1/sql` plans: the logical plan,
/// the read-only check, then the optimizer and the physical plan. The
/// optimizer folds constants, so expressions are evaluated here too.
async fn guard_and_plan(ctx: SessionContext, sql: String) -> Outcome {
    if let Err(e) = sql_guard::check(&sql) {
        return Outcome::Refused(e.class());
    }
    let state = ctx.state();
    let plan = match state.create_logical_plan(&sql).await {
        Ok(p) => p,
        Err(e) => return Outcome::PlanError(error_kind(&e)),
    };
    // What the guard lets through, the session's read-only options must
    // accept too: anything else would be a guard bypass, stopped only by
    // the second line of defence.
    if let Err(e) = session::read_only().verify_plan(&plan) {
        panic!("the guard accepted a statement the read-only options refuse: {e}");
    }
    let df = match ctx.execute_logical_plan(plan).await {
        Ok(df) => df,
        Err(e) => return Outcome::PlanError(error_kind(&e)),
    };
    match df.create_physical_plan().await {
        Ok(_) => Outcome::Planned,
        Err(e) => Outcome::PlanError(error_kind(&e)),
    }
}

/// Panic sites of DataFusion 53 that are upstream bugs, fixed in later
/// DataFusion releases than the one iceberg-datafusion 0.10 pins: date
/// functions folding an out-of-range constant timestamp (an overflow or an
/// unwrap). The guard cannot tell these constants apart from good ones; the
/// daemon contains them, as any panic inside a query, on the query pool (the
/// query answers 500 and the panic is counted). They are tallied and shown;
/// a panic anywhere else fails the run.
const KNOWN_DATAFUSION_PANICS: &[(&str, &str)] = &[
    (
        "datafusion-functions-53.1.0/src/datetime/date_bin.rs",
        "apache/datafusion#22210, #22211, #22610",
    ),
    (
        "datafusion-functions-53.1.0/src/datetime/date_trunc.rs",
        "apache/datafusion#22209, #22214, #25129",
    ),
];

/// The upstream issues of a known DataFusion panic site, if it is one.
fn known_upstream(site: &str) -> Option<&'static str> {
    KNOWN_DATAFUSION_PANICS
        .iter()
        .find(|(file, _)| site.contains(file))
        .map(|(_, issues)| *issues)
}

/// A panic site without the directory the crate sources sit in.
fn short_site(file: &str) -> &str {
    file.find(".crates.io-")
        .and_then(|i| file[i..].find('/').map(|j| &file[i + j + 1..]))
        .unwrap_or(file)
}

/// Where the last panic on a query thread happened and what it said, set
/// by the hook `record_query_panics` installs.
static QUERY_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Records panics on query threads instead of printing them, so a long run
/// tallies every distinct site; any other thread's panic is reported as
/// before.
fn record_query_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if pool::on_query_thread() {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let site = info
                .location()
                .map(|l| format!("{}:{}", short_site(l.file()), l.line()))
                .unwrap_or_default();
            *QUERY_PANIC.lock().unwrap() = Some(format!("{site}: {message}"));
        } else {
            previous(info);
        }
    }));
}

/// At most `n` characters of `s`, for messages about huge statements.
fn head(s: &str, n: usize) -> String {
    let mut h: String = s.chars().take(n).collect();
    if h.len() < s.len() {
        h += &format!("… ({} bytes)", s.len());
    }
    h
}

#[test]
fn sql_guard_and_planning() {
    // The daemon's session over a fresh lake: `market.trades` (Iceberg),
    // `market.trades_live` (hybrid, no tail here), `market.dead_letters`,
    // the metadata tables and information_schema.
    let dir = tempfile::tempdir().unwrap();
    let cfg = ticklake::config::Config::default().under(dir.path());
    let pool = pool::handle();
    let ctx = pool
        .block_on(pool.spawn(async move { session::session(&cfg).await }))
        .unwrap()
        .unwrap();
    let seeds: Vec<Vec<u8>> = hostile_sql::SEEDS
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    // Three in ten inputs are byte-level mutations of the real statements,
    // the rest come from the grammar (a seed per statement).
    let statements = prop_oneof![
        3 => inputs(Arc::new(seeds)).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        7 => any::<u64>().prop_map(|seed| hostile_sql::Hostile::new(seed).statement()),
    ];
    let outcomes: Mutex<BTreeMap<String, u64>> = Mutex::default();
    // Panic site → how many inputs hit it, and the first of them.
    let panics: Mutex<BTreeMap<String, (u64, String)>> = Mutex::default();
    let slowest = Mutex::new((0.0f64, String::new()));
    record_query_panics();
    // A statement that never finishes would stop the run without a word:
    // one still running after a minute is printed (once), so a hang in a
    // long run names its input. Reporting only; nothing here is timed.
    let running = Arc::new(Mutex::new((
        std::time::Instant::now(),
        String::new(),
        false,
    )));
    let watch = Arc::downgrade(&running);
    std::thread::spawn(move || {
        while let Some(running) = watch.upgrade() {
            {
                let mut r = running.lock().unwrap();
                if !r.2 && r.0.elapsed() > std::time::Duration::from_secs(60) {
                    r.2 = true;
                    eprintln!(
                        "fuzz sql: still running after 60 s: {:?}",
                        head(&r.1, 2_000)
                    );
                }
            }
            drop(running);
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
    });
    fuzz_with(
        "sql guard and planning",
        cases(5_000),
        statements,
        |sql: String| {
            let started = std::time::Instant::now();
            *running.lock().unwrap() = (started, sql.clone(), false);
            // As the daemon runs a query: a task on the query pool, whose
            // threads have the large stack the guard's limits are sized
            // for. A panic is caught and tallied by site; at the end any
            // site but the known DataFusion ones fails the test, so one
            // run finds every distinct one.
            let task = guard_and_plan(ctx.clone(), sql.clone());
            let ended = pool
                .block_on(pool.spawn(std::panic::AssertUnwindSafe(task).catch_unwind()))
                .expect("the query pool ran the task");
            let key = match ended {
                Ok(Outcome::Refused(class)) => format!("refused by the guard: {class}"),
                Ok(Outcome::PlanError(kind)) => format!("planning error: {kind}"),
                Ok(Outcome::Planned) => "planned".to_string(),
                Err(_) => {
                    let site = QUERY_PANIC.lock().unwrap().take().unwrap_or_default();
                    let mut p = panics.lock().unwrap();
                    let entry = p.entry(site).or_insert_with(|| (0, head(&sql, 2_000)));
                    entry.0 += 1;
                    PANICKED.to_string()
                }
            };
            let panicked = key == PANICKED;
            *outcomes.lock().unwrap().entry(key).or_default() += 1;
            let secs = started.elapsed().as_secs_f64();
            let mut s = slowest.lock().unwrap();
            if secs > s.0 {
                *s = (secs, head(&sql, 120));
            }
            panicked
        },
    );
    let outcomes = outcomes.into_inner().unwrap();
    for (what, n) in &outcomes {
        println!("  {what}: {n}");
    }
    let (secs, sql) = slowest.into_inner().unwrap();
    println!("  slowest: {:.0} ms, {sql:?}", secs * 1000.0);
    let panics = panics.into_inner().unwrap();
    for (site, (n, sql)) in &panics {
        match known_upstream(site) {
            Some(issues) => println!(
                "  contained panic ×{n} at {site} (DataFusion 53, fixed upstream: {issues})\n    first on: {sql:?}"
            ),
            None => println!("  PANIC ×{n} at {site}\n    first on: {sql:?}"),
        }
    }
    let unknown: Vec<&String> = panics
        .keys()
        .filter(|site| known_upstream(site).is_none())
        .collect();
    assert!(unknown.is_empty(), "panics at {unknown:?}");
    // The target is only worth its time if inputs reach both ends: some
    // refused, some planned all the way to a physical plan.
    assert!(outcomes.contains_key("planned"), "{outcomes:?}");
    assert!(
        outcomes.keys().any(|k| k.starts_with("refused")),
        "{outcomes:?}"
    );
}
