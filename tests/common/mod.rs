//! Shared harness for the black-box tests: the real `ticklake` binary, a
//! per-test data directory and per-test topics on the shared Tansu broker.
#![allow(dead_code)]

mod trade_ids;
// Not every test file uses these.
#[allow(unused_imports)]
pub use trade_ids::*;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ticklake")
}

/// The recorded captures shipped beside the repository.
pub fn capture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/captures")
        .join(name);
    assert!(p.exists(), "missing capture fixture {}", p.display());
    p
}

/// The real broker. Tests that need it fail loudly when it is missing;
/// `scripts/test.sh` starts Tansu and sets this.
pub fn tansu() -> String {
    std::env::var("TICKLAKE_TEST_BROKERS").expect(
        "TICKLAKE_TEST_BROKERS is not set: run the suite with scripts/test.sh, which starts Tansu",
    )
}

pub fn python() -> String {
    std::env::var("TICKLAKE_TEST_PYTHON")
        .expect("TICKLAKE_TEST_PYTHON is not set: run the suite with scripts/test.sh")
}

pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// A port for a server a test starts. Not one from `bind(0)`: the kernel
/// hands such a port, once released, to the next outgoing connection (the
/// suite opens many, to the broker and the daemons) as its local port, so
/// the server that was to bind it could find it taken. portpicker tries
/// random ports below the ephemeral range first, which no connection gets.
pub fn free_port() -> u16 {
    portpicker::pick_unused_port().expect("no free TCP and UDP port found")
}

/// A unique suffix so tests sharing one broker never share topics.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// One test's daemon configuration and data directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub http_port: u16,
    /// Prefix of this test's topics and consumer group.
    pub run: String,
}

impl Env {
    /// `extra` is TOML appended to a base config: brokers and topics unique
    /// to this test, a fresh data directory, fast writer flushes.
    pub fn new(brokers: &str, feed_url: Option<&str>, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let http_port = free_port();
        let run = unique("t");
        // Gaps in the trade ids are filled from the same local server
        // (`replay --rest`), never from the venue.
        let feed = match feed_url {
            Some(u) => format!(
                "enabled = true\nurl = \"{u}\"\nrest_url = \"{}\"\n",
                u.replacen("ws://", "http://", 1)
            ),
            None => "enabled = false\nrest_url = \"http://127.0.0.1:9\"\n".to_string(),
        };
        let body = format!(
            r#"data_dir = "{data}"

[kafka]
brokers = "{brokers}"
trades_topic_prefix = "{run}.trades"
dead_letter_topic = "{run}.dead_letters"
consumer_group = "{run}-lake"

[feeds.binance]
{feed}backoff_initial_ms = 100
backoff_max_ms = 1000

[writer]
max_rows = 500
max_age_ms = 300

[http]
listen = "127.0.0.1:{http_port}"
{extra}
"#,
            data = dir.path().join("data").display(),
        );
        // `extra` may reopen a table already present above; TOML forbids
        // that, so callers put whole sections in `extra` only for new tables
        // and use `set` for keys of existing ones.
        let config = dir.path().join("ticklake.toml");
        std::fs::write(&config, body).unwrap();
        Self {
            dir,
            config,
            http_port,
            run,
        }
    }

    /// Replaces `key = ...` in the config file (first occurrence after the
    /// `[section]` header).
    pub fn set(&self, section: &str, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mut out = Vec::new();
        let mut in_section = false;
        let mut done = false;
        for line in text.lines() {
            if line.starts_with('[') {
                if in_section && !done {
                    out.push(format!("{key} = {value}"));
                    done = true;
                }
                in_section = line.trim() == format!("[{section}]");
            }
            if in_section && !done && line.split('=').next().map(str::trim) == Some(key) {
                out.push(format!("{key} = {value}"));
                done = true;
                continue;
            }
            out.push(line.to_string());
        }
        if in_section && !done {
            out.push(format!("{key} = {value}"));
        }
        std::fs::write(&self.config, out.join("\n") + "\n").unwrap();
    }

    /// What lag tools see for the lake's consumer group on the trades
    /// topic, via `scripts/kafka_check.py lag` (confluent-kafka).
    pub fn group_lag(&self, brokers: &str) -> serde_json::Value {
        let out = Command::new(python())
            .arg(scripts_dir().join("kafka_check.py"))
            .args(["lag", brokers, &format!("{}-lake", self.run)])
            .arg(format!("{}.trades.binance", self.run))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lag: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The feed on the three symbols of the recorded capture, aggTrade.
    pub fn capture_feed(&self) {
        self.set("feeds.binance", "streams", r#"["aggTrade"]"#);
        self.set(
            "feeds.binance",
            "symbols",
            r#"["btcusdt", "ethusdt", "dotusdt"]"#,
        );
    }

    /// [`capture_feed`](Self::capture_feed), and one connection for the
    /// whole run: once the capture ends it must not
    /// reconnect and be served the capture again.
    pub fn one_pass_feed(&self) {
        self.capture_feed();
        self.set("feeds.binance", "backoff_initial_ms", "600000");
        self.set("feeds.binance", "backoff_max_ms", "600000");
        self.set("feeds.binance", "stale_after_secs", "600");
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    pub fn start_daemon(&self, name: &str) -> Proc {
        let log = std::fs::File::create(self.log_path(name)).unwrap();
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("TICKLAKE_LOG", "info,rdkafka=warn,ticklake=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Proc {
            child,
            log: self.log_path(name),
        };
        p.wait_http(self.http_port, Duration::from_secs(60));
        p
    }

    /// `ticklake query --format json` as run, with its output and status.
    pub fn query_output(&self, sql: &str) -> std::process::Output {
        Command::new(bin())
            .args(["query", "--format", "json", "--config"])
            .arg(&self.config)
            .arg(sql)
            .env("TICKLAKE_LOG", "warn")
            .output()
            .unwrap()
    }

    /// `ticklake query --format json`, one JSON object per row.
    pub fn query(&self, sql: &str) -> Vec<serde_json::Value> {
        let out = self.query_output(sql);
        assert!(
            out.status.success(),
            "query failed: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn count(&self, sql: &str) -> i64 {
        let rows = self.query(sql);
        let v = rows[0]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .clone();
        v.as_i64().unwrap()
    }

    /// Runs a pyiceberg script of `scripts/` on this test's lake (its SQL
    /// catalog and warehouse) with `args`, and returns its JSON output.
    pub fn pyiceberg(&self, script: &str, args: &[&str]) -> serde_json::Value {
        let data = self.data_dir();
        let uri = format!("sqlite:///{}/catalog.db", data.display());
        let warehouse = format!("file://{}/warehouse", data.display());
        let mut all = vec!["--catalog-uri", &uri, "--warehouse", &warehouse];
        all.extend_from_slice(args);
        pyiceberg(script, &all)
    }

    /// Asserts that the trades table holds `expected` rows, each message
    /// id once; `daemon`'s log tail explains a failure.
    pub fn assert_trades_once(&self, expected: i64, daemon: &Proc) {
        let r =
            self.query("select count(*) as n, count(distinct message_id) as d from market.trades");
        println!("market.trades: {} (expected {expected})", r[0]);
        assert_eq!(
            r[0]["n"].as_i64().unwrap(),
            expected,
            "log:\n{}",
            daemon.log_tail()
        );
        assert_eq!(r[0]["d"].as_i64().unwrap(), expected);
    }

    pub fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics").unwrap_or_default()
    }

    /// Sum of a counter over all label sets matching `filter`.
    pub fn counter(&self, name: &str, filter: &str) -> f64 {
        metric_sum(&self.metrics(), name, filter)
    }
}

pub fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Minimal HTTP/1.0 GET on loopback, enough for the daemon's endpoints.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

/// One HTTP/1.0 request with a JSON body on loopback: the status and the
/// JSON answer (`Null` when the body is not JSON).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// A tool of the Debian `prometheus` package (`prometheus`, `promtool`),
/// failing loudly when it is missing rather than skipping the test.
pub fn tool(name: &str) -> Command {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{name}` is not installed: install the Debian package `prometheus` (.ci/run does)"
    );
    Command::new(name)
}

/// A child process that is killed when dropped.
/// A Prometheus server on 127.0.0.1:`port` with the config file `cfg`,
/// its data and log in `dir`.
pub fn start_prometheus(dir: &Path, cfg: &Path, port: u16) -> Proc {
    let log = dir.join("prometheus.log");
    let child = tool("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc { child, log }
}

pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn wait_http(&self, port: u16, timeout: Duration) {
        let start = Instant::now();
        while http_get(port, "/healthz").is_none() {
            assert!(
                start.elapsed() < timeout,
                "daemon did not come up; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ticklake replay` on a free port; returns the process and its ws:// URL.
pub fn start_replay(captures: &[PathBuf], extra: &[&str]) -> (Proc, String) {
    start_replay_on("127.0.0.1:0", captures, extra)
}

/// [`start_replay`] on a given address: a test can point a daemon at the
/// replay before it plays, so a live timeline starts with the daemon
/// already there.
pub fn start_replay_on(listen: &str, captures: &[PathBuf], extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("replay");
    for c in captures {
        cmd.arg("--capture").arg(c);
    }
    cmd.args(["--listen", listen]).args(extra);
    let log = std::env::temp_dir().join(format!("{}.replay.log", unique("r")));
    spawn_server(cmd, log, "replay listening on ")
}

/// Starts `cmd` with its stderr in `log`, and reads the first line of its
/// stdout: `banner` followed by the address it serves, which is returned.
pub fn spawn_server(mut cmd: Command, log: PathBuf, banner: &str) -> (Proc, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let proc = Proc { child, log };
    let url = line
        .trim()
        .strip_prefix(banner)
        .unwrap_or_else(|| panic!("unexpected banner {line:?}; log:\n{}", proc.log_tail()))
        .to_string();
    (proc, url)
}

/// Polls `f` until it returns true.
pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    wait_until_explained(f, timeout, || format!("timed out waiting for {what}"));
}

/// [`wait_until`], failing with what `explain` says when `timeout` passes
/// (the logs of the processes concerned, say: they are gone with the
/// test's directories).
pub fn wait_until_explained(
    mut f: impl FnMut() -> bool,
    timeout: Duration,
    explain: impl FnOnce() -> String,
) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() >= timeout {
            panic!("{}", explain());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Ground truth, read straight from a capture without ticklake's parser:
/// every received frame whose event type is `trade` or `aggTrade`.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthTrade {
    pub kind: String,
    pub symbol: String,
    pub id: i64,
    pub price: String,
    pub quantity: String,
    pub buyer_is_maker: bool,
    pub time_ms: i64,
}

pub fn truth(frames: &[String]) -> Vec<TruthTrade> {
    let mut out = Vec::new();
    for f in frames {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(f) else {
            continue;
        };
        let d = v.get("data").unwrap_or(&v);
        let kind = d.get("e").and_then(|e| e.as_str()).unwrap_or("");
        if kind != "trade" && kind != "aggTrade" {
            continue;
        }
        let id_field = if kind == "trade" { "t" } else { "a" };
        out.push(TruthTrade {
            kind: kind.to_string(),
            symbol: d["s"].as_str().unwrap().to_string(),
            id: d[id_field].as_i64().unwrap(),
            price: d["p"].as_str().unwrap().to_string(),
            quantity: d["q"].as_str().unwrap().to_string(),
            buyer_is_maker: d["m"].as_bool().unwrap(),
            time_ms: d["T"].as_i64().unwrap(),
        });
    }
    out
}

/// The two recorded Binance captures (Binance and Binance.US, `trade` and
/// `aggTrade`) the end-to-end tests store: their trades, read here from the
/// frames, and a replay serving them (its URL for the feed).
pub fn replay_two_captures() -> (Vec<TruthTrade>, Proc, String) {
    let caps = [
        capture("BINANCE-ee25be.0.txt"),
        capture("BINANCE_US.ws.1.0.txt"),
    ];
    let frames: Vec<String> = caps.iter().flat_map(|c| received_frames(c)).collect();
    let truth = truth(&frames);
    assert!(truth.len() > 1900, "captures hold {} trades", truth.len());
    let (replay, url) = start_replay(&caps, &[]);
    (truth, replay, url)
}

/// Starts `env`'s daemon on [`replay_two_captures`]' streams and symbols and
/// waits until `expected` trades are committed; then stops the replay and
/// gives a late duplicate (a reconnect overlap) 2 s to show up.
pub fn store_two_captures(env: &Env, mut replay: Proc, expected: i64) -> Proc {
    env.set("feeds.binance", "streams", r#"["trade", "aggTrade"]"#);
    env.set(
        "feeds.binance",
        "symbols",
        r#"["btcusdt", "ethusdt", "dotusdt", "compusdt", "crvusdt", "omgbusd", "zrxusdt"]"#,
    );
    let daemon = env.start_daemon("daemon");
    wait_until("all trades committed", Duration::from_secs(180), || {
        env.count("select count(*) from market.trades") >= expected
    });
    replay.kill();
    std::thread::sleep(Duration::from_secs(2));
    daemon
}

/// Asserts that `market.trades` holds each of `truth`'s Binance trades
/// once, with its frame's price, quantity, side and time.
pub fn assert_lake_holds_frames(env: &Env, truth: &[TruthTrade]) {
    let stored = env.query(
        "select symbol, trade_id, cast(price as varchar) as price, cast(quantity as varchar) as quantity, \
         side, cast(\"timestamp\" as bigint) as ts, exchange from market.trades",
    );
    let mut by_key: BTreeMap<(String, String), &serde_json::Value> = BTreeMap::new();
    for r in &stored {
        let key = (
            r["symbol"].as_str().unwrap().to_string(),
            r["trade_id"].as_str().unwrap().to_string(),
        );
        assert!(by_key.insert(key, r).is_none(), "duplicate row {r}");
    }
    for t in truth {
        let key = (t.symbol.clone(), format!("BINANCE-{}", t.id));
        let r = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("trade {key:?} missing"));
        assert_eq!(r["price"].as_str().unwrap(), dec8(&t.price), "{key:?}");
        assert_eq!(
            r["quantity"].as_str().unwrap(),
            dec8(&t.quantity),
            "{key:?}"
        );
        let side = if t.buyer_is_maker { "SELL" } else { "BUY" };
        assert_eq!(r["side"].as_str().unwrap(), side, "{key:?}");
        assert_eq!(r["ts"].as_i64().unwrap(), t.time_ms * 1000, "{key:?}");
        assert_eq!(r["exchange"].as_str().unwrap(), "BINANCE");
    }
}

/// Normalizes a decimal string to 8 places, independently of ticklake.
pub fn dec8(s: &str) -> String {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut frac = frac.to_string();
    assert!(frac.trim_end_matches('0').len() <= 8, "{s}");
    frac.truncate(8.min(frac.len()));
    while frac.len() < 8 {
        frac.push('0');
    }
    let int = int.trim_start_matches('0');
    format!("{}.{}", if int.is_empty() { "0" } else { int }, frac)
}

/// Received frames of a recorder-format-1 capture, read here by hand so the
/// ground truth does not come from ticklake's own capture reader.
pub fn received_frames(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (ts, rest) = l.split_once(": ")?;
            ts.parse::<f64>().ok()?;
            Some(rest.to_string())
        })
        .collect()
}

/// Connects a WebSocket client and collects every text frame until the
/// server closes.
pub fn collect_text_frames(url: &str) -> Vec<String> {
    use futures::StreamExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut got = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() {
                got.push(m.into_text().unwrap().to_string());
            }
        }
        got
    })
}

/// The test database. Tests that need it fail loudly when it is missing;
/// `scripts/test.sh` and `.ci/run` start one (`scripts/postgres.sh`).
pub fn postgres_uri() -> String {
    std::env::var("TICKLAKE_TEST_POSTGRES_URI").expect(
        "TICKLAKE_TEST_POSTGRES_URI is not set: run the suite with scripts/test.sh, which starts PostgreSQL (scripts/postgres.sh)",
    )
}

/// The same database as SQLAlchemy (pyiceberg's SqlCatalog) names it.
pub fn sqlalchemy_uri(uri: &str) -> String {
    let rest = uri
        .strip_prefix("postgres://")
        .or_else(|| uri.strip_prefix("postgresql://"))
        .expect("a postgres:// URI");
    format!("postgresql+psycopg2://{rest}")
}

/// `ticklake produce` of `capture` with `config`: its JSON report (the
/// `trades` it published among others); fails the test if it fails.
pub fn produce(config: &Path, capture: &Path) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["produce", "--config"])
        .arg(config)
        .arg("--capture")
        .arg(capture)
        .env("TICKLAKE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `scripts/rest_catalog.py` (an Iceberg REST catalog server on pyiceberg's
/// SQL catalog) on a free port, its catalog and warehouse under `dir`, with
/// `extra` arguments (`--credential`, `--prefix`); returns the process and
/// its base URL. Fails loudly without the test virtualenv.
pub fn start_rest_catalog(dir: &Path, extra: &[&str]) -> (Proc, String) {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(scripts_dir().join("rest_catalog.py"))
        .arg("--dir")
        .arg(dir)
        .args(extra);
    spawn_server(
        cmd,
        dir.join("rest_catalog.log"),
        "rest catalog listening on ",
    )
}

/// `ticklake maintain --json` on `config`, which must succeed: its
/// reports, one per table.
pub fn maintain_reports(config: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .args(["maintain", "--json", "--config"])
        .arg(config)
        .env("TICKLAKE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "maintain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts that `reports` (of [`maintain_reports`]) cover the daemon's
/// four tables, in order.
pub fn assert_every_table(reports: &[serde_json::Value]) {
    let tables: Vec<&str> = reports
        .iter()
        .map(|r| r["table"].as_str().unwrap())
        .collect();
    assert_eq!(
        tables,
        [
            "market.trades",
            "market.dead_letters",
            "market.gaps",
            "market.ohlcv_1m"
        ]
    );
}

/// Six small commits, then four catalog clients appending five trades
/// each while a maintenance run of `cfg` compacts among them: the run's
/// compaction replaced at least two files (or gave up for the round,
/// writers winning every swap: counted, never a loss), and every append is
/// in the table. Returns the run.
pub async fn appends_among_a_maintenance_run(
    cfg: &ticklake::config::Config,
) -> ticklake::actors::maintenance::Run {
    use ticklake::lake::{self, TableKind};
    let catalog = lake::open_catalog(cfg).await.unwrap();
    for kind in [TableKind::Trades, TableKind::DeadLetters] {
        lake::ensure_table(catalog.as_ref(), cfg, kind)
            .await
            .unwrap();
    }
    let ident = lake::table_ident(cfg, TableKind::Trades);
    append_trades(cfg, catalog.as_ref(), 6, 0).await;
    let job = std::sync::Arc::new(
        ticklake::actors::maintenance::Job::from_config(cfg, catalog.clone())
            .await
            .unwrap(),
    );
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let cfg = cfg.clone();
        writers.push(tokio::spawn(async move {
            let catalog = lake::open_catalog(&cfg).await.unwrap();
            append_trades(&cfg, catalog.as_ref(), 5, 1000 * (w + 1)).await;
        }));
    }
    let run = tokio::spawn(async move { job.run().await });
    for w in writers {
        w.await.unwrap();
    }
    let run = run.await.unwrap();
    let trades = run.results[0].as_ref().expect("the trades table's run");
    match (&trades.compaction, &trades.compaction_error) {
        (Some(c), None) => {
            println!(
                "compaction: {} files replaced, {} written, {} attempts",
                c.files_replaced, c.files_written, c.attempts
            );
            assert!(c.files_replaced >= 2, "{c:?}");
            assert!(c.snapshot_id.is_some(), "{c:?}");
        }
        (_, Some(e)) if e.contains("gave up this run") => {
            println!("compaction gave up this round: {e}")
        }
        other => panic!("compaction: {other:?}"),
    }
    assert_eq!(rows(catalog.as_ref(), &ident).await, 6 + 4 * 5);
    run
}

/// Rows of `ident`'s current snapshot, through the catalog.
pub async fn rows(catalog: &dyn iceberg::Catalog, ident: &iceberg::TableIdent) -> usize {
    use futures::TryStreamExt;
    let table = catalog.load_table(ident).await.unwrap();
    let batches: Vec<_> = table
        .scan()
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    batches.iter().map(|b| b.num_rows()).sum()
}

/// One trade per commit, `n` commits from `from`, through `catalog`, on
/// 14 November 2023.
pub async fn append_trades(
    cfg: &ticklake::config::Config,
    catalog: &dyn iceberg::Catalog,
    n: i64,
    from: i64,
) {
    append_trades_at(cfg, catalog, n, from, 1_700_000_000_000_000).await
}

/// [`append_trades`] with trade `i` at `at_us + i` (UTC µs).
pub async fn append_trades_at(
    cfg: &ticklake::config::Config,
    catalog: &dyn iceberg::Catalog,
    n: i64,
    from: i64,
    at_us: i64,
) {
    let ident = ticklake::lake::table_ident(cfg, ticklake::lake::TableKind::Trades);
    for i in from..from + n {
        let table = catalog.load_table(&ident).await.unwrap();
        let schema =
            ticklake::lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
        let sym = if i % 2 == 0 { "ETHUSDT" } else { "BTCUSDT" };
        let t = [ticklake::model::TradeV2::builder("X", sym, &i.to_string(), at_us + i).build()];
        let batch = ticklake::lake::batch::trades_batch(&schema, &t).unwrap();
        let mut offsets = ticklake::lake::commit::KafkaOffsets {
            cluster_id: "c".into(),
            ..Default::default()
        };
        offsets.set("t", 0, i + 1);
        // Another writer's commit (or compaction's) can win every one of
        // Iceberg's own retries (`commit.retry.num-retries`, 4) while
        // several writers commit at once on a loaded machine; a conflict
        // commits nothing, so the writer plans again, as the daemon's does.
        let mut conflicts = 0;
        loop {
            match ticklake::lake::commit::append(catalog, &ident, Some(&batch), &offsets, 1 << 20)
                .await
            {
                Ok(_) => break,
                Err(e) if ticklake::lake::commit::is_conflict(&e) && conflicts < 20 => {
                    conflicts += 1;
                }
                Err(e) => panic!("append {i} after {conflicts} lost commits: {e}"),
            }
        }
    }
}

/// The test S3 server's credentials and region (it takes any).
pub const S3_ACCESS_KEY: &str = "ticklake-test";
pub const S3_SECRET_KEY: &str = "ticklake-test-secret";
pub const S3_REGION: &str = "us-east-1";

/// The S3 server. Tests that need it fail loudly when it is missing.
pub fn s3_endpoint() -> String {
    std::env::var("TICKLAKE_TEST_S3_ENDPOINT").expect(
        "TICKLAKE_TEST_S3_ENDPOINT is not set: run the suite with scripts/test.sh after \
         `scripts/s3.sh start DIR` (as .ci/run does)",
    )
}

pub fn bucket() -> String {
    std::env::var("TICKLAKE_TEST_S3_BUCKET").unwrap_or_else(|_| "ticklake".into())
}

/// Runs the pyiceberg script `script` of `scripts/` with `args`, which
/// must succeed, and returns its JSON output.
pub fn pyiceberg(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(scripts_dir().join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
