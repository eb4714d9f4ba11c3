//! Acceptance E of the degradation work: `/status` and `ticklake status`
//! show the supervision tree and the level, `promtool check metrics` is
//! clean on `/metrics`, and a real Prometheus server scrapes it.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn status(env: &Env) -> Value {
    serde_json::from_str(&http_get(env.http_port, "/status").expect("/status answers")).unwrap()
}

/// A daemon on the embedded cluster fed the recorded capture, settled.
fn ingested() -> (Env, Proc, Proc, u64) {
    let cap = capture("BINANCE-ee25be.0.txt");
    let trades = truth(&received_frames(&cap)).len() as u64;
    // The daemon starts first, on the address the replay will take: the
    // live timeline (about 9 s) starts with the replay, and a daemon that
    // came up after it ended, as one did on a loaded machine, would wait
    // for frames that never come. Until the replay listens the feed retries
    // at most a second apart (the test config's backoff cap).
    let listen = format!("127.0.0.1:{}", free_port());
    let env = Env::new("embedded", Some(&format!("ws://{listen}")), "");
    env.capture_feed();
    let daemon = env.start_daemon("daemon");
    // --live: a reconnect gets only new frames, so the counts stay exact.
    let (replay, _) = start_replay_on(&listen, &[cap], &["--live", "--rate", "500"]);
    wait_until_explained(
        || {
            status(&env)["accounting"].as_array().is_some_and(|a| {
                a.iter()
                    .map(|r| r["received"].as_u64().unwrap())
                    .sum::<u64>()
                    > 0
            })
        },
        Duration::from_secs(60),
        || {
            format!(
                "no frame received in 60 s; daemon log:\n{}\nreplay log:\n{}",
                daemon.log_tail(),
                replay.log_tail()
            )
        },
    );
    (env, daemon, replay, trades)
}

#[test]
fn status_endpoint_and_cli_show_the_tree_level_breakers_and_accounting() {
    let (env, mut daemon, _replay, _) = ingested();
    // Wait until what was received so far is settled and committed.
    let mut s = Value::Null;
    wait_until("accounting settled", Duration::from_secs(60), || {
        s = status(&env);
        s["accounting_settled"] == true
    });
    let names: Vec<&str> = s["tree"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "feed.binance",
            "producer",
            "consumer",
            "writer.trades",
            "writer.dead_letters",
            "bars",
            "gaps",
            "maintenance",
            "tail",
            "query",
            "degradation_supervisor"
        ]
    );
    for c in s["tree"]["children"].as_array().unwrap() {
        assert!(c["state"].is_string(), "{c}");
        assert!(c.get("restarts").is_some(), "{c}");
        assert!(c.get("last_error").is_some(), "{c}");
    }
    let producer = &s["tree"]["children"][1];
    assert_eq!(producer["lanes"]["lanes"].as_array().unwrap().len(), 3);
    assert_eq!(s["level"], "NORMAL");
    let d = &s["degradation"];
    assert_eq!(d["thresholds"]["consumer_lag"].as_array().unwrap().len(), 4);
    assert!(d["last_signals"]["rss_bytes"].as_f64().unwrap() > 0.0);
    let breakers: Vec<&str> = s["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        breakers,
        ["producer", "commit.trades", "commit.dead_letters"]
    );
    let acct = s["accounting"].as_array().unwrap();
    for a in acct {
        let left = a["received"].as_u64().unwrap() + a["restored"].as_u64().unwrap();
        let right: u64 = [
            "published",
            "shed",
            "spilled_pending",
            "dead_lettered",
            "deduplicated",
        ]
        .iter()
        .map(|k| a[*k].as_u64().unwrap())
        .sum();
        assert_eq!(left, right, "{a}");
    }
    println!("/status accounting: {}", s["accounting"]);

    let out = Command::new(bin())
        .args(["status", "--config"])
        .arg(&env.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "level NORMAL",
        "├─ producer",
        "├─ writer.trades",
        "└─ degradation_supervisor",
        "lanes: t1 ",
        "breaker producer",
        "signal consumer_lag",
        "BINANCE",
        "catalog sql ticklake at sqlite:",
    ] {
        assert!(text.contains(needle), "`ticklake status` lacks {needle:?}");
    }
    assert!(daemon.terminate().success());
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() {
    let (env, mut daemon, _replay, _) = ingested();
    let text = env.metrics();
    assert!(text.contains("ticklake_degradation_level"));
    assert!(text.contains("ticklake_messages_total"));
    assert!(text.contains("ticklake_lane_blocked_seconds_total"));

    let mut check = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "promtool check metrics: exit {:?} {said:?}",
        out.status.code()
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    // The shipped alert rules are valid, and on the daemon's own series.
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let out = tool("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    println!(
        "promtool check rules: exit {:?} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(out.status.success());
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    for series in [
        "ticklake_records_lost_total",
        "ticklake_spill_quarantined_total",
    ] {
        assert!(
            rules_text.contains(series) && text.contains(series),
            "{series}"
        );
    }

    // A real Prometheus server scraping the daemon every second, with the
    // rules loaded.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: ticklake\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            rules.display(),
            env.http_port
        ),
    )
    .unwrap();
    let _prom = start_prometheus(dir.path(), &cfg, port);
    let query = |q: &str| -> Option<Value> {
        let body = http_get(port, &format!("/api/v1/query?query={q}"))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array()?.first().cloned()
    };
    let mut up = None;
    wait_until(
        "prometheus scraped the daemon",
        Duration::from_secs(60),
        || {
            up = query("up%7Bjob%3D%22ticklake%22%7D");
            up.as_ref().is_some_and(|r| r["value"][1] == "1")
        },
    );
    let mut scraped = None;
    wait_until(
        "a ticklake series in prometheus",
        Duration::from_secs(30),
        || {
            scraped = query("sum(ticklake_messages_total%7Boutcome%3D%22received%22%7D)");
            scraped.is_some()
        },
    );
    let scraped: f64 = scraped.unwrap()["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ours = env.counter("ticklake_messages_total", "outcome=\"received\"");
    println!("prometheus: up=1, received {scraped} (daemon now {ours})");
    assert!(scraped > 0.0 && scraped <= ours);
    let loaded = http_get(port, "/api/v1/rules").unwrap_or_default();
    assert!(loaded.contains("TicklakeRecordsLost"), "{loaded}");
    assert!(daemon.terminate().success());
}

/// Twenty-two classes of hostile `/v1/sql` requests, and a rebound Host header,
/// against a daemon that is ingesting: each is refused or fails alone
/// (4xx/5xx), `/healthz` answers after every one, the daemon is never
/// restarted, and ingest goes on.
#[test]
fn hostile_sql_is_refused_and_the_daemon_carries_on() {
    // Looped, so frames keep coming while the requests land (a repeated
    // trade is received, then de-duplicated).
    let (_replay, url) = start_replay(
        &[capture("BINANCE-ee25be.0.txt")],
        &["--live", "--loop", "--rate", "500"],
    );
    // Limits small enough for the memory and time classes below to reach.
    let env = Env::new(
        "embedded",
        Some(&url),
        "[api]\nmax_memory_bytes = 67108864\ntimeout_ms = 5000\n",
    );
    env.capture_feed();
    let mut daemon = env.start_daemon("daemon");
    let received = |s: &Value| -> u64 {
        s["accounting"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["received"].as_u64().unwrap())
            .sum()
    };
    wait_until("frames received", Duration::from_secs(60), || {
        received(&status(&env)) > 0
    });
    let before = received(&status(&env));
    let chain = |n: usize, op: &str| {
        let terms: Vec<String> = (0..n).map(|i| format!("price = {i}")).collect();
        format!("select * from market.trades where {}", terms.join(op))
    };
    let nested = |n: usize| format!("select {}1{}", "(".repeat(n), ")".repeat(n));
    let cases: Vec<(&str, String, &str)> = vec![
        ("OR chain", chain(20_000, " or "), "rejected_query"),
        ("AND chain", chain(20_000, " and "), "rejected_query"),
        (
            "arithmetic chain",
            format!("select {}", vec!["1"; 20_000].join(" + ")),
            "rejected_query",
        ),
        (
            "string concatenation chain",
            format!("select {}", vec!["'x'"; 20_000].join(" || ")),
            "rejected_query",
        ),
        ("deep parentheses", nested(5_000), "rejected_query"),
        (
            "huge statement",
            format!("select '{}'", "x".repeat(300 << 10)),
            "rejected_query",
        ),
        (
            "insert",
            "insert into market.trades (symbol) values ('X')".into(),
            "rejected_query",
        ),
        (
            "copy",
            "copy (select 1) to '/tmp/ticklake-evil.csv'".into(),
            "rejected_query",
        ),
        (
            "file table function",
            "select * from read_parquet('/etc/passwd')".into(),
            "rejected_query",
        ),
        (
            "second statement",
            "select 1; drop table market.trades".into(),
            "rejected_query",
        ),
        (
            "select into",
            "select * into evil from market.trades".into(),
            "rejected_query",
        ),
        (
            "string past the value limit",
            "select length(repeat('ab', 1073741824))".into(),
            "rejected_query",
        ),
        (
            "series past the value limit",
            "select cardinality(range(1, 2000000000))".into(),
            "rejected_query",
        ),
        (
            "DML inside WITH",
            "with t as (select 1) insert into market.trades (symbol) values ('X')".into(),
            "rejected_query",
        ),
        (
            "unknown column",
            "select nope from market.trades".into(),
            "invalid_query",
        ),
        (
            // 12 MB of rows whose JSON text (\u0001 per byte) needs six
            // times that, past the 64 MiB of api.max_memory_bytes. From a
            // literal: `repeat` would be refused first, past its value
            // limit.
            "answer past the memory limit",
            format!(
                "select translate('{}', 'x', chr(1)) as s from (values {})",
                "x".repeat(200_000),
                (0..60)
                    .map(|i| format!("({i})"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "memory_limit",
        ),
        (
            "query past the time limit",
            {
                let v = format!(
                    "(values {})",
                    (0..1000)
                        .map(|i| format!("({i})"))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                format!(
                    "select sum(a.column1 * b.column1 - c.column1) from {v} a, {v} b, {v} c, {v} d"
                )
            },
            "timeout",
        ),
        (
            "UNION chain",
            vec!["select 1"; 5_000].join(" union all "),
            "rejected_query",
        ),
        (
            "deep subqueries",
            format!(
                "select * from {}market.trades{}",
                "(select * from ".repeat(300),
                ") s".repeat(300)
            ),
            "rejected_query",
        ),
        ("explain", "explain select 1".into(), "rejected_query"),
        (
            "set a session option",
            "set datafusion.execution.target_partitions = 1".into(),
            "rejected_query",
        ),
        (
            "external table",
            "create external table x stored as parquet location '/etc'".into(),
            "rejected_query",
        ),
        (
            "unknown table",
            "select * from market.nope".into(),
            "invalid_query",
        ),
        (
            "binary garbage",
            "\u{0}\u{1}\u{7f}select".into(),
            "rejected_query",
        ),
    ];
    for (what, sql, code) in &cases {
        let (http_status, answer) = http(
            env.http_port,
            "POST",
            "/v1/sql",
            Some(&serde_json::json!({ "sql": sql })),
        );
        println!("{what}: {http_status} {}", answer["error"]);
        assert!((400..600).contains(&http_status), "{what}: {http_status}");
        assert_eq!(answer["error"], *code, "{what}: {answer}");
        assert!(
            http_get(env.http_port, "/healthz").is_some(),
            "{what}: the daemon stopped answering\n{}",
            daemon.log_tail()
        );
    }
    assert!(!std::path::Path::new("/tmp/ticklake-evil.csv").exists());
    // A web page that rebinds its own domain to 127.0.0.1 still sends that
    // domain as Host: refused, whatever the path. IP literals and
    // localhost are answered.
    let with_host = |host: &str| -> String {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", env.http_port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "GET /v1/symbols HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = String::new();
        c.read_to_string(&mut buf).unwrap();
        buf
    };
    let refused = with_host("evil.example:80");
    assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");
    assert!(refused.contains("misdirected_request"), "{refused}");
    for host in ["localhost", &format!("127.0.0.1:{}", env.http_port)] {
        let ok = with_host(host);
        assert!(ok.starts_with("HTTP/1.1 200"), "{host}: {ok}");
    }
    let s = status(&env);
    for c in s["tree"]["children"].as_array().unwrap() {
        assert_eq!(c["restarts"], 0, "{c}");
    }
    assert!(
        s["tree"]["children"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "query" && c["queries"].as_u64() >= Some(cases.len() as u64)),
        "{s}"
    );
    // Ingest went on: the replay keeps streaming, and more arrives.
    wait_until("ingest goes on", Duration::from_secs(30), || {
        received(&status(&env)) > before
    });
    assert!(daemon.terminate().success());
}
