//! An Iceberg REST catalog (`lake.catalog = "rest"`), served by
//! `scripts/rest_catalog.py` (pyiceberg's SQL catalog behind the REST
//! protocol), secured with OAuth2 client credentials and serving under a
//! path prefix, as production servers do:
//! - a daemon replays a capture through the real Tansu broker into it, is
//!   killed part way and restarted: every trade lands once (the restart
//!   resumes from the Kafka offsets the server kept in the snapshots), and
//!   pyiceberg reads the same rows through the same server;
//! - maintenance runs on it (compaction, expiry, the orphan sweep) without
//!   a failure, and `ticklake maintain` sweeps every table;
//! - compaction and partition retention commit through it, among
//!   concurrent appends; a compaction that loses to an append (the server
//!   holds its commit while one lands) is refused and rebased;
//! - a commit on a table that moved is refused by the server (409) as a
//!   conflict, and changes nothing: what the writers' exactly-once rests
//!   on when several daemons share the table.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ticklake::config::{CatalogKind, Config};
use ticklake::lake::rest_commit::RestCommits;
use ticklake::lake::{self, TableKind, compact};

const CREDENTIAL: &str = "ticklake:s3cret";
const PREFIX: &str = "warehouse-a";

fn server_args() -> [&'static str; 4] {
    ["--credential", CREDENTIAL, "--prefix", PREFIX]
}

/// The `[lake]` section of a daemon on the REST catalog at `uri`.
fn lake_section(uri: &str) -> String {
    format!(
        "\n[lake]\ncatalog = \"rest\"\ncatalog_uri = \"{uri}\"\n\n\
         [lake.catalog_properties]\ncredential = \"{CREDENTIAL}\"\n"
    )
}

/// Lines of the server's log with a 5xx status (a request it failed on),
/// and each traceback it printed, whole.
fn server_errors(server: &Proc) -> Vec<String> {
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("\" 5") {
            out.push(l.to_string());
        }
        if l.starts_with("Traceback") {
            let end = lines[i + 1..]
                .iter()
                .position(|l| !l.starts_with(' '))
                .map_or(lines.len(), |p| i + 2 + p);
            out.push(lines[i..end.min(lines.len())].join("\n"));
        }
    }
    out
}

#[test]
fn a_replayed_capture_lands_once_through_a_rest_catalog_across_a_kill() {
    let brokers = tansu();
    let caps = [capture("BINANCE-ee25be.0.txt")];
    let frames: Vec<String> = caps.iter().flat_map(|c| received_frames(c)).collect();
    let truth = truth(&frames);
    let expected = truth.len() as i64;
    assert!(expected > 500, "the capture holds {expected} trades");

    let dir = tempfile::tempdir().unwrap();
    let (server, uri) = start_rest_catalog(&dir.path().join("rest"), &server_args());
    // Paced (about 8 s a pass), so the kill lands between commits. A
    // reconnecting feed gets the capture from its start again: the
    // restarted daemon sees the trades its predecessor committed once
    // more, and must store each once still.
    let (mut replay, url) = start_replay(&caps, &["--rate", "250"]);
    let env = Env::new(
        &brokers,
        Some(&url),
        &format!(
            "{}\n[maintenance]\ninterval_secs = 1\nsnapshot_retention = \"1s\"\n\
             compact_min_age = \"0s\"\ncompact_min_files = 2\n",
            lake_section(&uri)
        ),
    );
    env.capture_feed();

    let mut daemon = env.start_daemon("daemon");
    wait_until_explained(
        || env.count("select count(*) from market.trades") >= 100,
        Duration::from_secs(60),
        || format!("no trades committed; log:\n{}", daemon.log_tail()),
    );
    daemon.kill();
    let before = env.count("select count(*) from market.trades");
    assert!(
        before > 0 && before < expected,
        "the kill came at {before} of {expected} trades"
    );

    let mut daemon = env.start_daemon("daemon2");
    wait_until("all trades committed", Duration::from_secs(180), || {
        env.count("select count(*) from market.trades") >= expected
    });
    replay.kill();
    // `/status` says where the lake is, and how the daemon signs in,
    // without the secret.
    let st: serde_json::Value =
        serde_json::from_str(&http_get(env.http_port, "/status").unwrap()).unwrap();
    let cat = &st["lake"]["catalog"];
    assert_eq!(
        (&cat["kind"], &cat["uri"], &cat["auth"]),
        (
            &serde_json::json!("rest"),
            &serde_json::json!(uri),
            &serde_json::json!("oauth2_client_credentials")
        ),
        "{cat}"
    );
    assert!(!st.to_string().contains("s3cret"), "a secret in /status");
    wait_until(
        "a maintenance run after the last commit",
        Duration::from_secs(30),
        || {
            env.counter(
                "ticklake_maintenance_runs_total",
                "outcome=\"ok\",table=\"market.trades\"",
            ) >= 2.0
        },
    );
    env.assert_trades_once(expected, &daemon);
    wait_until("a compaction", Duration::from_secs(60), || {
        env.counter("ticklake_compaction_files_total", "replaced") > 0.0
    });
    let failed = env.counter("ticklake_maintenance_runs_total", "outcome=\"failed\"");
    let expired = env.counter(
        "ticklake_maintenance_snapshots_expired_total",
        "market.trades",
    );
    println!(
        "maintenance on REST: failed runs {failed}, trades snapshots expired {expired}, files compacted {}",
        env.counter("ticklake_compaction_files_total", "replaced")
    );
    assert_eq!(
        env.counter("ticklake_compaction_failures_total", ""),
        0.0,
        "log:\n{}",
        daemon.log_tail()
    );
    assert_eq!(failed, 0.0, "log:\n{}", daemon.log_tail());
    assert!(
        expired >= 1.0,
        "commits every 300 ms, kept 1 s: some expire"
    );
    let status = daemon.terminate();
    assert!(status.success(), "daemon exit {status}");

    // Every trade once, equal to its frame, through the daemon.
    assert_lake_holds_frames(&env, &truth);

    // An independent reader through the same server, with the same
    // credentials: the same message ids.
    let credential = format!("credential={CREDENTIAL}");
    let read = pyiceberg(
        "pyiceberg_read.py",
        &[
            "--catalog-uri",
            &uri,
            "--prop",
            &credential,
            "--table",
            "market.trades",
            "--columns",
            "message_id",
        ],
    );
    let theirs: BTreeSet<String> = read["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    let ours: BTreeSet<String> = env
        .query("select message_id from market.trades")
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(read["rows"].as_i64().unwrap(), expected);
    assert_eq!(theirs, ours);

    // `ticklake maintain` on the stopped daemon's config: expiry and the
    // sweep on every table, none refused; nothing young is unreferenced
    // but the files of the killed daemon's last write, if it left any.
    let reports = maintain_reports(&env.config);
    println!("ticklake maintain: {reports:?}");
    assert_every_table(&reports);
    for r in &reports {
        let o = &r["orphans"];
        assert!(o.is_object(), "no sweep: {r}");
        assert!(o["refused"].is_null(), "{r}");
    }
    let trades = &reports[0]["orphans"];
    assert!(trades["referenced"].as_u64().unwrap() >= 1, "{trades}");
    assert!(
        server_errors(&server).is_empty(),
        "the server failed requests:\n{}",
        server_errors(&server).join("\n")
    );
}

/// A commit planned on a table another client has since committed to is
/// refused by the server (409, a failed `assert-ref-snapshot-id`) and read
/// as a conflict, and the table keeps the other client's commit alone.
#[test]
fn a_commit_on_a_table_that_moved_is_a_conflict_through_a_rest_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let (server, uri) = start_rest_catalog(&dir.path().join("rest"), &server_args());
    let cfg = rest_config(dir.path(), uri);
    let rt = runtime();
    rt.block_on(async {
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
        let ident = lake::table_ident(&cfg, TableKind::Trades);
        let stale = catalog.load_table(&ident).await.unwrap();

        // Another client commits first.
        let mut theirs = lake::commit::KafkaOffsets {
            cluster_id: "c".into(),
            ..Default::default()
        };
        theirs.set("t", 0, 10);
        let first = lake::commit::append(catalog.as_ref(), &ident, None, &theirs, 1 << 20)
            .await
            .unwrap();

        let mut ours = theirs.clone();
        ours.set("t", 0, 20);
        let err = lake::commit::append_on(catalog.as_ref(), &stale, Vec::new(), &ours)
            .await
            .expect_err("a commit on a stale table must be refused");
        assert!(lake::commit::is_conflict(&err), "not a conflict: {err}");

        let now = catalog.load_table(&ident).await.unwrap();
        assert_eq!(
            now.metadata().current_snapshot().map(|s| s.snapshot_id()),
            Some(first.snapshot_id)
        );
        let (_, offsets) = lake::commit::current_offsets(&now).unwrap().unwrap();
        assert_eq!(offsets.get("t", 0), Some(10), "the refused offsets leaked");

        // Planned again on the table as it is, it commits.
        let again = lake::commit::append_on(catalog.as_ref(), &now, Vec::new(), &ours)
            .await
            .unwrap();
        let now = catalog.load_table(&ident).await.unwrap();
        assert_eq!(
            now.metadata().current_snapshot().map(|s| s.snapshot_id()),
            Some(again.snapshot_id)
        );
        let (_, offsets) = lake::commit::current_offsets(&now).unwrap().unwrap();
        assert_eq!(offsets.get("t", 0), Some(20));
    });
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("\" 409 "),
        "the server refused no commit:\n{log}"
    );
    assert!(server_errors(&server).is_empty(), "{log}");
}

/// Without the credentials the server issues no token, and the daemon's
/// catalog fails on first use naming the server, not with a panic.
#[test]
fn wrong_credentials_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, uri) = start_rest_catalog(&dir.path().join("rest"), &server_args());
    let mut cfg = rest_config(dir.path(), uri);
    cfg.lake
        .catalog_properties
        .insert("credential".into(), "ticklake:wrong".into());
    let rt = runtime();
    let err = rt.block_on(async {
        match lake::open_catalog(&cfg).await {
            Ok(catalog) => lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    let err = err.expect_err("wrong credentials must not reach the tables");
    println!("{err}");
    assert!(
        err.contains("invalid_client") || err.contains("401") || err.contains("unknown client"),
        "{err}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// Compaction of the trades table with no minimum age, two files enough.
fn policy(cfg: &Config) -> compact::CompactPolicy {
    compact::CompactPolicy {
        target_file_size: cfg.writer.target_file_size_bytes,
        min_files: 2,
        min_age: Duration::ZERO,
        sort: vec!["symbol".into(), "timestamp".into()],
        merge: None,
    }
}

const SIGV4_KEY: &str = "AKIDTICKLAKETEST";
const SIGV4_SECRET: &str = "sigv4-s3cret";

/// A server on AWS's model: every request signed with SigV4 by
/// `SIGV4_KEY` with `SIGV4_SECRET`, for `us-east-1` and `glue`, under
/// `/iceberg`, as Glue's Iceberg endpoint, and with a prefix.
fn sigv4_server_args() -> [&'static str; 6] {
    [
        "--sigv4",
        "AKIDTICKLAKETEST:sigv4-s3cret:us-east-1:glue",
        "--base-path",
        "iceberg",
        "--prefix",
        PREFIX,
    ]
}

/// A config on the SigV4 server at `uri` (of [`sigv4_server_args`]),
/// signing as `SIGV4_KEY` with `secret`, keys given in the catalog's
/// properties.
fn signed_config(dir: &std::path::Path, uri: &str, secret: &str) -> Config {
    let mut cfg = rest_config(dir, format!("{uri}/iceberg"));
    cfg.lake.catalog_properties = [
        ("rest.sigv4-enabled", "true"),
        ("rest.signing-name", "glue"),
        ("rest.signing-region", "us-east-1"),
        ("rest.access-key-id", SIGV4_KEY),
        ("rest.secret-access-key", secret),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    cfg
}

/// A config on the REST catalog at `uri`, with its credentials.
fn rest_config(dir: &std::path::Path, uri: String) -> Config {
    let mut cfg = Config::default().under(&dir.join("data"));
    cfg.lake.catalog = CatalogKind::Rest;
    cfg.lake.catalog_uri = uri;
    cfg.lake
        .catalog_properties
        .insert("credential".into(), CREDENTIAL.into());
    cfg.maintenance.compact_min_age = "0s".into();
    cfg.maintenance.compact_min_files = 2;
    cfg
}

/// Compaction and partition retention commit through the REST server:
/// four clients append at once while a maintenance run compacts among
/// them (the server refuses the commits that lost a race, and they are
/// rebased or retried), and no append is lost; then the days past
/// retention are dropped in one `delete` commit and today's stay.
#[test]
fn compaction_and_retention_commit_through_a_rest_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let (server, uri) = start_rest_catalog(&dir.path().join("rest"), &server_args());
    compaction_and_retention(&rest_config(dir.path(), uri), &server);
}

/// The same through a server that takes only SigV4-signed requests, as
/// AWS's Iceberg endpoints (Glue, S3 Tables): the catalog client's
/// requests and ticklake's own commits all go through the signer.
#[test]
fn compaction_and_retention_commit_through_a_rest_catalog_behind_sigv4() {
    let dir = tempfile::tempdir().unwrap();
    let (server, uri) = start_rest_catalog(&dir.path().join("rest"), &sigv4_server_args());
    let cfg = signed_config(dir.path(), &uri, SIGV4_SECRET);
    compaction_and_retention(&cfg, &server);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(!log.contains("\" 403 "), "a request refused:\n{log}");
    assert!(log.contains("\"POST /iceberg/v1/"), "{log}");
}

/// Requests that are not signed, or signed wrongly, are refused by the
/// server, and the daemon's error says why.
#[test]
fn unsigned_and_wrongly_signed_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, uri) = start_rest_catalog(&dir.path().join("rest"), &sigv4_server_args());
    let port: u16 = uri.rsplit(':').next().unwrap().parse().unwrap();
    let (code, body) = http(port, "GET", "/iceberg/v1/config", None);
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["type"], "MissingAuthenticationTokenException");

    let first_error = |cfg: &Config| {
        runtime()
            .block_on(async {
                let catalog = lake::open_catalog(cfg).await.map_err(|e| e.to_string())?;
                lake::ensure_table(catalog.as_ref(), cfg, TableKind::Trades)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .expect_err("a wrong signature must not reach the tables")
    };
    let err = first_error(&signed_config(dir.path(), &uri, "not-the-secret"));
    println!("{err}");
    assert!(err.contains("does not match"), "{err}");
    let mut cfg = signed_config(dir.path(), &uri, SIGV4_SECRET);
    cfg.lake
        .catalog_properties
        .insert("rest.signing-name".into(), "execute-api".into());
    let err = first_error(&cfg);
    assert!(err.contains("scoped to us-east-1/glue"), "{err}");
    // The right signature, and the same call succeeds.
    runtime().block_on(async {
        let cfg = signed_config(dir.path(), &uri, SIGV4_SECRET);
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
    });
    assert!(
        server_errors(&server).is_empty(),
        "{:?}",
        server_errors(&server)
    );
}

/// Compaction and partition retention through the catalog of `cfg`:
/// four clients append at once while a maintenance run compacts, then a
/// compaction alone, then retention.
fn compaction_and_retention(cfg: &Config, server: &Proc) {
    let cfg = cfg.clone();
    let rt = runtime();
    rt.block_on(async {
        let run = appends_among_a_maintenance_run(&cfg).await;
        assert!(
            matches!(
                run.lease,
                ticklake::actors::maintenance::LeaseOutcome::Taken { released: true, .. }
            ),
            "the run holds the lease, in a table of its own: {:?}",
            run.lease
        );
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        let ident = lake::table_ident(&cfg, TableKind::Trades);

        // Alone, a compaction always commits: every small file becomes one.
        let rest = RestCommits::open(&cfg).unwrap().unwrap();
        let policy = policy(&cfg);
        let c = compact::compact(catalog.as_ref(), &rest, &ident, &policy)
            .await
            .unwrap();
        println!("compaction on REST, alone: {c:?}");
        let table = catalog.load_table(&ident).await.unwrap();
        let current = table.metadata().current_snapshot().unwrap();
        if let Some(id) = c.snapshot_id {
            assert_eq!(current.snapshot_id(), id);
            assert_eq!(
                current.summary().operation,
                iceberg::spec::Operation::Replace
            );
        }
        let live = lake::commit::live_entries(&table).await.unwrap();
        let days: BTreeSet<String> = live
            .iter()
            .map(|e| format!("{:?}", e.data_file.partition()))
            .collect();
        assert_eq!(
            live.len(),
            days.len(),
            "one file per partition after compacting: {live:?}"
        );
        // The Kafka offsets ride along: a restart resumes where it was.
        let (_, offsets) = lake::commit::current_offsets(&table).unwrap().unwrap();
        assert!(offsets.get("t", 0).is_some());
        assert_eq!(rows(catalog.as_ref(), &ident).await, 26);

        // Today's trades, then retention of 3 days: the 2023 days go.
        let now_us = chrono::Utc::now().timestamp_micros();
        append_trades_at(&cfg, catalog.as_ref(), 4, 9000, now_us).await;
        let r = compact::retire(catalog.as_ref(), &rest, &ident, 3)
            .await
            .unwrap();
        println!("retention on REST: {r:?}");
        assert_eq!(r.rows, 26, "{r:?}");
        assert!(r.snapshot_id.is_some());
        assert_eq!(rows(catalog.as_ref(), &ident).await, 4);
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(
            table
                .metadata()
                .current_snapshot()
                .unwrap()
                .summary()
                .operation,
            iceberg::spec::Operation::Delete
        );
    });
    let log = std::fs::read_to_string(&server.log).unwrap();
    println!(
        "server: {} commits refused (409)",
        log.matches("\" 409 ").count()
    );
    assert!(server_errors(server).is_empty(), "{log}");
}

/// A compaction whose commit the server holds while a writer's append
/// lands is refused (409) and rebased on the append: the second attempt
/// commits, on top of the append, and both the compacted rows and the
/// appended one read.
#[test]
fn a_compaction_that_loses_to_an_append_is_rebased_through_a_rest_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = server_args().to_vec();
    args.extend(["--hold-first-rewrite-ms", "1500"]);
    let (server, uri) = start_rest_catalog(&dir.path().join("rest"), &args);
    let cfg = rest_config(dir.path(), uri);
    let rt = runtime();
    rt.block_on(async {
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
        let ident = lake::table_ident(&cfg, TableKind::Trades);
        append_trades(&cfg, catalog.as_ref(), 4, 0).await;
        let policy = policy(&cfg);
        let compaction = {
            let (catalog, cfg, ident) = (catalog.clone(), cfg.clone(), ident.clone());
            tokio::spawn(async move {
                let rest = RestCommits::open(&cfg).unwrap().unwrap();
                compact::compact(catalog.as_ref(), &rest, &ident, &policy).await
            })
        };
        let log = server.log.clone();
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("holding a rewrite commit")
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the compaction never committed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        append_trades(&cfg, catalog.as_ref(), 1, 100).await;
        let appended = catalog
            .load_table(&ident)
            .await
            .unwrap()
            .metadata()
            .current_snapshot_id()
            .unwrap();
        let c = compaction.await.unwrap().unwrap();
        println!("compaction on REST, rebased: {c:?}");
        assert_eq!(c.attempts, 2, "{c:?}");
        assert_eq!(c.files_replaced, 4, "{c:?}");
        let table = catalog.load_table(&ident).await.unwrap();
        let current = table.metadata().current_snapshot().unwrap();
        assert_eq!(Some(current.snapshot_id()), c.snapshot_id);
        assert_eq!(current.parent_snapshot_id(), Some(appended));
        assert_eq!(
            current.summary().operation,
            iceberg::spec::Operation::Replace
        );
        let (_, offsets) = lake::commit::current_offsets(&table).unwrap().unwrap();
        assert_eq!(offsets.get("t", 0), Some(101), "the append's offsets kept");
        assert_eq!(rows(catalog.as_ref(), &ident).await, 5);
    });
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert_eq!(log.matches("\" 409 ").count(), 1, "{log}");
    assert!(server_errors(&server).is_empty(), "{log}");
}

/// A server that names its warehouse and keeps its tables in a bucket, as
/// Polaris or Lakekeeper do: the daemon asks for the warehouse by name
/// (`lake.catalog_warehouse`), writes to the bucket the server places the
/// tables in (`lake.warehouse`, `[lake.s3]`), and every trade lands once
/// there, none on the local disk; pyiceberg reads them through the server
/// from the bucket. A name the server does not know fails on first use.
#[test]
fn a_named_warehouse_in_a_bucket_through_a_rest_catalog() {
    let brokers = tansu();
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = server_args().to_vec();
    args.extend(["--warehouse-name", "analytics"]);
    let (server, uri, location) = bucket_server(dir.path(), &args);

    // A warehouse the server does not have.
    let mut wrong = rest_config(dir.path(), uri.clone());
    wrong.lake.catalog_warehouse = "marketing".into();
    let err = runtime().block_on(async {
        let catalog = lake::open_catalog(&wrong)
            .await
            .map_err(|e| e.to_string())?;
        lake::ensure_table(catalog.as_ref(), &wrong, TableKind::Trades)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let err = err.expect_err("an unknown warehouse must not reach the tables");
    assert!(err.contains("no warehouse"), "{err}");

    let (_env, expected) = land_in_bucket(
        &brokers,
        &format!(
            "\n[lake]\ncatalog = \"rest\"\ncatalog_uri = \"{uri}\"\nwarehouse = \"{location}\"\n\
             catalog_warehouse = \"analytics\"\n\n\
             [lake.catalog_properties]\ncredential = \"{CREDENTIAL}\"\n{}",
            lake_s3_section()
        ),
        |_| {},
    );
    let credential = format!("credential={CREDENTIAL}");
    let py = read_in_bucket(&uri, &["--warehouse", "analytics", "--prop", &credential]);
    assert_eq!(py["rows"].as_i64().unwrap(), expected);
    assert!(
        server_errors(&server).is_empty(),
        "{:?}",
        server_errors(&server)
    );
}

/// pyiceberg's properties for the S3 server.
fn s3_props() -> [String; 4] {
    [
        format!("s3.endpoint={}", s3_endpoint()),
        format!("s3.access-key-id={S3_ACCESS_KEY}"),
        format!("s3.secret-access-key={S3_SECRET_KEY}"),
        format!("s3.region={S3_REGION}"),
    ]
}

/// The daemon's `[lake.s3]` for the S3 server.
fn lake_s3_section() -> String {
    format!(
        "\n[lake.s3]\nendpoint = \"{}\"\nregion = \"{S3_REGION}\"\n\
         access_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key = \"{S3_SECRET_KEY}\"\n\
         allow_http = true\npath_style = true\n",
        s3_endpoint()
    )
}

/// A REST server with `args` that keeps its tables under a fresh prefix
/// of the S3 server's bucket: the server, its URI, and the location.
fn bucket_server(dir: &std::path::Path, args: &[&str]) -> (Proc, String, String) {
    let location = format!("s3://{}/{}", bucket(), unique("rest-"));
    let props = s3_props();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--warehouse", &location]);
    for p in &props {
        all.extend(["--property", p]);
    }
    let (server, uri) = start_rest_catalog(&dir.join("rest"), &all);
    (server, uri, location)
}

/// A daemon on `config` (a `[lake]` on a REST server whose tables are in
/// the S3 server's bucket) replays a capture through `brokers` and lands
/// every trade once, equal to its frame, in the bucket and not on the
/// local disk; `while_running` looks at the running daemon; then the
/// daemon stops, and `ticklake maintain` sweeps the bucket's trades table
/// with no refusal. The environment, and how many trades landed.
fn land_in_bucket(brokers: &str, config: &str, while_running: impl FnOnce(&Env)) -> (Env, i64) {
    let caps = [capture("BINANCE-ee25be.0.txt")];
    let frames: Vec<String> = caps.iter().flat_map(|c| received_frames(c)).collect();
    let truth = truth(&frames);
    let expected = truth.len() as i64;
    let (mut replay, url) = start_replay(&caps, &[]);
    let env = Env::new(brokers, Some(&url), config);
    env.capture_feed();
    let mut daemon = env.start_daemon("daemon");
    wait_until_explained(
        || env.count("select count(*) from market.trades") >= expected,
        Duration::from_secs(120),
        || format!("the trades did not land; log:\n{}", daemon.log_tail()),
    );
    replay.kill();
    env.assert_trades_once(expected, &daemon);
    while_running(&env);
    let status = daemon.terminate();
    assert!(status.success(), "daemon exit {status}");
    assert_lake_holds_frames(&env, &truth);

    // Nothing of the lake on the local disk: the files are in the bucket.
    let local: Vec<_> = walkdir::WalkDir::new(env.data_dir())
        .into_iter()
        .flatten()
        .map(|e| e.into_path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet" || e == "avro"))
        .collect();
    assert!(local.is_empty(), "lake files on the local disk: {local:?}");
    let reports = maintain_reports(&env.config);
    assert_every_table(&reports);
    let sweep = &reports[0]["orphans"];
    println!("sweep of the bucket's trades table: {sweep}");
    assert!(sweep["refused"].is_null(), "{sweep}");
    assert!(sweep["listed"].as_u64().unwrap() >= 2, "{sweep}");
    (env, expected)
}

/// pyiceberg reads the message ids of `market.trades` through the REST
/// server at `uri`, with `args` more, from the S3 server's bucket.
fn read_in_bucket(uri: &str, args: &[&str]) -> serde_json::Value {
    let props = s3_props();
    let mut all = vec![
        "--catalog-uri",
        uri,
        "--table",
        "market.trades",
        "--columns",
        "message_id",
    ];
    all.extend_from_slice(args);
    for p in &props {
        all.extend(["--prop", p]);
    }
    pyiceberg("pyiceberg_read.py", &all)
}

/// A daemon on a catalog like AWS's (Glue's Iceberg endpoint, S3 Tables):
/// every request signed with SigV4, the catalog under `/iceberg`, the
/// tables in a bucket, and one identity for both, found where the
/// warehouse's S3 client finds it (`[lake.s3]`). The daemon replays a
/// capture through Tansu into it and lands every trade once; maintenance
/// commits through the signer; `/status` says how the daemon signs in and
/// shows no secret; pyiceberg, signing with botocore, reads the same rows
/// through the same server.
#[test]
fn a_daemon_lands_through_a_rest_catalog_behind_sigv4() {
    let brokers = tansu();
    let dir = tempfile::tempdir().unwrap();
    let signing = format!("{S3_ACCESS_KEY}:{S3_SECRET_KEY}:{S3_REGION}:glue");
    let (server, uri, location) =
        bucket_server(dir.path(), &["--sigv4", &signing, "--base-path", "iceberg"]);
    let catalog_uri = format!("{uri}/iceberg");
    let (_env, expected) = land_in_bucket(
        &brokers,
        &signed_daemon_config(
            &format!("catalog_uri = \"{catalog_uri}\"\nwarehouse = \"{location}\""),
            "glue",
        ),
        |env| {
            // Maintenance commits through the signer too (compaction's
            // commits are ticklake's own, not the catalog client's).
            compacts_without_failure(env);
            let st: serde_json::Value =
                serde_json::from_str(&http_get(env.http_port, "/status").unwrap()).unwrap();
            let cat = &st["lake"]["catalog"];
            assert_eq!(cat["auth"], "sigv4", "{cat}");
            assert_eq!(cat["signing_name"], "glue", "{cat}");
            assert_eq!(cat["uri"], catalog_uri.as_str(), "{cat}");
            assert!(
                !st.to_string().contains(S3_SECRET_KEY),
                "a secret in /status"
            );
        },
    );
    let py = read_signed(&catalog_uri, "glue", &[]);
    assert_eq!(py["rows"].as_i64().unwrap(), expected);
    assert_nothing_refused(&server);
}

/// The running daemon compacts, and no maintenance run has failed.
fn compacts_without_failure(env: &Env) {
    wait_until("a compaction", Duration::from_secs(60), || {
        env.counter("ticklake_compaction_files_total", "replaced") > 0.0
    });
    let failed = env.counter("ticklake_maintenance_runs_total", "outcome=\"failed\"");
    assert_eq!(failed, 0.0, "failed maintenance runs");
}

/// pyiceberg reads `market.trades` through the SigV4 server at `uri`,
/// signing for `service` with botocore, with `args` more.
fn read_signed(uri: &str, service: &str, args: &[&str]) -> serde_json::Value {
    let props = [
        "rest.sigv4-enabled=true".to_string(),
        format!("rest.signing-name={service}"),
        format!("rest.signing-region={S3_REGION}"),
        format!("client.access-key-id={S3_ACCESS_KEY}"),
        format!("client.secret-access-key={S3_SECRET_KEY}"),
        format!("client.region={S3_REGION}"),
    ];
    let mut all = args.to_vec();
    for p in &props {
        all.extend(["--prop", p]);
    }
    read_in_bucket(uri, &all)
}

/// The server refused no request (403) and failed none (5xx).
fn assert_nothing_refused(server: &Proc) {
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(!log.contains("\" 403 "), "a request refused:\n{log}");
    let errors = server_errors(server);
    assert!(errors.is_empty(), "{errors:?}");
}

/// A daemon's `[lake]` on the SigV4 server: `lake` (its URI, its
/// warehouse), signing for `service` with `[lake.s3]`'s identity, and
/// maintenance every second that compacts two files.
fn signed_daemon_config(lake: &str, service: &str) -> String {
    format!(
        "\n[lake]\ncatalog = \"rest\"\n{lake}\n\n\
         [lake.catalog_properties]\n\"rest.sigv4-enabled\" = \"true\"\n\
         \"rest.signing-name\" = \"{service}\"\n{}\n\
         [maintenance]\ninterval_secs = 1\nsnapshot_retention = \"1s\"\n\
         compact_min_age = \"0s\"\ncompact_min_files = 2\n",
        lake_s3_section()
    )
}

/// The maintenance lease through a REST catalog, in a table of its own
/// (`market.ticklake_lease`): of eight owners racing for it, exactly one
/// takes it; while another daemon holds it a maintenance run does
/// nothing and names the holder, and `ticklake maintain` refuses; once
/// released, runs take it, maintain, tidy the lease table and give it
/// back.
#[test]
fn the_maintenance_lease_holds_through_a_rest_catalog() {
    use ticklake::actors::maintenance::{Job, LeaseOutcome};
    use ticklake::lake::lease::{Acquired, LeaseHandle, LeaseStore, holder, lease_table};
    let dir = tempfile::tempdir().unwrap();
    let (server, uri) = start_rest_catalog(&dir.path().join("rest"), &server_args());
    let cfg = rest_config(dir.path(), uri.clone());
    let rt = runtime();
    rt.block_on(async {
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        lake::ensure_every_table(catalog.as_ref(), &cfg)
            .await
            .unwrap();
        let ident = lease_table(lake::table_ident(&cfg, TableKind::Trades).namespace());
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (catalog, ident) = (catalog.clone(), ident.clone());
            tasks.push(tokio::spawn(async move {
                let owner = format!("host/{i}/owner{i}");
                let h = LeaseHandle {
                    catalog: catalog.as_ref(),
                    store: LeaseStore::Table,
                    ident: &ident,
                    owner: &owner,
                    ttl: Duration::from_secs(3600),
                };
                (owner.clone(), h.acquire().await.unwrap())
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            if let (owner, Acquired::Taken(_)) = t.await.unwrap() {
                winners.push(owner);
            }
        }
        assert_eq!(winners.len(), 1, "winners through REST: {winners:?}");
        let table = catalog.load_table(&ident).await.unwrap();
        let held = holder(&table).unwrap();
        assert_eq!(held.owner, winners[0]);

        // A daemon's run meets the lease held and does nothing.
        let job = Job::from_config(&cfg, catalog.clone()).await.unwrap();
        let run = job.run().await;
        match &run.lease {
            LeaseOutcome::HeldElsewhere { lease } => assert_eq!(lease.owner, winners[0]),
            other => panic!("a run while the lease is held elsewhere: {other:?}"),
        }
        assert!(run.results.is_empty());
        let holder_handle = LeaseHandle {
            catalog: catalog.as_ref(),
            store: LeaseStore::Table,
            ident: &ident,
            owner: &winners[0],
            ttl: Duration::from_secs(3600),
        };
        assert!(holder_handle.release().await.unwrap());

        // Free: three runs in a row each take it, maintain every table,
        // tidy the lease table and give it back.
        for _ in 0..3 {
            let run = job.run().await;
            assert!(
                matches!(run.lease, LeaseOutcome::Taken { released: true, .. }),
                "{:?}",
                run.lease
            );
            assert_eq!(run.results.len(), job.tables().count());
            assert!(run.results.iter().all(|r| r.is_ok()), "{:?}", run.results);
        }
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(holder(&table), None);
        let snapshots = table.metadata().snapshots().count();
        println!("lease table after 3 runs: {snapshots} snapshots");
        assert!(
            snapshots <= 2,
            "tidied to the current one and the release: {snapshots}"
        );
    });
    // `ticklake maintain` refuses while another daemon holds it.
    rt.block_on(async {
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        let ident = lease_table(lake::table_ident(&cfg, TableKind::Trades).namespace());
        let other = LeaseHandle {
            catalog: catalog.as_ref(),
            store: LeaseStore::Table,
            ident: &ident,
            owner: "elsewhere/42/abcdef",
            ttl: Duration::from_secs(3600),
        };
        assert!(matches!(other.acquire().await.unwrap(), Acquired::Taken(_)));
    });
    let config = dir.path().join("ticklake.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n{}",
            dir.path().join("data").display(),
            lake_section(&uri)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["maintain", "--json", "--config"])
        .arg(&config)
        .env("TICKLAKE_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "maintain ran under another's lease");
    assert!(err.contains("elsewhere/42/abcdef"), "{err}");
    assert!(
        server_errors(&server).is_empty(),
        "{:?}",
        server_errors(&server)
    );
}

/// A catalog like S3 Tables: it gives each table a bucket of its own
/// (`s3://<uuid>--table-s3`) that the daemon's config names nowhere,
/// signs with SigV4 under `/iceberg`, and is asked for its warehouse by
/// ARN, with `lake.warehouse` left unset (a local directory). Every trade
/// lands once, in the trades table's own bucket and not on the local disk;
/// the query API reads them there (DataFusion's scan finds that bucket's
/// client); compaction runs; `ticklake maintain` sweeps the table's bucket;
/// and pyiceberg reads the same rows through the same server.
#[test]
fn tables_in_buckets_of_their_own_through_a_rest_catalog() {
    let brokers = tansu();
    let dir = tempfile::tempdir().unwrap();
    let arn = "arn:aws:s3tables:us-east-1:123456789012:bucket/market-data";
    let signing = format!("{S3_ACCESS_KEY}:{S3_SECRET_KEY}:{S3_REGION}:s3tables");
    let (server, uri, shared) = bucket_server(
        dir.path(),
        &[
            "--sigv4",
            &signing,
            "--base-path",
            "iceberg",
            "--warehouse-name",
            arn,
            "--table-buckets",
        ],
    );
    let catalog_uri = format!("{uri}/iceberg");
    let (env, expected) = land_in_bucket(
        &brokers,
        &signed_daemon_config(
            &format!("catalog_uri = \"{catalog_uri}\"\ncatalog_warehouse = \"{arn}\""),
            "s3tables",
        ),
        |env| {
            // The live table reads the committed files with DataFusion's
            // own Parquet scan, which must find the table bucket's client
            // in the session (`market.trades` is Iceberg's reader).
            let sql = "select count(distinct trade_id) from market.trades";
            let committed = env.count(sql);
            assert!(committed > 0);
            assert_eq!(env.count(&sql.replace("trades", "trades_live")), committed);
            // `/status` names no warehouse of the daemon's own: the
            // server placed the tables.
            let st: serde_json::Value =
                serde_json::from_str(&http_get(env.http_port, "/status").unwrap()).unwrap();
            let cat = &st["lake"]["catalog"];
            assert!(cat["warehouse"].is_null(), "{cat}");
            assert_eq!(cat["catalog_warehouse"], arn, "{cat}");
            compacts_without_failure(env);
        },
    );

    // Each table is in a bucket of its own, none in the bucket the S3
    // server was started with.
    let cfg = Config::load(Some(&env.config)).unwrap();
    let locations: Vec<(String, String)> = runtime().block_on(async {
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        let ns = iceberg::NamespaceIdent::new(cfg.lake.namespace.clone());
        let mut out = Vec::new();
        for ident in catalog.list_tables(&ns).await.unwrap() {
            let table = catalog.load_table(&ident).await.unwrap();
            out.push((
                ident.name().to_string(),
                table.metadata().location().to_string(),
            ));
        }
        out
    });
    println!("table locations: {locations:?}");
    let names: BTreeSet<&str> = locations.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains("trades") && names.contains("dead_letters"),
        "{names:?}"
    );
    let buckets: BTreeSet<&str> = locations.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(buckets.len(), locations.len(), "{locations:?}");
    for (name, l) in &locations {
        assert!(
            l.starts_with("s3://") && l.trim_end_matches('/').ends_with("--table-s3"),
            "{name} at {l}"
        );
        assert!(!l.starts_with(&shared), "{name} at {l}");
    }

    let py = read_signed(&catalog_uri, "s3tables", &["--warehouse", arn]);
    assert_eq!(py["rows"].as_i64().unwrap(), expected);
    assert_nothing_refused(&server);
}
