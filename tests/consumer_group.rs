//! Several daemons, one consumer group, one table (`kafka.assignment =
//! group`), on the real Tansu broker: two daemons share the partitions of
//! the topics and write one shared table; one of them is killed with
//! SIGKILL while records are still arriving, the other takes over its
//! partitions, and the final table holds every trade exactly once.
//!
//! Rounds: `TICKLAKE_TEST_GROUP_ROUNDS` (default 2; the long form is 5).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A daemon of the group: feeds off (records come from `ticklake produce`),
/// partitions from the group, the catalog and warehouse shared.
fn member(brokers: &str, run: &str, shared: &Path) -> Env {
    member_with(
        brokers,
        run,
        &format!(
            "catalog_uri = \"sqlite:{}/catalog.db?mode=rwc\"",
            shared.display()
        ),
        shared,
        "enabled = false",
    )
}

/// A member with `catalog` (the `[lake]` lines naming it) and `maintenance`
/// (the `[maintenance]` section's lines).
fn member_with(brokers: &str, run: &str, catalog: &str, shared: &Path, maintenance: &str) -> Env {
    let env = Env::new(brokers, None, "");
    let body = format!(
        r#"data_dir = "{data}"

[kafka]
brokers = "{brokers}"
trades_topic_prefix = "{run}.trades"
dead_letter_topic = "{run}.dead_letters"
consumer_group = "{run}-lake"
embedded_partitions = 3
assignment = "group"
group_orphan_secs = 10

[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[feeds.binance]
enabled = false
rest_url = "http://127.0.0.1:9"

[writer]
max_rows = 200
max_age_ms = 300

[lake]
{catalog}
warehouse = "file://{shared}/warehouse"

[maintenance]
{maintenance}

[http]
listen = "127.0.0.1:{port}"
"#,
        data = env.data_dir().display(),
        shared = shared.display(),
        port = env.http_port,
    );
    std::fs::write(&env.config, body).unwrap();
    env
}

/// The recorded capture cut into `n` captures of consecutive frames.
fn parts(capture: &Path, n: usize, dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(capture).unwrap();
    // Every frame a line of its own: a part never cuts one.
    let lines: Vec<&str> = text.lines().collect();
    let per = lines.len().div_ceil(n);
    lines
        .chunks(per)
        .enumerate()
        .map(|(i, chunk)| {
            let p = dir.join(format!("part{i}.txt"));
            std::fs::write(&p, chunk.join("\n") + "\n").unwrap();
            p
        })
        .collect()
}

fn trades_produced(config: &Path, capture: &Path) -> i64 {
    produce(config, capture)["trades"].as_i64().unwrap()
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}

/// The last 40 lines of a daemon's log, for a failure message.
fn last_lines(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The partitions of `topic` a daemon's log says it holds last: those
/// assigned after its last revocation.
fn final_assignment(log: &Path, topic: &str) -> BTreeSet<i32> {
    let text = std::fs::read_to_string(log).unwrap();
    let mut held = BTreeSet::new();
    for line in text.lines() {
        if line.contains("partitions revoked from this daemon") {
            held.clear();
        } else if line.contains("partition assigned to this daemon")
            && line.contains(&format!("topic={topic} "))
            && let Some(p) = line.split("partition=").nth(1)
        {
            held.insert(p.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    held
}

fn round(brokers: &str, n: usize) {
    let run = unique(&format!("g{n}"));
    let shared = tempfile::tempdir().unwrap();
    let producer = member(brokers, &run, shared.path());
    let a = member(brokers, &run, shared.path());
    let b = member(brokers, &run, shared.path());
    let source = capture("BINANCE-ee25be.0.txt");
    let truth = truth(&received_frames(&source));
    let expected = truth.len() as i64;
    let parts = parts(&source, 4, shared.path());

    // The first part goes in before the daemons start: its schema ids are
    // then the ones every member's registry holds (each keeps its own file).
    let mut produced = trades_produced(&producer.config, &parts[0]);
    for m in [&a, &b] {
        std::fs::create_dir_all(m.data_dir()).unwrap();
        std::fs::copy(
            producer.data_dir().join("schemas.json"),
            m.data_dir().join("schemas.json"),
        )
        .unwrap();
    }
    let mut da = a.start_daemon("a");
    let mut db = b.start_daemon("b");
    // Both in the group, each with a share: the second to join gets one.
    // Generous: on a loaded CI machine, two debug daemons starting beside
    // the other test's two took over 60 s to both be assigned. A timeout
    // shows both logs, so a join that never ends can be told from a slow one.
    let assigned = Instant::now();
    while !(log_has(&a.log_path("a"), "partition assigned to this daemon")
        && log_has(&b.log_path("b"), "partition assigned to this daemon"))
    {
        assert!(
            assigned.elapsed() < Duration::from_secs(180),
            "timed out waiting for both daemons assigned\n--- a\n{}\n--- b\n{}",
            last_lines(&a.log_path("a")),
            last_lines(&b.log_path("b")),
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "round {n}: both daemons assigned {:.1} s after start",
        assigned.elapsed().as_secs_f64()
    );
    produced += trades_produced(&producer.config, &parts[1]);
    wait_until(
        "the first parts committed",
        Duration::from_secs(120),
        || a.count("select count(*) from market.trades") >= produced / 2,
    );
    // Kill the one holding partition 0 (the capture's symbols hash to
    // partitions 0 and 1 most) while the third part is in flight: what it
    // read and had not committed is read again by the other, from the
    // table's offsets.
    let topic = format!("{run}.trades.binance");
    let (mut a_holds, mut b_holds) = (BTreeSet::new(), BTreeSet::new());
    wait_until(
        "the group splits the partitions",
        Duration::from_secs(60),
        || {
            a_holds = final_assignment(&da.log, &topic);
            b_holds = final_assignment(&db.log, &topic);
            a_holds.is_disjoint(&b_holds) && !a_holds.is_empty() && !b_holds.is_empty()
        },
    );
    println!("round {n}: a holds {a_holds:?}, b holds {b_holds:?}");
    let (victim, survivor, survivor_env) = if a_holds.contains(&0) {
        (&mut da, &mut db, &b)
    } else {
        (&mut db, &mut da, &a)
    };
    produced += trades_produced(&producer.config, &parts[2]);
    std::thread::sleep(Duration::from_millis(150 + 100 * n as u64));
    victim.kill();
    produced += trades_produced(&producer.config, &parts[3]);
    assert_eq!(produced, expected, "the parts hold every trade once");
    // The survivor is given the victim's partitions once its session ends.
    wait_until(
        "the survivor takes every partition",
        Duration::from_secs(90),
        || final_assignment(&survivor.log, &topic) == BTreeSet::from([0, 1, 2]),
    );

    let committed = std::cell::Cell::new(0);
    wait_until_explained(
        || {
            committed.set(a.count("select count(*) from market.trades"));
            committed.get() >= expected
        },
        Duration::from_secs(120),
        || {
            // Kept for a look after the test's directories are gone.
            for (p, name) in [(&survivor.log, "survivor"), (&victim.log, "victim")] {
                let keep = std::env::temp_dir().join(format!("{run}.{name}.log"));
                let _ = std::fs::copy(p, &keep);
                println!("{name} log kept at {}", keep.display());
            }
            format!(
                "{} of {expected} trades committed after 120 s; survivor log:\n{}\nvictim log:\n{}",
                committed.get(),
                survivor.log_tail(),
                victim.log_tail()
            )
        },
    );
    // Late second copies would show up now.
    std::thread::sleep(Duration::from_secs(2));
    let rows = a.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    println!(
        "round {n}: market.trades {} (expected {expected}); survivor log {}",
        rows[0],
        survivor.log.display()
    );
    assert_eq!(
        rows[0]["n"].as_i64().unwrap(),
        expected,
        "survivor log:\n{}",
        survivor.log_tail()
    );
    assert_eq!(rows[0]["d"].as_i64().unwrap(), expected);
    let stored: BTreeSet<(String, String)> = a
        .query("select symbol, trade_id from market.trades")
        .iter()
        .map(|r| {
            (
                r["symbol"].as_str().unwrap().to_string(),
                r["trade_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = truth
        .iter()
        .map(|t| (t.symbol.clone(), format!("BINANCE-{}", t.id)))
        .collect();
    assert_eq!(stored, want, "the table holds exactly the capture's trades");
    // The victim held a share when it died, and the survivor ends up with
    // every partition: it took the victim's over.
    let theirs = final_assignment(&victim.log, &topic);
    let ours = final_assignment(&survivor.log, &topic);
    println!("round {n}: the victim held partitions {theirs:?}; the survivor ends with {ours:?}");
    assert!(!theirs.is_empty(), "the victim held no partition");
    assert_eq!(ours, BTreeSet::from([0, 1, 2]));
    let rejoins = std::fs::read_to_string(&survivor.log)
        .unwrap()
        .matches("rejoining the consumer group")
        .count();
    println!("round {n}: the survivor rejoined its group {rejoins} times for orphaned partitions");
    // Its answers say whose uncommitted rows they can hold: its own
    // partitions', now every one.
    let answer: serde_json::Value = serde_json::from_str(
        &http_get(survivor_env.http_port, "/v1/trades?symbol=BTCUSDT&limit=1").unwrap(),
    )
    .unwrap();
    let covered: Vec<&str> = answer["tail_partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no tail_partitions in {answer}"))
        .iter()
        .filter_map(|p| p.as_str())
        .filter(|p| p.starts_with(&topic))
        .collect();
    assert_eq!(covered.len(), 3, "{answer}");
    // A commit that overlapped the other owner's is its own outcome, not a
    // failure: nothing in this round failed.
    let metrics = survivor_env.metrics();
    let commits = |outcome: &str| {
        metric_sum(
            &metrics,
            "ticklake_writer_commits_total",
            &format!("outcome=\"{outcome}\",table=\"trades\""),
        )
    };
    println!(
        "round {n}: survivor's trades commits: ok {}, conflict {}, overlap {}, failed {}",
        commits("ok"),
        commits("conflict"),
        commits("overlap"),
        commits("failed")
    );
    assert!(commits("ok") > 0.0, "{metrics}");
    assert_eq!(commits("failed"), 0.0, "a commit failed");
    let status = survivor.terminate();
    assert!(status.success(), "survivor exit {status}");
    let left_out = std::fs::read_to_string(&survivor.log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("rows left out of the commit"))
        .count();
    println!("round {n}: survivor left out already-committed rows in {left_out} commits");
}

#[test]
fn two_daemons_in_one_group_write_each_trade_once_through_a_kill() {
    let brokers = tansu();
    let rounds: usize = std::env::var("TICKLAKE_TEST_GROUP_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("TICKLAKE_TEST_GROUP_ROUNDS is a number"))
        .unwrap_or(2);
    for n in 0..rounds {
        round(&brokers, n);
    }
}

/// The spans a daemon's log says it maintained in, as (start, end) in
/// unix ms, and how many runs found the lease held elsewhere or lost it.
fn maintenance_spans(log: &Path) -> (Vec<(i64, i64)>, usize, usize) {
    let text = std::fs::read_to_string(log).unwrap();
    let at = |line: &str| -> i64 {
        line.split("at_ms=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut spans = Vec::new();
    let mut open = None;
    let (mut elsewhere, mut lost) = (0, 0);
    for line in text.lines() {
        if line.contains("maintenance: lease taken; run starts") {
            assert!(
                open.is_none(),
                "two starts without an end in {}",
                log.display()
            );
            open = Some(at(line));
        } else if line.contains("maintenance: run ends") {
            spans.push((open.take().expect("an end without a start"), at(line)));
        } else if line.contains("another daemon holds the lease") {
            elsewhere += 1;
        } else if line.contains("maintenance: lost the lease") {
            lost += 1;
        }
    }
    (spans, elsewhere, lost)
}

/// Two daemons of one group write one table on a PostgreSQL catalog with
/// maintenance on (compaction every few seconds) while records keep
/// arriving: maintenance runs on one daemon at a time (the lease in the
/// catalog), no run loses its lease, compaction happens, and no append is
/// lost: the table holds every trade once. `TICKLAKE_TEST_MAINTENANCE_SECS`
/// sets how long records arrive (default 40; the long form is 600).
#[test]
fn two_daemons_in_one_group_maintain_one_at_a_time() {
    let brokers = tansu();
    let pg = postgres_uri();
    let secs: u64 = std::env::var("TICKLAKE_TEST_MAINTENANCE_SECS")
        .ok()
        .map(|v| {
            v.parse()
                .expect("TICKLAKE_TEST_MAINTENANCE_SECS is a number")
        })
        .unwrap_or(40);
    let run = unique("gm");
    let shared = tempfile::tempdir().unwrap();
    let catalog = format!("catalog_uri = \"{pg}\"\ncatalog_name = \"{run}\"");
    let maintenance = "interval_secs = 2\ncompact_min_age = \"0s\"\ncompact_min_files = 2\nsnapshot_retention = \"5s\"";
    let producer = member_with(&brokers, &run, &catalog, shared.path(), "enabled = false");
    let a = member_with(&brokers, &run, &catalog, shared.path(), maintenance);
    let b = member_with(&brokers, &run, &catalog, shared.path(), maintenance);
    let source = capture("BINANCE-ee25be.0.txt");
    let truth = truth(&received_frames(&source));
    let expected = truth.len() as i64;
    // One part every 5 s for the whole run.
    let n = usize::try_from(secs / 5).unwrap().max(4);
    let parts = parts(&source, n, shared.path());

    let mut produced = trades_produced(&producer.config, &parts[0]);
    for m in [&a, &b] {
        std::fs::create_dir_all(m.data_dir()).unwrap();
        std::fs::copy(
            producer.data_dir().join("schemas.json"),
            m.data_dir().join("schemas.json"),
        )
        .unwrap();
    }
    let mut da = a.start_daemon("a");
    let mut db = b.start_daemon("b");
    for part in &parts[1..] {
        std::thread::sleep(Duration::from_secs(5));
        produced += trades_produced(&producer.config, part);
    }
    assert_eq!(produced, expected);
    wait_until("every trade committed", Duration::from_secs(180), || {
        a.count("select count(*) from market.trades") >= expected
    });
    // Maintenance keeps running past the last append for a few rounds.
    std::thread::sleep(Duration::from_secs(6));
    for d in [&mut da, &mut db] {
        let status = d.terminate();
        assert!(status.success(), "exit {status}; log:\n{}", d.log_tail());
    }
    let rows = a.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    assert_eq!(rows[0]["n"].as_i64(), Some(expected), "{}", rows[0]);
    assert_eq!(rows[0]["d"].as_i64(), Some(expected), "{}", rows[0]);

    let (sa, ea, la) = maintenance_spans(&da.log);
    let (sb, eb, lb) = maintenance_spans(&db.log);
    let compactions = [&da.log, &db.log]
        .iter()
        .map(|l| {
            std::fs::read_to_string(l)
                .unwrap()
                .matches("maintenance: small files compacted")
                .count()
        })
        .sum::<usize>();
    println!(
        "{secs} s: daemon a ran maintenance {} times (found it held elsewhere {ea}), b {} times ({eb}); {compactions} compactions; {expected} trades once",
        sa.len(),
        sb.len()
    );
    assert_eq!((la, lb), (0, 0), "no run lost its lease");
    assert!(sa.len() + sb.len() >= 3, "maintenance ran: {sa:?} {sb:?}");
    assert!(compactions > 0, "compaction ran");
    for x in &sa {
        for y in &sb {
            assert!(
                x.1 <= y.0 || y.1 <= x.0,
                "maintenance of a {x:?} and of b {y:?} overlap"
            );
        }
    }
}
