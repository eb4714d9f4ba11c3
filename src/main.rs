//! The `ticklake` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ticklake::config::Config;
use ticklake::query::session::OutputFormat;
use ticklake::tools::replay::{Pacing, ReplayOptions, ReplayServer, RestOptions, ServeSpec};

mod alloc_tuning;
mod bench_cli;

#[derive(Parser)]
#[command(
    name = "ticklake",
    version,
    about = "Market-data capture: exchange feeds to Kafka to Iceberg, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Internal: runs one `/v1/sql` statement for the daemon that started
    /// it, over stdin and stdout (`api.sql_isolation`). Not for use by hand.
    #[command(name = "sql-worker", hide = true)]
    SqlWorker,
    /// Run the daemon (feeds, producer, consumer, Iceberg writers, HTTP).
    Run {
        /// Config file (TOML); without it the built-in defaults apply.
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Serve recorded captures over WebSocket, as an exchange would: the
    /// --capture files on --listen, and each --serve entry on its own
    /// address, all in this process with the same pacing options.
    Replay {
        /// Capture file(s) served on --listen: recorder format 1
        /// (*.ws.N.0.txt), format 2 (*.jsonl, *.jsonl.zst) or one frame per
        /// line. Several play one after another.
        #[arg(long, requires = "listen", required_unless_present = "serve")]
        capture: Vec<PathBuf>,
        /// Address to listen on for --capture, e.g. 127.0.0.1:9000.
        #[arg(long, requires = "capture", required_unless_present = "serve")]
        listen: Option<SocketAddr>,
        /// One more server: listen on ADDR and play FILE (several,
        /// comma-separated, play one after another). Repeatable, e.g.
        /// `--serve 127.0.0.1:9001=binance.txt --serve
        /// 127.0.0.1:9002=kraken.jsonl.zst`; combines with --listen. Each
        /// prints `replay listening on ws://ADDR for FILE[,FILE...]`.
        #[arg(long, value_name = "ADDR=FILE[,FILE...]")]
        serve: Vec<ServeSpec>,
        /// Play at this multiple of the recorded pace (1 = real time).
        #[arg(long, conflicts_with = "rate")]
        speed: Option<f64>,
        /// Play at this many frames per second, evenly spaced.
        #[arg(long)]
        rate: Option<f64>,
        /// Start over at the end, forever.
        #[arg(long = "loop")]
        looped: bool,
        /// One shared timeline for all clients, as on a live exchange: a
        /// client that (re)connects gets only frames from then on.
        #[arg(long)]
        live: bool,
        /// Rewrite exchange timestamps so the capture plays as if live: the
        /// first timestamped frame is "now", recorded gaps are kept.
        #[arg(long)]
        retime: bool,
        /// --rest, --rest-protocol, --cut, --rest-gone, --rest-status.
        #[command(flatten)]
        rest: RestOptions,
    },
    /// Record the configured feeds' raw frames, with receive times, to
    /// zstd-compressed JSON lines (recorder format 2) that replay reads;
    /// prints one JSON summary line per feed at the end.
    Record {
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// Directory of the recordings (created when missing); one file
        /// series per feed, `<EXCHANGE>.<yyyymmddThhmmssZ>.jsonl.zst`.
        #[arg(long)]
        out: PathBuf,
        /// Record only this feed (`[feeds.<name>]`, even a disabled one);
        /// repeatable. Default: every enabled feed.
        #[arg(long = "feed", value_name = "NAME")]
        feeds: Vec<String>,
        /// Stop after this long (`30s`, `15m`, `2h`); default: until
        /// SIGINT/SIGTERM.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Start a new file when one passes this many bytes (uncompressed).
        #[arg(long, default_value_t = ticklake::tools::record::DEFAULT_ROTATE_BYTES)]
        rotate_bytes: u64,
        /// Start a new file when one is this many seconds old.
        #[arg(long, default_value_t = ticklake::tools::record::DEFAULT_ROTATE_SECS)]
        rotate_secs: u64,
        /// Compress and write what was received at least this often
        /// (milliseconds): the most a killed recorder loses.
        #[arg(long, default_value_t = ticklake::tools::record::DEFAULT_FLUSH_MS)]
        flush_ms: u64,
    },
    /// Run SQL and print the result: through the running daemon (lake plus
    /// uncommitted tail) when one answers on http.listen, else over the
    /// committed lake only (said on stderr).
    Query {
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        /// The SQL; tables are `market.trades`, `market.trades_live` and
        /// `market.dead_letters`.
        sql: String,
    },
    /// Load a historical data set through the daemon's own path (Avro,
    /// Kafka, the lake writer), with a progress bar. Stop the daemon first.
    Load {
        #[command(subcommand)]
        source: LoadSource,
    },
    /// Measure the sustainable end-to-end throughput into committed Iceberg
    /// and the broker's raw produce ceiling, on the configured broker (the
    /// embedded cluster by default). Use a release build.
    Bench(bench_cli::Args),
    /// Memory and false positives of the message-id dedup: inserts --ids
    /// ids, probes as many others, resends recent ones. Use a release build.
    BenchDedup {
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000_000)]
        ids: usize,
        /// Bloom false-positive rate (default: `dedup.false_positive_rate`).
        #[arg(long)]
        rate: Option<f64>,
        /// Ids the exact window holds (default: --ids).
        #[arg(long)]
        capacity: Option<usize>,
    },
    /// Benchmarks of the query API. Use a release build.
    BenchApi {
        #[command(subcommand)]
        which: BenchApi,
    },
    /// Expire old snapshots of both tables (`maintenance.snapshot_retention`)
    /// and delete the files only they referenced, then the orphan files
    /// (`maintenance.orphan_*`), while no daemon runs; prints one report
    /// per table.
    Maintain {
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// One JSON object per table instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the running daemon's supervision tree, degradation level,
    /// breakers and accounting (from its `/status` endpoint).
    Status {
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// Print the raw `/status` JSON instead of the tree.
        #[arg(long)]
        json: bool,
    },
    /// Monthly cost of a load (--rate per exchange) from measured figures
    /// and the price sheet (config/prices.toml); see docs/cost-model.md.
    Cost(ticklake::tools::cost::CostArgs),
    /// Breaks a daemon of its own on purpose (overload, broker outage,
    /// slow and failing store, kill -9) and proves nothing was lost.
    Chaos(ticklake::tools::chaos::ChaosArgs),
    /// Parse capture file(s) with the feed's parser and publish the records
    /// to the configured (real) Kafka broker; prints a JSON summary.
    Produce {
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// The feed (`[feeds.<name>]`) whose protocol and exchange the
        /// frames are read as.
        #[arg(long, default_value = "binance")]
        feed: String,
        #[arg(long, required = true)]
        capture: Vec<PathBuf>,
    },
}

/// Where `ticklake bench`'s trades enter the daemon.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BenchFrom {
    /// Generated Binance frames over an in-process WebSocket server, through
    /// the feed actor: the whole path.
    Feed,
    /// Trades built before the clock starts, sent into the producer's lanes.
    Lanes,
}

#[derive(Subcommand)]
enum BenchApi {
    /// Time from a frame reaching the feed actor to its trade in an answer
    /// of /v1/trades/recent, at a fixed rate of synthetic trades.
    Freshness {
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// Trades per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Length of the run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write each measured trade's times to this CSV file: when the
        /// feed stamped it, when an answer first held it (UTC µs), and the
        /// difference in ms.
        #[arg(long)]
        trades_csv: Option<PathBuf>,
    },
    /// Latency of "last 15 minutes of one symbol" and one day of 1-minute
    /// OHLCV over a synthetic lake plus tail, optionally against DuckDB.
    Latency {
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// Trades committed to the lake.
        #[arg(long, default_value_t = 10_000_000)]
        lake_trades: usize,
        /// Build the lake as a daemon does: this many small commits of
        /// equal size over the day, one Parquet file and one snapshot with
        /// Kafka offsets each (10,000 when given without a value).
        #[arg(long, num_args = 0..=1, default_missing_value = "10000")]
        commits: Option<usize>,
        /// Keep the lake in this directory, and reuse the one an earlier
        /// run kept there (same --lake-trades and --commits) instead of
        /// building it again. The commits a run adds to time what a commit
        /// costs the query side are taken back at its end.
        #[arg(long)]
        lake_dir: Option<PathBuf>,
        /// Keep the lake's files in this warehouse (`s3://bucket/prefix`,
        /// reached with the config's `lake.s3` keys) rather than under the
        /// lake directory, which keeps the catalog: to time the query side
        /// on an object store. Without --lake-dir, the run writes under a
        /// prefix of its own there and deletes it at its end.
        #[arg(long)]
        warehouse: Option<String>,
        /// Uncommitted trades in the tail.
        #[arg(long, default_value_t = 100_000)]
        tail_trades: usize,
        /// Timed runs of each query.
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        /// A python with duckdb (scripts/requirements-test.txt) to time the
        /// same OHLCV on the lake's Parquet files.
        #[arg(long)]
        duckdb_python: Option<PathBuf>,
        /// First do to the lake what the daemon's bars actor and
        /// maintenance do: summarize the minute bars, compact, expire. On a
        /// kept lake (--lake-dir) this changes it for later runs too.
        #[arg(long)]
        maintain: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Whether whole-tail hybrid scans make ingest wait: the latency of
    /// handing a chunk of trades to the tail, with and without scans.
    TailScans {
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// Trades in the tail before the measurement.
        #[arg(long, default_value_t = 200_000)]
        tail_trades: usize,
        /// Symbols they are spread over.
        #[arg(long, default_value_t = 400)]
        symbols: usize,
        /// Trades per second handed to the tail.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Trades per hand-over.
        #[arg(long, default_value_t = 200)]
        chunk: usize,
        /// Length of each phase (no scans, then scans).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LoadSource {
    /// The ASX equity trades sample: `<dir>/trades/*.csv` and
    /// `<dir>/reference-data/company_info.csv`; exchange ASX, asset class
    /// equities, topic `<kafka.trades_topic_prefix>.asx`.
    Asx {
        #[arg(long, env = "TICKLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// The data set's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Give up when the trades are not committed within this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
    },
}

fn init_tracing() {
    let filter = std::env::var("TICKLAKE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,rdkafka=warn".into());
    // Colours only for a terminal: a log redirected to a file (a service
    // manager, a test harness) stays plain text that grep can read.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn multi_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// An actix system on a multi-thread tokio runtime: actors on the main
/// thread's arbiter, Send work (iceberg, DataFusion) on the pool.
fn actix_system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn main() -> anyhow::Result<()> {
    let huge_pages = alloc_tuning::tune_allocator();
    init_tracing();
    match huge_pages {
        alloc_tuning::HugePages::Refused => {
            tracing::debug!("transparent huge pages refused for this process")
        }
        alloc_tuning::HugePages::LeftToEnvironment => {
            tracing::debug!("transparent huge pages as MIMALLOC_ALLOW_THP says")
        }
        alloc_tuning::HugePages::Unavailable(errno) => tracing::warn!(
            errno,
            "transparent huge pages could not be refused; the allocator may fault in 2 MiB at a time"
        ),
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::SqlWorker => Ok(ticklake::query::isolate::worker::main()?),
        Command::Replay {
            capture,
            listen,
            serve,
            speed,
            rate,
            looped,
            live,
            retime,
            rest,
        } => {
            let pacing = match (speed, rate) {
                (Some(s), _) if s > 0.0 => Pacing::Speed(s),
                (_, Some(r)) if r > 0.0 => Pacing::Rate(r),
                (None, None) => Pacing::AsFastAsPossible,
                _ => anyhow::bail!("--speed and --rate must be positive"),
            };
            // --listen's server first, printed without its files, as it
            // always was; then one per --serve.
            let mut specs: Vec<(ServeSpec, bool)> = Vec::with_capacity(serve.len() + 1);
            if let Some(addr) = listen {
                specs.push((
                    ServeSpec {
                        addr,
                        captures: capture,
                    },
                    false,
                ));
            }
            specs.extend(serve.into_iter().map(|spec| (spec, true)));
            let rt = multi_thread_runtime()?;
            rt.block_on(async move {
                let mut servers = Vec::with_capacity(specs.len());
                let mut banners = Vec::with_capacity(specs.len());
                for (spec, named) in &specs {
                    let frames = ticklake::tools::capture::read_captures(&spec.captures)?;
                    let server = ReplayServer::bind_with_rest(
                        spec.addr,
                        ReplayOptions {
                            frames: Arc::new(frames),
                            pacing,
                            looped,
                            live,
                            retime,
                        },
                        rest.clone(),
                    )
                    .await?;
                    // The bound address on stdout lets scripts use port 0.
                    banners.push(if *named {
                        let files: Vec<String> = spec
                            .captures
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect();
                        format!(
                            "replay listening on ws://{} for {}",
                            server.local_addr(),
                            files.join(",")
                        )
                    } else {
                        format!("replay listening on ws://{}", server.local_addr())
                    });
                    servers.push(server);
                }
                {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    for banner in &banners {
                        writeln!(out, "{banner}")?;
                    }
                    out.flush()?;
                }
                let results =
                    ticklake::tools::replay::run_all(servers, ticklake::daemon::wait_for_signal())
                        .await;
                for ((spec, _), result) in specs.iter().zip(results) {
                    let stats = result?;
                    tracing::info!(
                        addr = %spec.addr,
                        clients = stats.clients,
                        frames_sent = stats.frames_sent,
                        rest_requests = stats.rest_requests,
                        "replay stopped"
                    );
                }
                anyhow::Ok(())
            })
        }
        Command::Record {
            config,
            out,
            feeds,
            duration,
            rotate_bytes,
            rotate_secs,
            flush_ms,
        } => {
            let cfg = Config::load(config.as_deref())?;
            let opts = ticklake::tools::record::RecordOptions {
                out,
                feeds,
                duration,
                rotate_bytes,
                rotate_after: std::time::Duration::from_secs(rotate_secs),
                flush_every: std::time::Duration::from_millis(flush_ms),
            };
            let rt = multi_thread_runtime()?;
            let summaries = rt.block_on(ticklake::tools::record::record(
                &cfg,
                &opts,
                ticklake::daemon::wait_for_signal(),
            ))?;
            for summary in &summaries {
                println!("{}", serde_json::to_string(summary)?);
            }
            let failed: Vec<&str> = summaries
                .iter()
                .filter(|s| s.error.is_some())
                .map(|s| s.feed.as_str())
                .collect();
            anyhow::ensure!(
                failed.is_empty(),
                "the recording of {} stopped early (see its summary)",
                failed.join(", ")
            );
            Ok(())
        }
        Command::Query {
            config,
            format,
            sql,
        } => {
            let cfg = Config::load(config.as_deref())?;
            if cfg.http.enabled {
                let answer = ticklake::api::client::sql(
                    &cfg.http.listen,
                    &sql,
                    std::time::Duration::from_millis(cfg.api.timeout_ms + 5_000),
                )?;
                if let Some(answer) = answer {
                    print!("{}", ticklake::api::client::format(&answer, format)?);
                    if format == OutputFormat::Table {
                        println!();
                    }
                    if answer.get("truncated").and_then(|t| t.as_bool()) == Some(true) {
                        eprintln!(
                            "ticklake query: the answer was cut at api.max_rows rows by the daemon"
                        );
                    }
                    return Ok(());
                }
            }
            eprintln!(
                "ticklake query: no daemon answers on {}; reading the committed lake only (trades not yet committed are missing)",
                cfg.http.listen
            );
            let rt = multi_thread_runtime()?;
            rt.block_on(async move {
                let answer = ticklake::query::isolate::run_local(&cfg, &sql).await?;
                print!("{}", ticklake::api::client::format(&answer, format)?);
                if format == OutputFormat::Table {
                    println!();
                }
                if answer.get("truncated").and_then(|t| t.as_bool()) == Some(true) {
                    eprintln!("ticklake query: the answer was cut at api.max_rows rows");
                }
                anyhow::Ok(())
            })
        }
        Command::Bench(args) => bench_cli::bench(args),
        Command::BenchDedup {
            config,
            ids,
            rate,
            capacity,
        } => {
            let rate = match rate {
                Some(r) => r,
                None => Config::load(config.as_deref())?.dedup.false_positive_rate,
            };
            let report = ticklake::tools::bench_dedup::run(ids, rate, capacity.unwrap_or(ids))?;
            println!("{report}");
            Ok(())
        }
        Command::BenchApi {
            which:
                BenchApi::Freshness {
                    config,
                    rate,
                    seconds,
                    json,
                    trades_csv,
                },
        } => {
            anyhow::ensure!(
                rate > 0.0 && seconds > 0,
                "--rate and --seconds must be positive"
            );
            let cfg = Config::load(config.as_deref())?;
            let sys = actix_system();
            let report = sys.block_on(async move {
                ticklake::tools::bench_api::freshness(&cfg, rate, seconds, trades_csv.as_deref())
                    .await
            })?;
            print_report(&report, json)
        }
        Command::BenchApi {
            which:
                BenchApi::Latency {
                    config,
                    lake_trades,
                    commits,
                    lake_dir,
                    warehouse,
                    tail_trades,
                    iterations,
                    duckdb_python,
                    maintain,
                    json,
                },
        } => {
            anyhow::ensure!(
                lake_trades > 0 && iterations > 0,
                "--lake-trades and --iterations must be positive"
            );
            anyhow::ensure!(
                commits.is_none_or(|c| c > 0 && c <= lake_trades),
                "--commits must be positive and at most --lake-trades"
            );
            let cfg = Config::load(config.as_deref())?;
            let sys = actix_system();
            let report = sys.block_on(async move {
                ticklake::tools::bench_api::latency(
                    &cfg,
                    &ticklake::tools::bench_api::LatencyOptions {
                        lake_trades,
                        commits,
                        lake_dir,
                        warehouse,
                        tail_trades,
                        iterations,
                        duckdb_python,
                        maintain,
                    },
                )
                .await
            })?;
            print_report(&report, json)
        }
        Command::BenchApi {
            which:
                BenchApi::TailScans {
                    config,
                    tail_trades,
                    symbols,
                    rate,
                    chunk,
                    seconds,
                    json,
                },
        } => {
            anyhow::ensure!(
                symbols > 0 && rate > 0.0 && chunk > 0 && seconds > 0,
                "--symbols, --rate, --chunk and --seconds must be positive"
            );
            let cfg = Config::load(config.as_deref())?;
            let sys = actix_system();
            let report = sys.block_on(async move {
                ticklake::tools::bench_tail::tail_scans(
                    &cfg,
                    tail_trades,
                    symbols,
                    rate,
                    chunk,
                    seconds,
                )
                .await
            })?;
            print_report(&report, json)
        }
        Command::Load {
            source:
                LoadSource::Asx {
                    config,
                    dir,
                    timeout_secs,
                },
        } => {
            let cfg = Config::load(config.as_deref())?;
            let sys = actix_system();
            let report = sys.block_on(async move {
                ticklake::tools::loaders::load::asx(
                    &cfg,
                    &dir,
                    std::time::Duration::from_secs(timeout_secs),
                )
                .await
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Maintain { config, json } => {
            let cfg = Config::load(config.as_deref())?;
            let rt = multi_thread_runtime()?;
            let reports = rt.block_on(ticklake::tools::maintain::maintain(&cfg))?;
            for r in reports {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{}: {} snapshots expired ({} -> {}), {} manifest lists and {} metadata files deleted ({} bytes), {} data files, metadata {} bytes, {} ms",
                        r.table,
                        r.expired,
                        r.snapshots_before,
                        r.snapshots_after,
                        r.manifest_lists_deleted,
                        r.metadata_files_deleted,
                        r.bytes_deleted,
                        r.data_files,
                        r.metadata_bytes,
                        r.duration_ms
                    );
                    if r.metadata_files_not_ours > 0 {
                        println!(
                            "  {} stale metadata files left: they name another table at this table's location, or could not be read (the log names one)",
                            r.metadata_files_not_ours
                        );
                    }
                    match (&r.orphans, &r.orphans_error) {
                        (Some(o), _) if o.refused.is_some() => println!(
                            "  orphan sweep refused, nothing deleted: {}",
                            o.refused.as_deref().unwrap_or_default()
                        ),
                        (Some(o), _) => println!(
                            "  orphan sweep: {} files deleted ({} bytes), {} younger than maintenance.orphan_min_age left; {} Parquet and Avro files listed, {} files referenced, {} ms",
                            o.deleted,
                            o.bytes_deleted,
                            o.young,
                            o.listed,
                            o.referenced,
                            o.duration_ms
                        ),
                        (None, Some(e)) => println!("  orphan sweep failed: {e}"),
                        (None, None) => {}
                    }
                }
            }
            Ok(())
        }
        Command::Cost(args) => Ok(ticklake::tools::cost::run(&args)?),
        Command::Chaos(args) => match ticklake::tools::chaos::run(&args)? {
            true => Ok(()),
            false => std::process::exit(1),
        },
        Command::Status { config, json } => {
            let cfg = Config::load(config.as_deref())?;
            let url = format!("http://{}/status", cfg.http.listen);
            let body: serde_json::Value = ureq::get(&url)
                .call()
                .with_context(|| format!("no daemon answers at {url} (http.listen)"))?
                .body_mut()
                .read_json()
                .with_context(|| format!("{url} did not return JSON"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!("{}", ticklake::status::render(&body));
            }
            Ok(())
        }
        Command::Produce {
            config,
            feed,
            capture,
        } => {
            let cfg = Config::load(config.as_deref())?;
            let rt = multi_thread_runtime()?;
            rt.block_on(async move {
                let report = ticklake::tools::produce::produce(&cfg, &feed, &capture).await?;
                println!("{}", serde_json::to_string(&report)?);
                anyhow::Ok(())
            })
        }
    }
}

fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = Config::load(config.as_deref())?;
    // Outlives the actor system, so the engine is done with it when it goes.
    let _spill = ticklake::query::session::OwnSpill::of(&cfg);
    let sys = actix_system();
    let exit = sys.block_on(async move {
        let daemon = ticklake::daemon::start(cfg)
            .await
            .context("starting daemon")?;
        tracing::info!("ticklake running; ctrl-c to stop");
        anyhow::Ok(daemon.run_until_stopped().await?)
    })?;
    match exit {
        ticklake::daemon::Exit::Signal => Ok(()),
        ticklake::daemon::Exit::Fatal(reason) => {
            anyhow::bail!("daemon stopped after a permanent failure: {reason}")
        }
    }
}

/// A benchmark report as one JSON line, or as text.
fn print_report<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
