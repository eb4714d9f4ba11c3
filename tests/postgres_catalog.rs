//! The SQL catalog on a real PostgreSQL (`lake.catalog_uri =
//! "postgres://…"`), the catalog several daemons share:
//! - a daemon replays a capture through the real Tansu broker into it,
//!   every trade lands once, and pyiceberg reads the same rows through the
//!   same PostgreSQL catalog;
//! - the maintenance lease in it: a run waits while another owner holds
//!   it, and `/status` says who; owners racing for it, exactly one wins;
//!   an expired one is taken;
//! - appends from several catalog clients at once, and a maintenance run
//!   among them: no append is lost.
//!
//! Each test has a catalog name of its own (the catalog tables key every
//! row by it), so tests share one database and never see each other.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use ticklake::config::Config;
use ticklake::lake::compact::CatalogDb;
use ticklake::lake::lease::{self, Acquired, LeaseHandle};
use ticklake::lake::{self, TableKind};

/// The first value under `key` anywhere in `v`.
fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// A lake config on the test database with a catalog name of its own.
fn pg_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::default().under(dir);
    cfg.lake.catalog_uri = postgres_uri();
    cfg.lake.catalog_name = unique("t");
    cfg
}

/// A replayed capture lands once in a PostgreSQL catalog while maintenance
/// compacts under the lease; pyiceberg reads the same rows through it.
#[test]
fn a_replayed_capture_lands_once_in_a_postgres_catalog() {
    let brokers = tansu();
    let pg = postgres_uri();
    let caps = [capture("BINANCE-ee25be.0.txt")];
    let frames: Vec<String> = caps.iter().flat_map(|c| received_frames(c)).collect();
    let truth = truth(&frames);
    assert!(
        truth.len() > 500,
        "the capture holds {} trades",
        truth.len()
    );
    let expected = truth.len() as i64;

    let catalog_name = unique("t");
    // Paced (about 9 s), so maintenance compacts while trades commit.
    let (mut replay, url) = start_replay(&caps, &["--rate", "500"]);
    let env = Env::new(
        &brokers,
        Some(&url),
        &format!(
            "\n[lake]\ncatalog_uri = \"{pg}\"\ncatalog_name = \"{catalog_name}\"\n\n\
             [maintenance]\ninterval_secs = 1\ncompact_min_age = \"0s\"\ncompact_min_files = 2\n"
        ),
    );
    env.capture_feed();

    // The test holds the lease before the daemon starts: its maintenance
    // must wait, and say who holds it.
    let rt = runtime();
    let cfg = Config::load(Some(env.config.as_path())).unwrap();
    let (catalog, db) = rt.block_on(async {
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
        let db = CatalogDb::open(&cfg).await.unwrap().expect("a SQL catalog");
        (catalog, db)
    });
    let ident = lake::table_ident(&cfg, TableKind::Trades);
    let holder = LeaseHandle {
        catalog: catalog.as_ref(),
        store: ticklake::lake::lease::LeaseStore::Pointer(&db),
        ident: &ident,
        owner: "the-test",
        ttl: Duration::from_secs(3600),
    };
    assert!(matches!(
        rt.block_on(holder.acquire()).unwrap(),
        Acquired::Taken(_)
    ));

    let mut daemon = env.start_daemon("daemon");
    wait_until(
        "maintenance sees the test's lease",
        Duration::from_secs(30),
        || {
            let status = http_get(env.http_port, "/status").unwrap_or_default();
            status.contains("held_elsewhere") && status.contains("the-test")
        },
    );
    assert!(env.counter("ticklake_maintenance_lease_total", "held_elsewhere") >= 1.0);
    assert_eq!(
        env.counter("ticklake_maintenance_lease_total", "\"taken\""),
        0.0,
        "the daemon maintained under the test's lease"
    );
    assert!(rt.block_on(holder.release()).unwrap());

    // Released: the daemon takes it, compacts while the trades still
    // commit, and gives it back after each run.
    wait_until(
        "maintenance takes the lease",
        Duration::from_secs(30),
        || env.counter("ticklake_maintenance_lease_total", "\"taken\"") >= 1.0,
    );
    wait_until("all trades committed", Duration::from_secs(180), || {
        env.count("select count(*) from market.trades") >= expected
    });
    replay.kill();
    wait_until("a compaction", Duration::from_secs(60), || {
        env.counter("ticklake_compaction_files_total", "replaced") > 0.0
    });
    std::thread::sleep(Duration::from_secs(2));
    env.assert_trades_once(expected, &daemon);
    println!(
        "lease runs taken {}, held elsewhere {}, compaction files replaced {}",
        env.counter("ticklake_maintenance_lease_total", "\"taken\""),
        env.counter("ticklake_maintenance_lease_total", "held_elsewhere"),
        env.counter("ticklake_compaction_files_total", "replaced"),
    );
    let status_json: serde_json::Value =
        serde_json::from_str(&http_get(env.http_port, "/status").unwrap()).unwrap();
    let daemon_owner = find_key(&status_json, "lease_owner")
        .and_then(|v| v.as_str())
        .expect("the maintenance status names its lease owner")
        .to_string();
    let status = daemon.terminate();
    assert!(
        status.success(),
        "daemon exit {status}; log:\n{}",
        daemon.log_tail()
    );
    // Released at the end of every run; a stop in the middle of one leaves
    // it held by the daemon, which takes it back when restarted on the
    // same data directory (another pid, the same owner).
    let table = rt.block_on(catalog.load_table(&ident)).unwrap();
    if let Some(l) = lease::holder(&table) {
        assert!(lease::same_owner(&l.owner, &daemon_owner), "{l:?}");
    }
    let restarted = lease::owner_id(&env.data_dir());
    assert!(lease::same_owner(&restarted, &daemon_owner));
    let back = LeaseHandle {
        owner: &restarted,
        ..holder
    };
    assert!(matches!(
        rt.block_on(back.acquire()).unwrap(),
        Acquired::Taken(_)
    ));
    assert!(rt.block_on(back.release()).unwrap());

    // Every trade once, equal to its frame.
    let stored = env.query(
        "select symbol, trade_id, cast(price as varchar) as price, cast(quantity as varchar) as quantity \
         from market.trades",
    );
    let by_key: HashMap<(String, String), &serde_json::Value> = stored
        .iter()
        .map(|r| {
            (
                (
                    r["symbol"].as_str().unwrap().to_string(),
                    r["trade_id"].as_str().unwrap().to_string(),
                ),
                r,
            )
        })
        .collect();
    assert_eq!(by_key.len(), stored.len(), "a trade stored twice");
    for t in &truth {
        let key = (t.symbol.clone(), format!("BINANCE-{}", t.id));
        let r = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("trade {key:?} missing"));
        assert_eq!(r["price"].as_str().unwrap(), dec8(&t.price), "{key:?}");
        assert_eq!(r["quantity"].as_str().unwrap(), dec8(&t.quantity));
    }

    // The catalog's own tables, in PostgreSQL.
    let (tables, ours) = rt.block_on(async {
        let pool = sqlx::PgPool::connect(&pg).await.unwrap();
        let tables: Vec<(String,)> = sqlx::query_as(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let ours: Vec<(String,)> = sqlx::query_as(
            "SELECT table_name::text FROM iceberg_tables WHERE catalog_name = $1 ORDER BY 1",
        )
        .bind(&catalog_name)
        .fetch_all(&pool)
        .await
        .unwrap();
        (tables, ours)
    });
    let tables: Vec<_> = tables.into_iter().map(|t| t.0).collect();
    assert!(
        tables.contains(&"iceberg_tables".to_string())
            && tables.contains(&"iceberg_namespace_properties".to_string()),
        "{tables:?}"
    );
    let ours: Vec<_> = ours.into_iter().map(|t| t.0).collect();
    assert_eq!(ours, ["dead_letters", "gaps", "ohlcv_1m", "trades"]);

    // An independent reader through the same PostgreSQL catalog.
    let warehouse = format!("file://{}/warehouse", env.data_dir().display());
    let py = pyiceberg(
        "pyiceberg_read.py",
        &[
            "--catalog-uri",
            &sqlalchemy_uri(&pg),
            "--warehouse",
            &warehouse,
            "--catalog-name",
            &catalog_name,
            "--table",
            "market.trades",
            "--columns",
            "message_id,symbol,price,quantity",
        ],
    );
    assert_eq!(py["rows"].as_i64().unwrap(), expected);
    let ours = env.query(
        "select message_id, symbol, cast(price as varchar) as price, cast(quantity as varchar) as quantity \
         from market.trades order by message_id",
    );
    let theirs = py["data"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        for col in ["message_id", "symbol", "price", "quantity"] {
            assert_eq!(a[col].as_str(), b[col].as_str(), "{col}: {a} vs {b}");
        }
    }
    println!("pyiceberg read {} identical rows", theirs.len());
}

/// Owners on catalog clients of their own (own connection pools, as
/// separate daemons have) race for a free lease: exactly one wins. An
/// expired lease is taken, and its old owner finds out when it renews.
#[test]
fn of_owners_racing_for_the_lease_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = pg_config(dir.path());
    let rt = runtime();
    rt.block_on(async {
        let first = lake::open_catalog(&cfg).await.unwrap();
        lake::ensure_table(first.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
        let ident = lake::table_ident(&cfg, TableKind::Trades);
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (cfg, ident) = (cfg.clone(), ident.clone());
            tasks.push(tokio::spawn(async move {
                let catalog = lake::open_catalog(&cfg).await.unwrap();
                let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
                let owner = format!("owner-{i}");
                let h = LeaseHandle {
                    catalog: catalog.as_ref(),
                    store: ticklake::lake::lease::LeaseStore::Pointer(&db),
                    ident: &ident,
                    owner: &owner,
                    ttl: Duration::from_secs(60),
                };
                (owner.clone(), h.acquire().await.unwrap())
            }));
        }
        let mut winners = Vec::new();
        let mut saw = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (owner, Acquired::Taken(_)) => winners.push(owner),
                (_, Acquired::HeldBy(l)) => saw.push(l.owner),
            }
        }
        assert_eq!(winners.len(), 1, "winners {winners:?}");
        assert!(saw.iter().all(|o| *o == winners[0]), "{saw:?}");
        let table = first.load_table(&ident).await.unwrap();
        assert_eq!(lease::holder(&table).unwrap().owner, winners[0]);

        // The winner's lease runs out; a latecomer takes it.
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        let winner = LeaseHandle {
            catalog: first.as_ref(),
            store: ticklake::lake::lease::LeaseStore::Pointer(&db),
            ident: &ident,
            owner: &winners[0],
            ttl: Duration::from_millis(200),
        };
        assert!(winner.renew().await.unwrap());
        let late = LeaseHandle {
            owner: "late",
            ttl: Duration::from_secs(60),
            ..winner
        };
        assert!(matches!(late.acquire().await.unwrap(), Acquired::HeldBy(_)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(late.acquire().await.unwrap(), Acquired::Taken(_)));
        let winner = LeaseHandle {
            owner: &winners[0],
            ttl: Duration::from_secs(60),
            ..late
        };
        assert!(!winner.renew().await.unwrap(), "the lease is late's now");
        assert!(!winner.release().await.unwrap());
        assert!(late.release().await.unwrap());
    });
}

/// Four catalog clients append at once (their commits conflict and
/// retry), and a maintenance run compacts among them: every append is
/// in the table, and the run held the lease and gave it back.
#[test]
fn appends_from_several_clients_and_a_maintenance_run_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pg_config(dir.path());
    cfg.maintenance.compact_min_age = "0s".into();
    cfg.maintenance.compact_min_files = 2;
    let rt = runtime();
    rt.block_on(async {
        let run = appends_among_a_maintenance_run(&cfg).await;
        match &run.lease {
            ticklake::actors::maintenance::LeaseOutcome::Taken { released, .. } => {
                assert!(released)
            }
            other => panic!("the run did not hold the lease: {other:?}"),
        }
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        let ident = lake::table_ident(&cfg, TableKind::Trades);
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(lease::holder(&table), None);
    });
}
