//! What each stage of a trade's path costs on its own: one thread, warm
//! caches, the daemon's own functions on the bench's own generated frames
//! (`ticklake bench`'s input). `cargo bench --bench stages`.
//!
//! `ticklake bench` measures the whole path and its CPU a trade; this
//! measures the pieces, so that the sum of the pieces a trade cannot skip
//! is a floor under that figure. The floor leaves out whatever has no
//! single function to time here: the WebSocket framing, the producer's and
//! the writer's bookkeeping (ack ledger, tally, the buffered id set), the
//! tail's scans, the Iceberg commit itself, the minute bars, and librdkafka (the
//! bench's round-trip ceiling prints what librdkafka alone costs a record).
//! Each stage reports per-trade throughput; its time per trade is the
//! inverse.

use std::hint::black_box;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use ticklake::actors::feed::MAX_BATCH;
use ticklake::config::Config;
use ticklake::dedup::{self, Dedup};
use ticklake::exchanges::{Parsed, binance};
use ticklake::instruments::{Instruments, SymbolRule};
use ticklake::kafka::avro::Codec;
use ticklake::lake::batch::{self, RecordAt, TradeColumns};
use ticklake::lake::commit::KafkaOffsets;
use ticklake::lake::{self as lake, TableKind, commit};
use ticklake::model::TradeV2;
use ticklake::query::tail::TailStore;

/// The daemon's allocator (the binary sets it in `alloc_tuning`): with
/// glibc's malloc, allocation was some 14 % of the parse's samples here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Trades per iteration of a per-record stage: a consumed chunk's order
/// of size.
const CHUNK: usize = 10_000;
/// Rows a commit writes: `ticklake bench`'s 1,000,000 trades land in
/// about ten commits.
const COMMIT_ROWS: usize = 100_000;
/// Symbols the frames spread over, as `ticklake bench` does by default.
const SYMBOLS: usize = 50;
const EXCHANGE: &str = "BINANCE";

/// The shipped instruments file's rule for the exchange, as the daemon
/// checks each trade's symbol.
fn rule() -> SymbolRule {
    Instruments::builtin()
        .expect("the shipped instruments")
        .symbol_rule(EXCHANGE)
        .expect("a rule for the exchange")
        .clone()
}

/// `n` distinct message ids, as the feed makes them (UUID v5 text).
fn message_ids(n: usize) -> Vec<String> {
    (0..n as u64)
        .map(|i| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &i.to_le_bytes()).to_string())
        .collect()
}

/// Every generated frame parsed by the feed's parser, as the feed makes
/// its trades.
fn trades(n: usize) -> Vec<TradeV2> {
    let rule = rule();
    let received = ticklake::model::now_us();
    ticklake::tools::bench::generated_frames(n, SYMBOLS)
        .iter()
        .map(
            |f| match binance::parse_frame(f, EXCHANGE, &rule, received) {
                Ok(Parsed::Trade(t)) => *t,
                other => panic!("a generated frame is not a trade: {other:?}"),
            },
        )
        .collect()
}

fn codec() -> Codec {
    Codec::new(1, 2).expect("the built-in schemas")
}

fn payloads(codec: &Codec, trades: &[TradeV2]) -> Vec<Vec<u8>> {
    trades
        .iter()
        .map(|t| codec.encode_trade(t).expect("encodes"))
        .collect()
}

/// The trades table's Arrow schema, from a throw-away lake, with the
/// table to write its files into.
struct Lake {
    _dir: tempfile::TempDir,
    table: iceberg::table::Table,
    schema: SchemaRef,
    target: usize,
}

fn open_lake(rt: &tokio::runtime::Runtime) -> Lake {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cfg = Config::default().under(dir.path());
    let table = rt.block_on(async {
        let catalog = lake::open_catalog(&cfg).await.expect("the catalog opens");
        lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .expect("the trades table")
    });
    let schema = batch::arrow_schema(table.metadata().current_schema()).expect("its schema");
    Lake {
        _dir: dir,
        table,
        schema,
        target: cfg.writer.target_file_size_bytes,
    }
}

/// The consumer's work on a chunk: each record read in place and written
/// into the Arrow builders, its dedup key taken.
fn to_arrow(codec: &Codec, schema: &SchemaRef, chunk: &[Vec<u8>]) -> (RecordBatch, Vec<u128>) {
    let mut cols = TradeColumns::for_schema(chunk.len(), schema).expect("columns");
    let mut keys = Vec::with_capacity(chunk.len());
    for p in chunk {
        let t = codec.decode_trade_view(p).expect("decodes");
        keys.push(dedup::key(t.message_id));
        cols.push_view(&t);
    }
    (cols.finish(schema).expect("a batch"), keys)
}

fn feed(c: &mut Criterion) {
    let rule = rule();
    let frames = ticklake::tools::bench::generated_frames(CHUNK, SYMBOLS);
    let mut g = c.benchmark_group("feed");
    g.throughput(Throughput::Elements(CHUNK as u64));
    // The typed parse, the decimals, the message id (a UUID v5 of the
    // venue's trade id), the trade's assembly.
    g.bench_function("parse_frame", |b| {
        let received = ticklake::model::now_us();
        b.iter(|| {
            let parsed = frames
                .iter()
                .filter(|f| {
                    matches!(
                        black_box(binance::parse_frame(f, EXCHANGE, &rule, received)),
                        Ok(Parsed::Trade(_))
                    )
                })
                .count();
            // Timing the error path instead would measure nothing useful.
            assert_eq!(parsed, frames.len(), "every generated frame is a trade");
        })
    });
    // The feed's dedup at its default capacity, in its steady state: every
    // id new (the pool is twice the window, so ids come back only once the
    // window has let them go). Asked as the feed asks, a batch of trades
    // at a time (the feed's largest), each id read from its text.
    let ids = message_ids(2 * 1_000_000);
    g.bench_function("dedup", |b| {
        let mut d = Dedup::with_rate(1_000_000, dedup::DEFAULT_FALSE_POSITIVE_RATE).prepared();
        let mut at = 0;
        b.iter(|| {
            if at + CHUNK > ids.len() {
                at = 0;
            }
            for batch in ids[at..at + CHUNK].chunks(MAX_BATCH) {
                let keys: Vec<u128> = batch.iter().map(|m| dedup::key(m)).collect();
                black_box(d.first_time_each(&keys));
            }
            at += CHUNK;
        })
    });
    g.finish();
}

fn producer(c: &mut Criterion) {
    let codec = codec();
    let trades = trades(CHUNK);
    let mut g = c.benchmark_group("producer");
    g.throughput(Throughput::Elements(CHUNK as u64));
    // The direct Avro encoder into one reused buffer, Confluent header in
    // place, as the producer's encoder writes each record.
    g.bench_function("encode", |b| {
        let mut buf = Vec::with_capacity(512);
        b.iter(|| {
            for t in &trades {
                buf.clear();
                codec.encode_trade_into(&mut buf, t);
                black_box(&buf);
            }
        })
    });
    g.finish();
}

fn lake_side(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let lake = open_lake(&rt);
    let codec = codec();
    let trades = trades(COMMIT_ROWS);
    let payloads = payloads(&codec, &trades);
    let mut g = c.benchmark_group("lake");
    g.throughput(Throughput::Elements(CHUNK as u64));
    g.bench_function("decode_to_arrow", |b| {
        b.iter(|| black_box(to_arrow(&codec, &lake.schema, &payloads[..CHUNK])))
    });
    // The tail's ingest: a consumed chunk's rows linked per symbol, with
    // where each came from, and what each commit covered pruned, so that
    // the tail holds about one commit's rows as in the daemon. One
    // partition: a floor (the consumer's chunks come in runs of one).
    let (chunk, _) = to_arrow(&codec, &lake.schema, &payloads[..CHUNK]);
    g.bench_function("tail_push", |b| {
        let mut tail = TailStore::new("bench", lake.schema.clone());
        let topic: Arc<str> = Arc::from("bench.trades");
        let mut committed = KafkaOffsets {
            cluster_id: "bench".into(),
            ..Default::default()
        };
        let mut next = 0i64;
        b.iter(|| {
            let at: Vec<RecordAt> = (next..next + CHUNK as i64)
                .map(|o| (topic.clone(), 0, o))
                .collect();
            tail.push_chunk(&chunk, &at);
            next += CHUNK as i64;
            if next % COMMIT_ROWS as i64 == 0 {
                committed.set(&topic, 0, next);
                tail.prune(&committed);
            }
        })
    });
    // The trades writer's dedup at its default capacity: a chunk's ids
    // asked of the committed ids on arrival, then remembered at commit.
    // A message id's key is its UUID's 128 bits, hash output: random keys
    // are the same to the dedup, and cost no SHA-1 to make.
    let ids: Vec<u128> = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..2 * 4_000_000).map(|_| rng.random()).collect()
    };
    g.bench_function("writer_dedup", |b| {
        let mut d = Dedup::with_rate(4_000_000, dedup::DEFAULT_FALSE_POSITIVE_RATE).prepared();
        let mut at = 0;
        b.iter(|| {
            let keys = &ids[at..at + CHUNK];
            black_box(d.contains_keys(keys));
            black_box(d.first_time_keys_at(keys, 0));
            at = (at + CHUNK) % ids.len();
        })
    });
    drop(ids);
    let chunks: Vec<RecordBatch> = payloads
        .chunks(CHUNK)
        .map(|c| to_arrow(&codec, &lake.schema, c).0)
        .collect();
    g.throughput(Throughput::Elements(COMMIT_ROWS as u64));
    g.sample_size(10);
    // A commit's rows gathered from its chunks, sorted by symbol and time.
    g.bench_function("commit_sort", |b| {
        b.iter(|| black_box(batch::sorted_trades(&lake.schema, &chunks, |_| true).expect("sorted")))
    });
    // Those rows written as the table's Parquet data files (partitioned,
    // zstd, the writer's properties) into the local warehouse; the commit
    // that would reference them is not made, and they are deleted.
    let sorted = batch::sorted_trades(&lake.schema, &chunks, |_| true).expect("sorted");
    g.bench_function("commit_parquet", |b| {
        b.iter_batched(
            || sorted.clone(),
            |batch| {
                let files = rt
                    .block_on(commit::write_data_files(&lake.table, &batch, lake.target))
                    .expect("written");
                for f in &files {
                    let path = lake::store::local_path(f.file_path()).expect("a local lake");
                    std::fs::remove_file(&path).expect("the data file just written");
                }
                files.len()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(stages, feed, producer, lake_side);
criterion_main!(stages);
