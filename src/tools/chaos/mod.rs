//! `ticklake chaos`: runs the daemon as a child process against a venue of
//! its own (generated Binance trades over tiers 1-3, with REST history),
//! breaks it on a timeline — overload, broker outage and slowness, a slow
//! then failing object store, kill -9 and restart — while a live view
//! shows what it does, and then proves per exchange and tier that every
//! trade offered is in the lake or was shed (tiers 2-3 only), dead-lettered
//! or dropped as a second copy, checking the lake by query. Exit non-zero
//! naming each check that failed.
//!
//! The orchestrator is its own process so that the daemon can be killed
//! for real (SIGKILL of the child) and restarted on the same data
//! directory. Faults inside the daemon (the embedded broker lives in its
//! process) go through its `/chaos/*` admin endpoint (`[chaos] admin`).

mod daemon;
mod proof;
mod report;
pub mod source;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use daemon::Daemon;
use source::Timeline;
use watch::{SAMPLE_EVERY, Watch, level_n};

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("daemon: {0}")]
    Daemon(String),
    #[error("unknown scenario {0:?}; one of {SCENARIOS:?} or all")]
    Scenario(String),
    #[error("the data directory {0} is not empty; give a fresh --data-dir")]
    DataDir(PathBuf),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error("broker command {command:?} failed: {detail}")]
    BrokerCommand { command: String, detail: String },
}

/// The faults, in the order `all` runs them.
pub const SCENARIOS: [&str; 5] = ["overload", "broker", "store", "kill", "none"];

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// The faults to inject: overload, broker (outage, then added
    /// round-trip time), store (slow, then failing commits), kill (kill -9
    /// and restart), none (just the measurement and the proof), or all;
    /// several may be given comma-separated.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Seconds each fault lasts (the recovery after it is waited for).
    #[arg(long, default_value_t = 6)]
    pub seconds: u64,
    /// Write timeline.json and timeline.svg here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The daemon's data directory; must be empty or absent (default: a
    /// fresh directory under the report directory, or the system's temp).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Symbols the venue trades (at least 3 tier-1, 6 tier-2, the rest tier 3).
    #[arg(long, default_value_t = 21)]
    pub symbols: usize,
    /// The highest rate the measurement tries, trades/s: it doubles from
    /// 250 until the level leaves NORMAL or the feed falls behind.
    #[arg(long, default_value_t = 16000)]
    pub max_rate: u64,
    /// The object store's time per committed row for the whole run, µs
    /// (`chaos.writer_delay_us_per_row`). A real store bounds what the
    /// lake takes; the default (200: a few thousand rows/s) keeps the
    /// sustainable rate, and so the 5x overload, within what the venue can
    /// offer on one core, on a debug or a release build alike. 0: none.
    #[arg(long, default_value_t = 200)]
    pub store_delay_us: u64,
    /// A real broker instead of the embedded one (bootstrap servers).
    #[arg(long, env = "TICKLAKE_KAFKA__BROKERS")]
    pub brokers: Option<String>,
    /// With a real broker: a command run by `sh -c` as `CMD stop` and
    /// `CMD start` to take it down and bring it back; a `{}` in it is
    /// replaced by the verb instead (`docker stop {}`-style commands).
    #[arg(long)]
    pub broker_command: Option<String>,
    /// No live view (the proof and the report still print).
    #[arg(long)]
    pub quiet: bool,
    /// Test only: one tier-1 trade is counted as offered but never sent,
    /// on the stream or by REST; the proof must fail and name the check.
    #[arg(long, hide = true)]
    pub drop_one_tier1: bool,
}

/// The symbols: tier 1 and 2 from the built-in instruments, the rest made
/// up (unknown symbols are tier 3).
fn symbols(n: usize) -> Vec<String> {
    let mut s: Vec<String> = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
        .iter()
        .chain(&[
            "DOGEUSDT", "ADAUSDT", "TRXUSDT", "AVAXUSDT", "LINKUSDT", "DOTUSDT",
        ])
        .map(|s| s.to_string())
        .collect();
    let mut k = 0;
    while s.len() < n.max(12) {
        s.push(format!("CHX{k:03}USDT"));
        k += 1;
    }
    s
}

fn tier_of(instruments: &crate::instruments::Instruments, symbol: &str) -> String {
    instruments.tier("BINANCE", symbol).label().to_string()
}

/// Runs the scenario; `Ok(false)` when a check failed (exit non-zero).
pub fn run(args: &ChaosArgs) -> Result<bool, ChaosError> {
    let wanted: Vec<&str> = if args.scenario == "all" {
        SCENARIOS[..4].to_vec()
    } else {
        let mut w = Vec::new();
        for s in args.scenario.split(',').map(str::trim) {
            let s = SCENARIOS
                .iter()
                .find(|k| **k == s)
                .ok_or_else(|| ChaosError::Scenario(s.into()))?;
            w.push(*s);
        }
        w
    };
    let io = |what| move |source| ChaosError::Io { what, source };
    let data_dir = match (&args.data_dir, &args.report) {
        (Some(d), _) => d.clone(),
        (None, Some(r)) => r.join("data"),
        (None, None) => std::env::temp_dir().join(format!("ticklake-chaos-{}", std::process::id())),
    };
    if std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ChaosError::DataDir(data_dir));
    }
    std::fs::create_dir_all(&data_dir).map_err(io("creating the data directory"))?;
    let data_dir = data_dir
        .canonicalize()
        .map_err(io("resolving the data directory"))?;
    let instruments = crate::instruments::Instruments::builtin()
        .map_err(|e| ChaosError::Daemon(e.to_string()))?;
    let syms = symbols(args.symbols);
    // The dropped trade: the first tier-1 symbol's 101st trade, far
    // enough in that the stream is flowing.
    let dropped = args.drop_one_tier1.then_some(100 * syms.len() as u64);
    let tl = Arc::new(Timeline::new(syms.clone(), dropped));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(ChaosError::Runtime)?;
    let (ws, rest) = rt.block_on(source::start(tl.clone()))?;
    let port = daemon::free_port()?;
    let config = data_dir.join("chaos.toml");
    std::fs::write(
        &config,
        daemon::config_text(
            &data_dir,
            port,
            &ws.to_string(),
            &rest.to_string(),
            &syms,
            args.brokers.as_deref(),
            args.store_delay_us,
        ),
    )
    .map_err(io("writing the daemon's config"))?;
    let log = data_dir.join("daemon.log");
    println!(
        "ticklake chaos: scenario {}, {} s per fault; venue ws://{ws} (REST http://{rest}), {} symbols; daemon on 127.0.0.1:{port}, data {}, log {}",
        wanted.join(","),
        args.seconds,
        syms.len(),
        data_dir.display(),
        log.display()
    );
    let mut d = Daemon::new(config, log, format!("127.0.0.1:{port}"));
    let mut w = Watch::new(tl.clone(), args.quiet);
    let mut c = Chaos {
        args,
        d: &mut d,
        w: &mut w,
        tl: tl.clone(),
        peak_level: BTreeMap::new(),
    };
    let outcome = c.run(&wanted);
    c.w.finish_view();
    let (sustainable, overload) = match outcome {
        Ok(r) => r,
        Err(e) => {
            d.stop(Duration::from_secs(30));
            return Err(e);
        }
    };
    let peak_level = c.peak_level.clone();
    // The proof, from the settled daemon and the lake.
    let mut p = prove(&d, &w, &tl, &instruments)?;
    let settled = w
        .last_status
        .as_ref()
        .is_some_and(|s| s["accounting_settled"] == true);
    p.check(
        "daemon.settled",
        settled,
        "the daemon's own identity balances down to the lake (accounting_settled)",
    );
    if wanted.contains(&"overload") {
        let peak = peak_level.get("overload").copied().unwrap_or(0);
        p.check(
            "overload.degraded",
            peak >= 1,
            format!(
                "{overload}/s offered (5x the measured {sustainable}/s) raised the level to {peak} (0 NORMAL)"
            ),
        );
    }
    let exit = d.stop(Duration::from_secs(60));
    p.check(
        "daemon.graceful_stop",
        exit.is_some_and(|e| e.success()),
        format!("SIGTERM at the end: {exit:?}"),
    );
    let backfilled: u64 = w
        .last_status
        .as_ref()
        .and_then(|s| s["tree"]["children"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n["gaps"]["backfilled_trades"].as_u64())
        .sum();
    println!(
        "\nvenue: {} trades generated, {} sent on the stream, {} malformed and {} duplicate frames, {} REST requests answered; daemon: {} runs, {} trades filled from REST in its last run",
        tl.head(),
        tl.sent_trades.load(Ordering::Relaxed),
        tl.sent_malformed.load(Ordering::Relaxed),
        tl.sent_duplicates.load(Ordering::Relaxed),
        tl.rest_requests.load(Ordering::Relaxed),
        d.runs,
        backfilled
    );
    println!("\n{}", p.render());
    if let Some(dir) = &args.report {
        report::write(
            dir,
            &report::Report {
                scenario: &wanted.join(","),
                sustainable_rate: sustainable,
                overload_rate: overload,
                daemon_runs: d.runs,
                samples: &w.samples,
                faults: &w.faults,
                proof: &p,
                passed: p.passed(),
            },
        )?;
        println!(
            "report: {} and {}",
            dir.join("timeline.svg").display(),
            dir.join("timeline.json").display()
        );
    }
    if args.data_dir.is_none() && args.report.is_none() && p.passed() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(p.passed())
}

/// The lake by query and the daemon's counters, against the venue.
fn prove(
    d: &Daemon,
    w: &Watch,
    tl: &Timeline,
    instruments: &crate::instruments::Instruments,
) -> Result<proof::Proof, ChaosError> {
    let mut offered: BTreeMap<String, u64> = BTreeMap::new();
    for (sym, n) in tl.offered_per_symbol() {
        *offered.entry(tier_of(instruments, &sym)).or_default() += n;
    }
    let num = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    };
    let rows = d.sql(
        "select symbol, count(*) as n, count(distinct message_id) as d \
         from market.trades where exchange = 'BINANCE' group by symbol",
    )?;
    let mut lake: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &rows {
        let tier = tier_of(instruments, r["symbol"].as_str().unwrap_or_default());
        let e = lake.entry(tier).or_default();
        e.0 += num(&r["d"]);
        e.1 += num(&r["n"]);
    }
    let dl = d.sql("select count(*) as n from market.dead_letters")?;
    let dead_letters = dl.first().map_or(0, |r| num(&r["n"]));
    let daemon: BTreeMap<String, (u64, u64)> = w
        .totals()
        .into_iter()
        .filter(|((ex, _), _)| ex == "BINANCE")
        .map(|((_, tier), c)| (tier, (c.shed, c.deduplicated)))
        .collect();
    // Duplicates were sent of every symbol alike; split by the symbols'
    // share (the venue repeats trade `i - S` after trade `i`, so each
    // symbol in turn), counted exactly from the indices.
    let duplicates = duplicates_per_tier(tl, instruments);
    Ok(proof::build(&proof::Inputs {
        exchange: "BINANCE",
        offered: &offered,
        duplicates: &duplicates,
        lake: &lake,
        daemon: &daemon,
        malformed_sent: tl.sent_malformed.load(Ordering::Relaxed),
        dead_letters_in_lake: dead_letters,
    }))
}

fn duplicates_per_tier(
    tl: &Timeline,
    instruments: &crate::instruments::Instruments,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (sym, n) in tl.duplicates_per_symbol() {
        *out.entry(tier_of(instruments, &sym)).or_default() += n;
    }
    out
}

/// The run in progress.
struct Chaos<'a> {
    args: &'a ChaosArgs,
    d: &'a mut Daemon,
    w: &'a mut Watch,
    tl: Arc<Timeline>,
    /// The highest level seen per phase.
    peak_level: BTreeMap<String, u8>,
}

impl Chaos<'_> {
    fn say(&mut self, msg: &str) {
        self.w.finish_view();
        println!("[{:>6.1}s] {msg}", self.w.now());
    }

    fn phase(&mut self, name: &str) {
        self.w.phase = name.into();
        self.say(&format!("phase {name}"));
    }

    /// One sample (and the view), then sleep to the next.
    fn tick(&mut self) {
        let s = self.d.status();
        if let Some(st) = &s {
            let l = level_n(st["level"].as_str().unwrap_or(""));
            let e = self.peak_level.entry(self.w.phase.clone()).or_default();
            *e = (*e).max(l);
        }
        self.w.sample(s);
        std::thread::sleep(SAMPLE_EVERY);
    }

    fn hold(&mut self, d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            self.tick();
        }
    }

    /// Samples until `done` holds on a fresh `/status` twice in a row
    /// (lag is read from watermarks, and one sample can be stale) or
    /// `timeout` passes. `done` also gets the backlog: trades the feed
    /// read that are neither in the lake nor shed, over all runs.
    fn until(&mut self, timeout: Duration, done: impl Fn(&Value, &Timeline, u64) -> bool) -> bool {
        let start = Instant::now();
        let mut in_a_row = 0;
        while start.elapsed() < timeout {
            self.tick();
            let Some(last) = self.w.samples.last() else {
                continue;
            };
            let backlog = self
                .tl
                .cursor
                .load(Ordering::Relaxed)
                .saturating_sub(last.stored + last.shed);
            let ok = last.daemon_up
                && self
                    .w
                    .last_status
                    .as_ref()
                    .is_some_and(|s| done(s, &self.tl, backlog));
            in_a_row = if ok { in_a_row + 1 } else { 0 };
            if in_a_row >= 2 {
                return true;
            }
        }
        false
    }

    /// Back to calm: the feed caught up with the venue, the lake with the
    /// feed (at most two seconds behind), the level NORMAL, the breaker
    /// closed and the spill log empty. The kill relies on it: a trade shed
    /// past the lake's newest id of its symbol would come back by REST
    /// after the restart and be stored after all.
    fn recover(&mut self, what: &str, timeout: Duration) {
        self.phase(&format!("{what}-recovery"));
        let rate = self.tl.rate().max(250);
        // Across a kill the sum no longer closes by itself (what the killed
        // run committed after its last sample is counted by none), and
        // nothing after the kill relies on it.
        let one_run = self.d.runs <= 1;
        let ok = self.until(timeout, |s, tl, backlog| {
            tl.cursor.load(Ordering::Relaxed) + 50 >= tl.head()
                && (backlog <= rate * 2 || !one_run)
                && s["level"] == "NORMAL"
                && s["spill"]["pending"].as_u64() == Some(0)
                && watch::lag(s) < 2000
        });
        if !ok {
            self.say(&format!(
                "{what}: not back to calm within {timeout:?}; going on"
            ));
        }
    }

    fn run(&mut self, wanted: &[&str]) -> Result<(u64, u64), ChaosError> {
        self.phase("start");
        self.d.spawn()?;
        self.d
            .wait_ready(Duration::from_secs(120), &self.tl.connected)?;
        let sustainable = self.measure();
        let overload = sustainable * 5;
        self.tl.stop_extras();
        let calm = (sustainable / 2).max(100);
        self.tl.set_rate(calm);
        self.recover("measure", Duration::from_secs(30));
        let n = Duration::from_secs(self.args.seconds);
        for s in wanted {
            match *s {
                "overload" => {
                    self.phase("overload");
                    self.w.fault_start(&format!("overload {overload}/s"));
                    self.tl.set_rate(overload);
                    self.hold(n);
                    self.tl.set_rate(calm);
                    self.w.fault_end();
                    // The peak of the recovery counts for the overload.
                    self.recover("overload", Duration::from_secs(90));
                    let rec = self
                        .peak_level
                        .get("overload-recovery")
                        .copied()
                        .unwrap_or(0);
                    let e = self.peak_level.entry("overload".into()).or_default();
                    *e = (*e).max(rec);
                }
                "broker" => self.broker(n)?,
                "store" => {
                    self.phase("store-slow");
                    self.w.fault_start("slow store");
                    let slow = (self.args.store_delay_us * 8).max(1500);
                    self.d.inject(&format!("writer?delay_us_per_row={slow}"))?;
                    self.hold(n);
                    self.w.fault_end();
                    self.phase("store-failing");
                    self.w.fault_start("failing commits");
                    self.d.inject(&format!(
                        "writer?delay_us_per_row={}&fail_trade_commits=3",
                        self.args.store_delay_us
                    ))?;
                    self.hold(n);
                    self.d.inject("writer?fail_trade_commits=0")?;
                    self.w.fault_end();
                    self.recover("store", Duration::from_secs(60));
                }
                "kill" => {
                    self.phase("kill");
                    self.hold(Duration::from_secs(2));
                    self.w.fault_start("kill -9");
                    self.d.kill9()?;
                    self.w.run_ended();
                    // The old session notices the reset on its own; ready
                    // means the new daemon's feed, not the old one's.
                    self.tl.connected.store(false, Ordering::Relaxed);
                    self.say("daemon SIGKILLed; restarting on the same data directory");
                    self.hold(Duration::from_secs(1));
                    self.d.spawn()?;
                    self.d
                        .wait_ready(Duration::from_secs(120), &self.tl.connected)?;
                    self.w.fault_end();
                    self.hold(n);
                    self.recover("kill", Duration::from_secs(60));
                }
                _ => {}
            }
        }
        self.phase("drain");
        self.tl.set_rate(0);
        let settled = self.until(Duration::from_secs(180), |s, tl, _| {
            tl.cursor.load(Ordering::Relaxed) >= tl.head()
                && s["accounting_settled"] == true
                && s["level"] == "NORMAL"
                && s["spill"]["pending"].as_u64() == Some(0)
                && no_open_gaps(s)
        });
        if !settled {
            self.say("the daemon did not settle within 180 s");
        }
        // Settled twice in a row, a second apart: nothing still arriving.
        self.hold(Duration::from_secs(2));
        self.phase("proof");
        Ok((sustainable, overload))
    }

    /// The sustainable NORMAL rate: doubles from 250/s, 4 s a step, until
    /// the level leaves NORMAL or the pipeline falls behind the venue (the
    /// feed, the lake or the lag); the last step that kept up.
    fn measure(&mut self) -> u64 {
        self.phase("measure");
        let mut good = 0;
        let mut rate = 250;
        while rate <= self.args.max_rate {
            self.tl.set_rate(rate);
            let head0 = self.tl.head();
            let cur0 = self.tl.cursor.load(Ordering::Relaxed);
            let before = self.peak_level.remove("measure");
            self.hold(Duration::from_secs(4));
            let stored = self.w.samples.last().map_or(0, |x| x.stored);
            let peak = self.peak_level.get("measure").copied().unwrap_or(0);
            let offered = self.tl.head() - head0;
            let delivered = self.tl.cursor.load(Ordering::Relaxed) - cur0;
            // Kept up end to end: the feed read what was offered, and what
            // it read is in the lake but for at most four seconds' worth:
            // the sample's age (0.5 s), a commit every second, the commit
            // itself, and room for a machine busy with other work (two
            // seconds' worth failed a step that kept up, on a loaded test
            // machine, and the 5x overload then raised no level). A
            // writer that cannot keep up leaves a backlog that grows every
            // step, even while the consumer still reads on into its buffer.
            let backlog = self
                .tl
                .cursor
                .load(Ordering::Relaxed)
                .saturating_sub(stored);
            let kept_up = delivered * 10 >= offered * 9 && backlog <= rate * 4;
            self.say(&format!(
                "measure {rate}/s: offered {offered}, delivered {delivered}, not yet stored {backlog}, level peak {peak}"
            ));
            if let Some(b) = before {
                let e = self.peak_level.entry("measure".into()).or_default();
                *e = (*e).max(b);
            }
            if peak > 0 || !kept_up {
                break;
            }
            good = rate;
            rate *= 2;
        }
        let sustainable = if good == 0 { 125 } else { good };
        self.say(&format!("sustainable NORMAL rate: {sustainable} trades/s"));
        sustainable
    }

    /// Broker outage, then slowness: the embedded broker through the admin
    /// endpoint, a real one through `--broker-command`.
    fn broker(&mut self, n: Duration) -> Result<(), ChaosError> {
        let embedded = self.args.brokers.is_none();
        if !embedded && self.args.broker_command.is_none() {
            self.say("broker: a real broker and no --broker-command; skipped");
            return Ok(());
        }
        self.phase("broker-outage");
        self.w.fault_start("broker down");
        if embedded {
            self.d.inject("broker/down")?;
        } else {
            self.broker_command("stop")?;
        }
        self.hold(n);
        if embedded {
            self.d.inject("broker/up")?;
        } else {
            self.broker_command("start")?;
        }
        self.w.fault_end();
        self.recover("broker-outage", Duration::from_secs(90));
        if embedded {
            self.phase("broker-slow");
            self.w.fault_start("broker +300ms rtt");
            self.d.inject("broker/rtt?ms=300")?;
            self.hold(n);
            self.d.inject("broker/rtt?ms=0")?;
            self.w.fault_end();
            self.recover("broker-slow", Duration::from_secs(60));
        }
        Ok(())
    }

    fn broker_command(&mut self, verb: &str) -> Result<(), ChaosError> {
        let Some(cmd) = &self.args.broker_command else {
            return Ok(());
        };
        let full = if cmd.contains("{}") {
            cmd.replace("{}", verb)
        } else {
            format!("{cmd} {verb}")
        };
        self.say(&format!("running {full:?}"));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&full)
            .output()
            .map_err(|e| ChaosError::BrokerCommand {
                command: full.clone(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(ChaosError::BrokerCommand {
                command: full,
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }
}

/// No feed has a gap still open (waiting for late ids or for REST).
fn no_open_gaps(s: &Value) -> bool {
    s["tree"]["children"].as_array().is_none_or(|c| {
        c.iter()
            .all(|n| n["gaps"]["open"].as_u64().unwrap_or(0) == 0)
    })
}
