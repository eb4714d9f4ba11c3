//! The shipped monitoring (`deploy/`) against a running daemon and a real
//! Prometheus server (the Debian `prometheus` package; missing, the test
//! fails, it never skips).
//!
//! A dashboard panel or an alert that names a metric the daemon does not
//! export, or a label it does not have, shows nothing and never fires,
//! and nothing else would notice. So every dashboard expression and every
//! alert expression is evaluated through Prometheus's HTTP API on the
//! daemon's own scrapes, and each must be valid and return series.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// Runs a promtool check and insists it succeeds; returns what it said.
fn promtool(args: &[&str], file: &Path) -> String {
    let out = tool("promtool").args(args).arg(file).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "promtool {} {}:\n{}",
        args.join(" "),
        file.display(),
        said.trim_end()
    );
    assert!(out.status.success(), "promtool {args:?} failed: {said}");
    said
}

/// Every `expr` in the dashboard, with the title of its panel.
fn dashboard_exprs(v: &Value, panel: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            let title = match (m.get("type"), m.get("title")) {
                (Some(_), Some(Value::String(t))) => t.as_str(),
                _ => panel,
            };
            for (k, child) in m {
                match (k.as_str(), child) {
                    ("expr", Value::String(e)) => out.push((title.to_string(), e.clone())),
                    _ => dashboard_exprs(child, title, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| dashboard_exprs(c, panel, out)),
        _ => {}
    }
}

/// Grafana's variables as Grafana would fill them: every exchange, and a
/// rate window that holds many of this test's 1 s scrapes.
fn substitute(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$exchange", ".*");
    assert!(
        !e.contains('$'),
        "a dashboard variable this test does not know: {expr}"
    );
    e
}

/// An alert expression split at its one top-level comparison: the side
/// made of series, the operator, and the number it is compared with.
/// Prometheus prints the rule back in this shape (`/api/v1/rules`).
fn split_comparison(expr: &str) -> (String, String, f64) {
    let b = expr.as_bytes();
    let (mut depth, mut quote) = (0i32, None::<u8>);
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                b'>' | b'<' | b'=' | b'!' if depth == 0 => {
                    let two = b.get(i + 1) == Some(&b'=');
                    if c != b'=' || two {
                        let len = if two { 2 } else { 1 };
                        found.push((i, len));
                        i += len;
                        continue;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    assert_eq!(
        found.len(),
        1,
        "an alert must compare one expression with a number: {expr}"
    );
    let (at, len) = found[0];
    let rhs = expr[at + len..].trim().trim_start_matches("bool").trim();
    let number = rhs
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("an alert must compare with a number, not {rhs:?}: {expr}"));
    (
        expr[..at].trim().to_string(),
        expr[at..at + len].to_string(),
        number,
    )
}

/// An instant query; `Ok(series)` or `Err(why)`.
fn query(port: u16, expr: &str) -> Result<usize, String> {
    let q: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    let body = http_get(port, &format!("/api/v1/query?query={q}"))
        .ok_or_else(|| "prometheus refused the query (not 200)".to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(format!("status {}: {}", v["status"], v["error"]));
    }
    match v["data"]["result"].as_array() {
        Some(r) if !r.is_empty() => Ok(r.len()),
        Some(_) => Err("no series".into()),
        None => Err(format!("result type {}", v["data"]["resultType"])),
    }
}

#[test]
fn every_dashboard_and_alert_expression_returns_series_from_a_running_daemon() {
    let rules = deploy("prometheus/alerts.yml");
    let dashboard = deploy("grafana/dashboards/ticklake.json");
    let said = promtool(&["check", "rules"], &rules);
    assert!(said.contains("SUCCESS"), "{said}");
    // The shipped Prometheus config (it names alerts.yml beside it).
    promtool(&["check", "config"], &deploy("prometheus/prometheus.yml"));

    // The daemon on the embedded default, fed by a replay that loops, so
    // trades flow for the whole test.
    let cap = capture("BINANCE-ee25be.0.txt");
    let (_replay, url) = start_replay(&[cap], &["--live", "--rate", "200", "--loop"]);
    let env = Env::new("embedded", Some(&url), "");
    env.capture_feed();
    let mut daemon = env.start_daemon("daemon");
    wait_until("trades received", Duration::from_secs(60), || {
        env.counter("ticklake_messages_total", "outcome=\"received\"") > 0.0
    });
    // Query API requests, so the query latency series exist.
    let sql = json!({"sql": "select symbol, count(*) from market.trades_live group by symbol"});
    let (status, answer) = http(env.http_port, "POST", "/v1/sql", Some(&sql));
    assert_eq!(status, 200, "{answer}");
    assert!(http_get(env.http_port, "/v1/symbols").is_some());

    // Prometheus scraping the daemon every second, evaluating the shipped
    // rules; the job name is the one the TicklakeDown alert matches.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: ticklake\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            rules.display(),
            env.http_port
        ),
    )
    .unwrap();
    promtool(&["check", "config"], &cfg);
    let prom = start_prometheus(dir.path(), &cfg, port);
    // rate() and deriv() need two samples in their window; ten scrapes
    // leave no doubt.
    wait_until("ten scrapes of the daemon", Duration::from_secs(90), || {
        query(port, "count_over_time(up{job=\"ticklake\"}[1m]) >= 10").is_ok()
    });

    // Every rule of alerts.yml as Prometheus loaded it.
    let loaded: Value =
        serde_json::from_str(&http_get(port, "/api/v1/rules").expect("/api/v1/rules")).unwrap();
    let alerts: Vec<(String, String)> = loaded["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r["type"] == "alerting")
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["query"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let in_file = std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(alerts.len(), in_file, "prometheus loaded every alert rule");

    let board: Value = serde_json::from_str(&std::fs::read_to_string(&dashboard).unwrap()).unwrap();
    let mut panels = Vec::new();
    dashboard_exprs(&board["panels"], "", &mut panels);
    let graphs = board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .count();
    for p in board["panels"].as_array().unwrap() {
        if p["type"] != "row" {
            assert!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "panel {} has no query",
                p["title"]
            );
        }
    }

    // What to evaluate. An alert is normally not firing, and its whole
    // expression then returns nothing whether its metric exists or not:
    // the side made of series is evaluated instead (the comparison with
    // its number removed), and must return series.
    let mut todo: Vec<(String, String)> = panels
        .iter()
        .map(|(title, e)| (format!("panel {title:?}"), substitute(e)))
        .collect();
    for (name, q) in &alerts {
        let (series, op, number) = split_comparison(q);
        println!("alert {name}: evaluating `{series}` (fires when {op} {number})");
        todo.push((format!("alert {name}"), series));
    }

    // A series whose first sample came late (a histogram's rate) gets a
    // few more scrapes before it counts as missing.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failed = Vec::new();
    let mut series = 0;
    for (what, expr) in &todo {
        let result = loop {
            match query(port, expr) {
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                r => break r,
            }
        };
        match result {
            Ok(n) => series += n,
            Err(why) => failed.push(format!("{what}: `{expr}`: {why}")),
        }
    }
    println!(
        "evaluated {} expressions: {} from the {} dashboard panels, {} from the alert rules; {} series, {} empty or invalid",
        todo.len(),
        panels.len(),
        graphs,
        alerts.len(),
        series,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "expressions that are invalid or name what the daemon does not export:\n{}\nprometheus log:\n{}",
        failed.join("\n"),
        prom.log_tail()
    );
    assert!(panels.len() >= graphs && !alerts.is_empty());
    assert!(daemon.terminate().success());
}

/// deploy/docker-compose.yml runs the daemon on deploy/ticklake.compose.toml
/// and Prometheus on deploy/prometheus/prometheus.yml: the config loads as
/// the daemon loads it, and names the broker, listen address and Host the
/// other services use. (Compose itself is not run here.)
#[test]
fn compose_config_loads_and_matches_the_other_services() {
    let cfg = ticklake::config::Config::load(Some(&deploy("ticklake.compose.toml"))).unwrap();
    assert_eq!(cfg.kafka.brokers, "kafka:9092");
    assert_eq!(cfg.http.listen, "0.0.0.0:9464");
    // Prometheus scrapes http://ticklake:9464: a name the daemon must accept.
    assert!(cfg.http.allowed_hosts.iter().any(|h| h == "ticklake"));
    let prometheus = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
    assert!(prometheus.contains("'ticklake:9464'"), "{prometheus}");
    assert!(prometheus.contains("job_name: ticklake"), "{prometheus}");
    let compose = std::fs::read_to_string(deploy("docker-compose.yml")).unwrap();
    for needle in [
        "./ticklake.compose.toml:/etc/ticklake/ticklake.toml",
        "./prometheus:/etc/prometheus",
        "./grafana/provisioning:/etc/grafana/provisioning",
        "./grafana/dashboards:/etc/grafana/dashboards",
        "KAFKA_ADVERTISED_LISTENERS: PLAINTEXT://kafka:9092",
        "dockerfile: deploy/Dockerfile",
    ] {
        assert!(
            compose.contains(needle),
            "docker-compose.yml lacks {needle:?}"
        );
    }
    let provider =
        std::fs::read_to_string(deploy("grafana/provisioning/dashboards/ticklake.yml")).unwrap();
    assert!(provider.contains("path: /etc/grafana/dashboards"));
    let datasource =
        std::fs::read_to_string(deploy("grafana/provisioning/datasources/prometheus.yml")).unwrap();
    let board = std::fs::read_to_string(deploy("grafana/dashboards/ticklake.json")).unwrap();
    assert!(
        datasource.contains("uid: ticklake-prometheus")
            && board.contains("\"ticklake-prometheus\"")
    );
}
