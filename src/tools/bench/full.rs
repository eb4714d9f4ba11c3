//! `ticklake bench` over the whole path (the default, `--from feed`): an
//! in-process WebSocket server plays generated Binance trade frames into
//! the daemon's real feed actor, and the clock runs from the first frame
//! the feed received to the last trade committed to Iceberg. So the
//! WebSocket, the JSON parse, the decimals and the message ids are inside
//! the measurement, as they are for a user.
//!
//! Beside it, on the same broker and in the same run, two ceilings with
//! records of the same size on topics of the same partition count: a bare
//! rdkafka producer alone, and a bare producer with a bare consumer moving
//! the same records (the round trip every trade makes). CPU is read from
//! the kernel: the process's time per trade, and per thread group where it
//! went. The server's own thread is left out of both; it stands for the
//! exchange.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::ceiling::{Ceiling, ceiling_runs, produce_all, produce_and_consume};
use super::procstat;
pub use super::report::{FullReport, ProducerWaits};
use super::{BenchError, trades_commits};
use crate::config::Config;
use crate::daemon::{self, Daemon};
use crate::degrade::level::Level;
use crate::exchanges::Parsed;
use crate::instruments::SymbolRule;
use crate::model::now_us;

/// Name of the server thread, whose CPU is the exchange's, not ours.
const SERVER_THREAD: &str = "bench-exchange";

/// Symbols the frames spread over: the shipped tier 1 and tier 2 lists'
/// first ones, then names no tier lists (tier 3).
fn symbols(n: usize) -> Vec<String> {
    let known = [
        "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT",
        "AVAXUSDT", "LINKUSDT", "DOTUSDT", "LTCUSDT",
    ];
    (0..n)
        .map(|i| match known.get(i) {
            Some(s) => s.to_string(),
            None => format!("ALT{i:03}USDT"),
        })
        .collect()
}

/// `n` generated Binance `trade` frames over `symbols` symbols: the
/// frames the bench's exchange plays, for benchmarks of single stages
/// (`benches/stages.rs`) that want the same input.
pub fn generated_frames(n: usize, symbols: usize) -> Vec<Utf8Bytes> {
    frames(n, &self::symbols(symbols))
}

/// `n` Binance `trade` frames of the combined stream, as the exchange
/// sends them: ids rising per symbol, prices and quantities with eight
/// decimals, trade times of now.
fn frames(n: usize, symbols: &[String]) -> Vec<Utf8Bytes> {
    let now_ms = now_us() / 1000;
    let lower: Vec<String> = symbols.iter().map(|s| s.to_ascii_lowercase()).collect();
    (0..n)
        .map(|i| {
            let k = i % symbols.len();
            let id = 3_000_000_000u64 + (i / symbols.len()) as u64;
            let ms = now_ms + (i / 1000) as i64;
            let price = 6_500_000_000_000u64 + (i as u64 * 7919) % 100_000_000;
            let qty = 100_000u64 + (i as u64 * 104_729) % 99_000_000;
            format!(
                r#"{{"stream":"{}@trade","data":{{"e":"trade","E":{},"s":"{}","t":{id},"p":"{}.{:08}","q":"{}.{:08}","T":{ms},"m":{},"M":true}}}}"#,
                lower[k],
                ms + 1,
                symbols[k],
                price / 100_000_000,
                price % 100_000_000,
                qty / 100_000_000,
                qty % 100_000_000,
                i % 3 == 0,
            )
            .into()
        })
        .collect()
}

/// The ceilings' records: the trade of each generated frame, parsed by the
/// feed's own parser and encoded by the producer's codec (so of exactly
/// the sizes the daemon sends), keyed by its symbol as the daemon keys it.
/// Both ceilings send these same records, each to its own topic.
///
/// One buffer for every payload and a symbol number per record, not a
/// trade, a topic, a key and a payload for each: held that way, the
/// 1,000,000 records of a default run (twice over, one set per ceiling)
/// put the process past 2 GiB while the ceilings ran, beside the idle
/// daemon, whose `rss_bytes` signal then raised it to SOFT.
pub(super) struct CeilingRecords {
    payloads: Vec<u8>,
    /// Where each record's payload ends in `payloads`.
    ends: Vec<usize>,
    /// Each record's key, as its place in `symbols`.
    keys: Vec<u32>,
    symbols: Vec<String>,
}

impl CeilingRecords {
    /// The records of `frames`, as the feed of `exchange` (its symbols
    /// checked by `rule`) and the producer (`codec`) make them.
    fn from_frames(
        exchange: &str,
        rule: &SymbolRule,
        codec: &crate::kafka::avro::Codec,
        frames: &[Utf8Bytes],
    ) -> Result<Self, BenchError> {
        let received = now_us();
        let mut records = Self {
            payloads: Vec::new(),
            ends: Vec::with_capacity(frames.len()),
            keys: Vec::with_capacity(frames.len()),
            symbols: Vec::new(),
        };
        let mut numbers: crate::fastmap::FastMap<String, u32> = Default::default();
        for f in frames {
            let t = match crate::exchanges::binance::parse_frame(f, exchange, rule, received) {
                Ok(Parsed::Trade(t)) => t,
                other => {
                    return Err(BenchError::Producer(format!(
                        "a generated frame is not a trade: {other:?}"
                    )));
                }
            };
            codec.encode_trade_into(&mut records.payloads, &t);
            if records.ends.is_empty() {
                // Sized by the first record, with room to spare: the
                // records differ by a few bytes at most.
                let first = records.payloads.len();
                records.payloads.reserve(frames.len() * (first + 8));
            }
            records.ends.push(records.payloads.len());
            let key = match numbers.get(t.symbol.as_str()) {
                Some(k) => *k,
                None => {
                    let k = records.symbols.len() as u32;
                    records.symbols.push(t.symbol.clone());
                    numbers.insert(t.symbol.clone(), k);
                    k
                }
            };
            records.keys.push(key);
        }
        Ok(records)
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Record `i`'s key and payload.
    fn get(&self, i: usize) -> (&str, &[u8]) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (
            &self.symbols[self.keys[i] as usize],
            &self.payloads[start..self.ends[i]],
        )
    }

    /// The records in order: key and payload.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// A WebSocket server on its own thread: the first client gets every
/// frame as fast as it reads them, then the connection stays open (a
/// reconnect would get nothing, as from a quiet market).
struct Exchange {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    sent: Arc<AtomicU64>,
}

impl Exchange {
    /// Serves `frames`, at `rate` frames a second when given (else as fast
    /// as the client reads them).
    fn start(frames: Vec<Utf8Bytes>, rate: Option<f64>) -> Result<Self, BenchError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| BenchError::Producer(format!("bench exchange: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| BenchError::Producer(format!("bench exchange: {e}")))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let thread = std::thread::Builder::new()
            .name(SERVER_THREAD.into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "bench exchange: no runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let serve = async {
                        let mut first = true;
                        let mut idle = Vec::new();
                        loop {
                            let Ok((tcp, _)) = listener.accept().await else {
                                continue;
                            };
                            let _ = tcp.set_nodelay(true);
                            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                                continue;
                            };
                            let (mut sink, mut source) = ws.split();
                            // Subscriptions and pongs are read and ignored.
                            tokio::spawn(async move { while source.next().await.is_some() {} });
                            if !std::mem::take(&mut first) {
                                idle.push(sink);
                                continue;
                            }
                            let began = tokio::time::Instant::now();
                            for (i, f) in frames.iter().enumerate() {
                                // Paced in slices of 64 frames, flushed
                                // before each wait.
                                if let Some(r) = rate.filter(|_| i % 64 == 0 && i > 0) {
                                    let due = began + Duration::from_secs_f64(i as f64 / r);
                                    if due > tokio::time::Instant::now() {
                                        if sink.flush().await.is_err() {
                                            break;
                                        }
                                        tokio::time::sleep_until(due).await;
                                    }
                                }
                                if sink.feed(Message::Text(f.clone())).await.is_err() {
                                    break;
                                }
                                counter.fetch_add(1, Ordering::Relaxed);
                                if i % 256 == 255 && sink.flush().await.is_err() {
                                    break;
                                }
                            }
                            let _ = sink.flush().await;
                            idle.push(sink);
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = serve => {}
                    }
                });
            })
            .map_err(|e| BenchError::Producer(format!("bench exchange: {e}")))?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
            sent,
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The accounting's counters summed over exchanges and tiers, by outcome.
fn outcomes(d: &Daemon) -> BTreeMap<String, u64> {
    use prometheus::core::Collector;
    let mut out = BTreeMap::new();
    for family in d.metrics.messages.collect() {
        for m in family.get_metric() {
            let outcome = m
                .get_label()
                .iter()
                .find(|l| l.name() == "outcome")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            *out.entry(outcome).or_default() += m.get_counter().get_value() as u64;
        }
    }
    out
}

/// Runs the full path, then (with `ceilings`) the two ceilings, which are
/// 0 without. Must run inside an actix `System`; `cfg` is the bench's
/// throw-away configuration.
pub async fn measure(
    cfg: &Config,
    n: usize,
    symbol_count: usize,
    rate: Option<f64>,
    timeout: Duration,
    ceilings: bool,
) -> Result<FullReport, BenchError> {
    let syms = symbols(symbol_count.max(1));
    let played = frames(n, &syms);
    let frame_bytes = played.first().map(|f| f.len()).unwrap_or(0);
    // Kept for the ceilings, whose records are the trades these frames
    // become (the handles share the frames' text).
    let exchange = Exchange::start(played.clone(), rate)?;
    let mut cfg = cfg.clone();
    // Every bench symbol in tier 1, which no level sheds: a run faster
    // than the pipeline pushes back on the feed (and raises the level)
    // instead of dropping trades, so every trade is stored and the rate
    // and the CPU per trade are those of the whole path.
    let instruments = cfg.data_dir_abs().join("bench-instruments.toml");
    let quoted: Vec<String> = syms.iter().map(|s| format!("\"{s}\"")).collect();
    std::fs::create_dir_all(cfg.data_dir_abs())
        .and_then(|()| {
            std::fs::write(
                &instruments,
                format!(
                    "[exchanges.BINANCE]\nsymbol_pattern = \"[A-Z0-9]{{4,20}}\"\ntier1 = [{}]\n",
                    quoted.join(", ")
                ),
            )
        })
        .map_err(|e| BenchError::Producer(format!("bench instruments: {e}")))?;
    cfg.instruments_file = instruments.display().to_string();
    // The bench's one feed, whatever the config names.
    cfg.feeds.clear();
    let feed = cfg.feeds.named("binance");
    feed.exchange = "BINANCE".into();
    feed.url = format!("ws://{}", exchange.addr);
    feed.symbols = syms.clone();
    feed.channels = vec!["trade".into()];
    // Ids are remembered for the whole run: nothing is forgotten early.
    feed.dedup_capacity = feed.dedup_capacity.max(n);
    let partitions = cfg.kafka.embedded_partitions;
    // A paced probe has no ceilings, so no topics for them.
    let runs = if ceilings { ceiling_runs(&cfg) } else { 0 };
    let topics = |kind: &str| -> Vec<String> {
        (1..=runs)
            .map(|i| format!("{}.ceiling-{kind}-{i}", cfg.kafka.trades_topic_prefix))
            .collect()
    };
    let (produce_topics, round_trip_topics) = (topics("produce"), topics("round-trip"));
    let ceiling_topics: Vec<String> = produce_topics
        .iter()
        .chain(&round_trip_topics)
        .cloned()
        .collect();
    cfg.kafka.extra_topics = ceiling_topics.clone();

    let threads_before = procstat::threads();
    let cpu_before = procstat::process_cpu();
    let rss_before_daemon = procstat::resident_bytes().unwrap_or(0);
    let d = daemon::start(cfg.clone()).await?;
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Some(b) = procstat::resident_bytes() {
                    peak.fetch_max(b, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let stored = || outcomes(&d).get("stored").copied().unwrap_or(0);
    let settled = |o: &BTreeMap<String, u64>| {
        let get = |k: &str| o.get(k).copied().unwrap_or(0);
        get("received") >= n as u64
            && get("stored")
                + get("shed")
                + get("dead_lettered")
                + get("deduplicated")
                + get("quarantined")
                >= get("received")
    };
    let commits_before = trades_commits(&d);
    let wait_started = Instant::now();
    // The clock starts at the first frame the feed took.
    while outcomes(&d).get("received").copied().unwrap_or(0) == 0 {
        if wait_started.elapsed() > timeout {
            return Err(BenchError::Timeout {
                stage: "first frame",
                secs: timeout.as_secs(),
                done: exchange.sent.load(Ordering::Relaxed),
                total: n as u64,
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let mut max_level = Level::Normal;
    let mut above_normal = Duration::ZERO;
    let mut sampled = started;
    let mut flushed = false;
    let mut received_secs = 0.0;
    loop {
        let o = outcomes(&d);
        let level = d.status.supervisor.borrow().level.level;
        max_level = max_level.max(level);
        let now = Instant::now();
        if level > Level::Normal {
            above_normal += now - sampled;
        }
        sampled = now;
        if settled(&o) {
            break;
        }
        if started.elapsed() > timeout {
            return Err(BenchError::Timeout {
                stage: "full path",
                secs: timeout.as_secs(),
                done: stored(),
                total: n as u64,
            });
        }
        // Every frame read: commit the rest now rather than wait out
        // writer.max_age_ms, which would measure the age limit.
        if !flushed && o.get("received").copied().unwrap_or(0) >= n as u64 {
            received_secs = started.elapsed().as_secs_f64();
            d.drain_and_flush(timeout).await?;
            flushed = true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = procstat::process_cpu().saturating_sub(cpu_before);
    let threads_after = procstat::threads();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let mut threads = procstat::spent(&threads_before, &threads_after);
    let server_cpu: f64 = threads
        .iter()
        .filter(|t| t.name == SERVER_THREAD)
        .map(|t| t.cpu_secs)
        .sum();
    threads.retain(|t| t.name != SERVER_THREAD);
    let ours: f64 = threads.iter().map(|t| t.cpu_secs).sum();
    for t in &mut threads {
        t.share = if ours > 0.0 { t.cpu_secs / ours } else { 0.0 };
    }
    let cpu_secs = (cpu.as_secs_f64() - server_cpu).max(0.0);
    let result_outcomes = outcomes(&d);
    let (enrichment_skipped, producer_waits) = {
        let p = d.status.producer.borrow();
        let waits = ProducerWaits {
            window: p.window_waits,
            queue: p.queue_waits,
        };
        (p.enrichment_skipped, waits)
    };
    // The daemon is this run's alone: its first rise is the run's.
    let raised_by = (d.status.supervisor.borrow().level.history.iter())
        .find(|t| t.to > t.from)
        .map(|t| format!("{} -> {}: {}", t.from, t.to, t.reason));
    let commits_run = trades_commits(&d) - commits_before;
    // The exchange has played every frame. A feed left connected would go
    // stale during a real broker's ceilings, which take minutes, and
    // reconnect to a server with nothing more to send, once a
    // `stale_after_secs`, its restarts logged as failures and its work in
    // the ceilings' CPU.
    d.stop_feeds().await?;
    let stored_n = result_outcomes.get("stored").copied().unwrap_or(0).max(1);

    // The ceilings, on the same broker, after the daemon's run; without
    // them (a paced probe), rates of 0.
    let (produce, round_trip, record_bytes) = if ceilings {
        let registry = crate::kafka::registry::Registry::open(&cfg)?;
        let codec = crate::kafka::registry::codec(registry.as_dyn(), &cfg)?;
        let exchange_name = cfg
            .feeds
            .get("binance")
            .map(|f| f.exchange.clone())
            .unwrap_or_else(|| "BINANCE".into());
        let instruments = cfg
            .instruments()
            .map_err(|e| BenchError::Producer(format!("bench instruments: {e}")))?;
        let rule = instruments
            .symbol_rule(&exchange_name)
            .map_err(|e| BenchError::Producer(format!("bench instruments: {e}")))?;
        let records = CeilingRecords::from_frames(&exchange_name, rule, &codec, &played)?;
        drop(played);
        let record_bytes = if records.is_empty() {
            0
        } else {
            records.get(0).1.len()
        };
        if !cfg.kafka.is_embedded() {
            crate::kafka::ensure_topics(&cfg.kafka, &d.bootstrap, &ceiling_topics, partitions)
                .await?;
        }
        let (ceiling_cfg, bootstrap) = (cfg.clone(), d.bootstrap.clone());
        let embedded = cfg.kafka.is_embedded();
        let (produce, round_trip) = tokio::task::spawn_blocking(move || {
            let produce = Ceiling::best_of(&produce_topics, |topic| {
                let stage = "produce ceiling";
                produce_all(
                    &ceiling_cfg,
                    &bootstrap,
                    topic,
                    &records,
                    stage,
                    timeout,
                    None,
                )
            })?;
            let round_trip = Ceiling::best_of(&round_trip_topics, |topic| {
                produce_and_consume(
                    &ceiling_cfg,
                    &bootstrap,
                    topic,
                    &records,
                    partitions,
                    timeout,
                    embedded,
                )
            })?;
            Ok::<_, BenchError>((produce, round_trip))
        })
        .await
        .map_err(|e| BenchError::Producer(e.to_string()))??;
        (produce, round_trip, record_bytes)
    } else {
        (Ceiling::none(), Ceiling::none(), 0)
    };
    d.shutdown(Duration::from_secs(10)).await?;
    drop(exchange);

    let per_s = stored_n as f64 / seconds;
    let produce_per_s = n as f64 / produce.secs;
    let round_trip_per_s = n as f64 / round_trip.secs;
    let rates = |c: &Ceiling| c.runs_secs.iter().map(|s| n as f64 / s).collect();
    Ok(FullReport {
        broker: if cfg.kafka.is_embedded() {
            "embedded (librdkafka in-process cluster)".to_string()
        } else {
            cfg.kafka.brokers.clone()
        },
        trades: n,
        symbols: syms.len(),
        frame_bytes,
        offered_per_s: rate,
        record_bytes,
        partitions,
        seconds,
        received_secs,
        end_to_end_per_s: per_s,
        cpu_us_per_trade: cpu_secs * 1e6 / stored_n as f64,
        produce_ceiling_per_s: produce_per_s,
        round_trip_ceiling_per_s: round_trip_per_s,
        produce_ceiling_cpu_us: produce.cpu_secs * 1e6 / n.max(1) as f64,
        round_trip_ceiling_cpu_us: round_trip.cpu_secs * 1e6 / n.max(1) as f64,
        produce_ceiling_runs_per_s: rates(&produce),
        round_trip_ceiling_runs_per_s: rates(&round_trip),
        ratio_to_produce: ratio(per_s, produce_per_s),
        ratio_to_round_trip: ratio(per_s, round_trip_per_s),
        commits: commits_run,
        max_level,
        above_normal_secs: above_normal.as_secs_f64(),
        raised_by,
        enrichment_skipped,
        producer_waits,
        outcomes: result_outcomes,
        peak_rss_bytes: peak.load(Ordering::Relaxed),
        rss_before_daemon_bytes: rss_before_daemon,
        threads,
        pid: std::process::id(),
    })
}

/// `a / b`, or 0 without a `b` (a probe run without ceilings).
pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_as_binance_trades_of_distinct_ids() {
        let syms = symbols(15);
        assert_eq!(syms[0], "BTCUSDT");
        assert_eq!(syms[14], "ALT014USDT");
        let f = frames(30, &syms);
        let mut ids = std::collections::BTreeSet::new();
        for text in &f {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let d = &v["data"];
            assert_eq!(d["e"], "trade");
            assert!(d["p"].as_str().unwrap().split('.').nth(1).unwrap().len() == 8);
            ids.insert((
                d["s"].as_str().unwrap().to_string(),
                d["t"].as_u64().unwrap(),
            ));
        }
        assert_eq!(ids.len(), 30);
    }

    /// Each ceiling record is the trade of its frame as the producer
    /// encodes it, keyed by the trade's symbol, in the frames' order.
    #[test]
    fn ceiling_records_are_the_frames_trades_as_the_producer_encodes_them() {
        let syms = symbols(7);
        let f = frames(40, &syms);
        let rule = SymbolRule::new("BINANCE", "[A-Z0-9]{4,20}").unwrap();
        let codec = crate::kafka::avro::Codec::new(1, 2).unwrap();
        let records = CeilingRecords::from_frames("BINANCE", &rule, &codec, &f).unwrap();
        assert_eq!(records.len(), 40);
        assert_eq!(records.symbols.len(), 7, "one name per symbol");
        let mut seen = 0;
        for (i, (key, payload)) in records.iter().enumerate() {
            let Ok(Parsed::Trade(t)) =
                crate::exchanges::binance::parse_frame(&f[i], "BINANCE", &rule, 0)
            else {
                panic!("frame {i} is not a trade");
            };
            assert_eq!(key, t.symbol, "record {i}");
            // The arrival time is the one field the two parses differ in:
            // with the record's own, the trade encodes to the record.
            let mut t = *t;
            t.ingestion_timestamp_us = codec.decode_trade(payload).unwrap().ingestion_timestamp_us;
            assert_eq!(payload, &codec.encode_trade(&t).unwrap()[..], "record {i}");
            seen += 1;
        }
        assert_eq!(seen, 40);
        let empty = CeilingRecords::from_frames("BINANCE", &rule, &codec, &[]).unwrap();
        assert!(empty.is_empty());
    }
}
