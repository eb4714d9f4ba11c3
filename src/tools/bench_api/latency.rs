//! `ticklake bench-api latency`: the query side's latency on a lake of
//! synthetic trades built as a daemon builds it (`history`), with a tail
//! of uncommitted trades, through the query engine: "last 15 minutes of
//! one symbol", one day of OHLCV, and what a commit costs the query side.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{BenchApiError, SYMBOLS, history, percentile, upkeep};
use crate::config::Config;
use crate::model::now_us;

use super::history::PlanProfile;

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub lake_trades: usize,
    /// With `--maintain`: what maintenance did to each table first.
    pub maintenance: Option<Vec<crate::lake::maintain::MaintainReport>>,
    /// Commits the lake was built in (`--commits`), or `None`: a few large
    /// ones.
    pub commits: Option<usize>,
    pub tail_trades: usize,
    pub iterations: usize,
    pub build_seconds: f64,
    pub plan: PlanProfile,
    pub recent_rows: usize,
    pub recent_p50_ms: f64,
    pub recent_p99_ms: f64,
    pub recent_max_ms: f64,
    /// The same query with what the engine knows of the lake at the pinned
    /// snapshot forgotten before each run: the cost of learning it, which
    /// the daemon pays once per snapshot and symbol, right after a commit
    /// (`Engine::learn_lake_facts`), or on the first query of a symbol.
    pub recent_cold_p50_ms: f64,
    pub recent_cold_p99_ms: f64,
    pub recent_cold_max_ms: f64,
    pub ohlcv_bars: usize,
    pub ohlcv_p50_ms: f64,
    pub ohlcv_p99_ms: f64,
    pub ohlcv_max_ms: f64,
    /// Right after a commit (medians over `AFTER_COMMITS` commits).
    pub after_commit: AfterCommitReport,
    /// DuckDB on the lake's Parquet files (lake rows only, no tail).
    pub duckdb_ohlcv_p50_ms: Option<f64>,
    pub duckdb_ohlcv_bars: Option<u64>,
    /// ticklake p50 / DuckDB p50.
    pub ohlcv_ratio: Option<f64>,
    /// With `--lake-dir`: the files the after-commit runs wrote into the
    /// kept lake, deleted when the table was put back as the run found it.
    pub kept_lake_files_removed: Option<usize>,
}

impl std::fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let commits = match self.commits {
            Some(n) => format!("{n} commits"),
            None => "a few large commits".into(),
        };
        writeln!(
            f,
            "lake {} trades in {commits} + tail {} trades (built in {:.1} s), {} iterations",
            self.lake_trades, self.tail_trades, self.build_seconds, self.iterations
        )?;
        for r in self.maintenance.iter().flatten() {
            let c = r.compaction.as_ref();
            writeln!(
                f,
                "maintained {}: {} files compacted into {} ({} ms), {} snapshots expired ({} -> {}), {} files deleted, now {} data files, metadata {} bytes",
                r.table,
                c.map_or(0, |c| c.files_replaced),
                c.map_or(0, |c| c.files_written),
                c.map_or(0, |c| c.duration_ms),
                r.expired,
                r.snapshots_before,
                r.snapshots_after,
                r.manifest_lists_deleted
                    + r.manifests_deleted
                    + r.data_files_deleted
                    + r.metadata_files_deleted,
                r.data_files,
                r.metadata_bytes
            )?;
        }
        writeln!(f, "{}", self.plan)?;
        writeln!(
            f,
            "last 15 minutes of one symbol: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} rows); \
             with the lake facts cold: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.recent_p50_ms,
            self.recent_p99_ms,
            self.recent_max_ms,
            self.recent_rows,
            self.recent_cold_p50_ms,
            self.recent_cold_p99_ms,
            self.recent_cold_max_ms
        )?;
        write!(
            f,
            "one day of 1-minute OHLCV:     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} bars)",
            self.ohlcv_p50_ms, self.ohlcv_p99_ms, self.ohlcv_max_ms, self.ohlcv_bars
        )?;
        let a = &self.after_commit;
        write!(
            f,
            "\nafter each commit (median of {AFTER_COMMITS}): refresh {:.1} ms, learning the lake facts {:.1} ms, \
             then last 15 minutes {:.1} ms, OHLCV {:.1} ms",
            a.refresh_ms, a.learn_ms, a.recent_ms, a.ohlcv_ms
        )?;
        if let (Some(d), Some(r)) = (self.duckdb_ohlcv_p50_ms, self.ohlcv_ratio) {
            write!(
                f,
                "\nDuckDB, same OHLCV on the Parquet files: p50 {d:.1} ms ({} bars); ratio ticklake/DuckDB {r:.2}",
                self.duckdb_ohlcv_bars.unwrap_or(0)
            )?;
        }
        if let Some(n) = self.kept_lake_files_removed {
            write!(
                f,
                "\nkept lake put back as found: the table at its metadata before the after-commit runs, their {n} files deleted"
            )?;
        }
        Ok(())
    }
}

/// Commits made after the timed runs, each followed by the first queries
/// on the new snapshot.
const AFTER_COMMITS: usize = 5;

#[derive(Default)]
struct AfterCommit {
    refresh_ms: Vec<f64>,
    learn_ms: Vec<f64>,
    recent_ms: Vec<f64>,
    ohlcv_ms: Vec<f64>,
}

impl AfterCommit {
    fn medians(self) -> AfterCommitReport {
        let m = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        };
        AfterCommitReport {
            refresh_ms: m(self.refresh_ms),
            learn_ms: m(self.learn_ms),
            recent_ms: m(self.recent_ms),
            ohlcv_ms: m(self.ohlcv_ms),
        }
    }
}

/// What a commit costs the query side, and the first queries after it.
#[derive(Debug, Serialize)]
pub struct AfterCommitReport {
    /// `Engine::refresh`: the query actor's reload of the table.
    pub refresh_ms: f64,
    /// `Engine::learn_lake_facts`, run in the background after it.
    pub learn_ms: f64,
    pub recent_ms: f64,
    pub ohlcv_ms: f64,
}

pub(super) fn synthetic_trade(i: usize, ts: i64) -> crate::model::TradeV2 {
    use crate::model::{Dec8, Side, TradeV2};
    let symbol = SYMBOLS[i % SYMBOLS.len()];
    TradeV2::builder("BENCH", symbol, &i.to_string(), ts)
        .price(Dec8::from_unscaled(6_500_000_000_000 + (i as i64 % 100_000)).unwrap_or_default())
        .quantity(Dec8::from_unscaled(1_000_000 + (i as i64 % 997)).unwrap_or_default())
        .side(if i.is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        })
        .source_sequence(Some(i as i64))
        .build()
}

fn timed<T>(ms: &mut Vec<f64>, started: Instant, v: T) -> T {
    ms.push(started.elapsed().as_secs_f64() * 1000.0);
    v
}

/// What `ticklake bench-api latency` measures on (its flags).
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    pub lake_trades: usize,
    pub commits: Option<usize>,
    pub lake_dir: Option<std::path::PathBuf>,
    /// The lake's files in this warehouse (`s3://bucket/prefix`, reached
    /// with the config's `lake.s3` keys) rather than under the lake's
    /// directory, which keeps the catalog. A run without `lake_dir` gets a
    /// prefix of its own under it, deleted at its end.
    pub warehouse: Option<String>,
    pub tail_trades: usize,
    pub iterations: usize,
    pub duckdb_python: Option<std::path::PathBuf>,
    pub maintain: bool,
}

pub async fn latency(base: &Config, o: &LatencyOptions) -> Result<LatencyReport, BenchApiError> {
    let (lake_trades, commits, tail_trades, iterations, maintain) = (
        o.lake_trades,
        o.commits,
        o.tail_trades,
        o.iterations,
        o.maintain,
    );
    let lake_dir = o.lake_dir.as_deref();
    let duckdb_python = o.duckdb_python.as_deref();
    use crate::actors::tail::TailActor;
    use crate::lake::{self, TableKind};
    use crate::messages::query::{OhlcvRequest, QueryRequest, RecentRequest};
    use crate::messages::tail::{TailRow, Tailed};
    use actix::Actor;

    let lake_err = |e: crate::lake::LakeError| BenchApiError::Poll(e.to_string());
    let (dir, keep) = match lake_dir {
        Some(d) => (d.to_path_buf(), true),
        None => {
            let run_id = uuid::Uuid::new_v4().simple().to_string();
            let d = std::env::temp_dir().join(format!("ticklake-bench-latency-{run_id}"));
            (d, false)
        }
    };
    let warehouse = match &o.warehouse {
        None => None,
        Some(w) => {
            crate::config::WarehouseUrl::parse(w)
                .map_err(|e| BenchApiError::Warehouse(w.clone(), e.to_string()))?;
            let w = w.trim_end_matches('/');
            Some(match (keep, dir.file_name()) {
                (false, Some(run)) => format!("{w}/{}", run.to_string_lossy()),
                _ => w.to_string(),
            })
        }
    };
    let built = history::Built::read(&dir)?;
    if let Some(b) = &built
        && (b.lake_trades, b.commits, &b.warehouse) != (lake_trades, commits, &warehouse)
    {
        return Err(BenchApiError::LakeDir(
            dir.clone(),
            format!(
                "it holds a lake of {} trades in {:?} commits in warehouse {:?}, \
                 not {lake_trades} in {commits:?} in {warehouse:?}",
                b.lake_trades, b.commits, b.warehouse
            ),
        ));
    }
    let mut cfg = base.under(&dir);
    if let Some(w) = &warehouse {
        cfg.lake.warehouse = w.clone();
    }
    // DuckDB is given the files as a local glob.
    let local_warehouse = crate::lake::store::local_path(&cfg.warehouse());
    if duckdb_python.is_some() && local_warehouse.is_none() {
        return Err(BenchApiError::Warehouse(
            cfg.warehouse(),
            "--duckdb-python reads the lake's files from the local disk; \
             time DuckDB on a local warehouse"
                .into(),
        ));
    }
    let started = Instant::now();
    let catalog = lake::open_catalog(&cfg).await.map_err(lake_err)?;
    let table = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
        .await
        .map_err(lake_err)?;
    let schema = lake::batch::arrow_schema(table.metadata().current_schema()).map_err(lake_err)?;
    let ident = lake::table_ident(&cfg, TableKind::Trades);
    // A lake kept from an earlier run keeps that run's clock, so its
    // trades stay where the queries look.
    let now = built.as_ref().map_or_else(now_us, |b| b.now_us);
    let day = 86_400_000_000i64;
    let tail_span = 300_000_000i64;
    let lake_start = now - tail_span - day;
    let topic = "bench.trades";
    let shape = history::Shape {
        trades: lake_trades,
        start: lake_start,
        span: day,
        topic,
    };
    if built.is_none() {
        history::build(&cfg, catalog.as_ref(), &ident, &schema, &shape, commits).await?;
        if keep {
            history::Built {
                now_us: now,
                lake_trades,
                commits,
                warehouse: warehouse.clone(),
            }
            .write(&dir)?;
        }
    }
    // A kept lake built before the bars were kept as it was built gets
    // them in one run; otherwise this finds them covering every commit.
    upkeep::summarize_bars(&cfg, catalog.as_ref(), &ident).await?;
    // The tail starts at the lake's next offset: past the lake's own
    // trades, and past the commits an earlier run on a kept lake added.
    let first = {
        let table = catalog
            .load_table(&ident)
            .await
            .map_err(|e| BenchApiError::Poll(e.to_string()))?;
        lake::commit::current_offsets(&table)
            .map_err(lake_err)?
            .and_then(|(_, o)| o.get(topic, 0))
            .map_or(lake_trades, |o| o.max(0) as usize)
    };
    let maintenance = if maintain {
        Some(upkeep::maintain_lake(&cfg, &catalog, &ident).await?)
    } else {
        None
    };
    let view = crate::query::tail::TailView::default();
    let tail = TailActor::new("bench", tail_trades + 1, schema.clone(), view.clone()).start();
    let tail_ts = |j: usize| {
        now - tail_span + (j as i128 * tail_span as i128 / tail_trades.max(1) as i128) as i64
    };
    let rows: Vec<TailRow> = (0..tail_trades)
        .map(|j| {
            let i = first + j;
            TailRow {
                topic: Arc::from(topic),
                partition: 0,
                offset: i as i64,
                trade: Arc::new(synthetic_trade(i, tail_ts(j))),
            }
        })
        .collect();
    tail.send(Tailed::Rows(rows))
        .await
        .map_err(|e| BenchApiError::Poll(e.to_string()))?;
    let engine = crate::query::session::engine(&cfg, Some(view))
        .await
        .map_err(|e| BenchApiError::Poll(e.to_string()))?
        .with_clock(Arc::new(move || now))
        .with_bars_cached();
    engine.refresh_bars().await; // as the query actor does after a bars commit
    let build_seconds = started.elapsed().as_secs_f64();

    // Whole minutes, as a client asks for bars: the minute table can
    // answer them (`query::engine::bars`).
    let ohlcv_end = (now.div_euclid(60_000_000) + 1) * 60_000_000;
    let symbol = SYMBOLS[0].to_string();
    let plan = history::profile(&catalog, &ident, &symbol, now, day, 5).await?;
    let recent = || {
        QueryRequest::Recent(RecentRequest {
            symbol: symbol.clone(),
            exchange: None,
            minutes: 15,
            limit: None,
        })
    };
    let ohlcv = || {
        QueryRequest::Ohlcv(OhlcvRequest {
            symbol: symbol.clone(),
            exchange: None,
            interval: crate::messages::query::Interval::M1,
            start_us: ohlcv_end - day,
            end_us: ohlcv_end,
        })
    };
    let run = |q| async {
        engine
            .run(q)
            .await
            .map_err(|e| BenchApiError::Poll(e.to_string()))
    };
    // The answer's row count, read after the clock stopped.
    let count = |a: &crate::messages::query::Answer| {
        serde_json::from_str::<serde_json::Value>(&a.text())
            .ok()
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0) as usize
    };
    // Warm the caches (metadata, page cache) once each.
    run(recent()).await?;
    run(ohlcv()).await?;
    let (mut recent_ms, mut ohlcv_ms) = (Vec::new(), Vec::new());
    let (mut recent_rows, mut ohlcv_bars) = (0, 0);
    for _ in 0..iterations {
        let t = Instant::now();
        let v = timed(&mut recent_ms, t, run(recent()).await?);
        recent_rows = count(&v);
        let t = Instant::now();
        let v = timed(&mut ohlcv_ms, t, run(ohlcv()).await?);
        ohlcv_bars = count(&v);
    }
    let mut cold_ms = Vec::new();
    for _ in 0..iterations {
        engine.forget_lake_facts();
        let t = Instant::now();
        timed(&mut cold_ms, t, run(recent()).await?);
    }
    // As the daemon lives: a commit, the query actor's refresh and its
    // learning of the lake's newest trades, then the first queries on the
    // new snapshot. The commits take the tail's oldest trades, as the
    // writer would (the tail keeps them: a pin past their offsets skips
    // them, so the answers stay exact).
    let found = if keep {
        Some(history::Found::note(catalog.as_ref(), &ident).await?)
    } else {
        None
    };
    let mut after = AfterCommit::default();
    let step = (tail_trades / 20).max(1);
    for c in 0..AFTER_COMMITS {
        let (from, to) = (c * step, (c + 1) * step);
        let rows = (from..to)
            .map(|j| synthetic_trade(first + j, tail_ts(j)))
            .collect();
        history::commit_trades(
            catalog.as_ref(),
            &ident,
            &schema,
            topic,
            rows,
            (first + to) as i64,
        )
        .await?;
        let t = Instant::now();
        engine.refresh().await;
        timed(&mut after.refresh_ms, t, ());
        let t = Instant::now();
        engine.learn_lake_facts().await;
        timed(&mut after.learn_ms, t, ());
        let t = Instant::now();
        timed(&mut after.recent_ms, t, run(recent()).await?);
        let t = Instant::now();
        timed(&mut after.ohlcv_ms, t, run(ohlcv()).await?);
    }
    // A kept lake is put back as this run found it, before DuckDB reads
    // its files, so that every run on it measures the same lake.
    let kept_lake_files_removed = match found {
        Some(found) => Some(found.restore(&cfg, catalog.as_ref(), &ident).await?),
        None => None,
    };
    recent_ms.sort_by(f64::total_cmp);
    cold_ms.sort_by(f64::total_cmp);
    ohlcv_ms.sort_by(f64::total_cmp);

    let mut duck: Option<(f64, u64)> = None;
    if let Some(py) = duckdb_python {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_duckdb.py");
        // The trades table's files only (the minute bars sit beside it).
        let glob = format!(
            "{}/{}/trades/**/*.parquet",
            local_warehouse
                .as_deref()
                .unwrap_or(dir.as_path())
                .display(),
            cfg.lake.namespace
        );
        let out = std::process::Command::new(py)
            .arg(script)
            .args(["--glob", &glob, "--symbol", &symbol])
            .args(["--start-us", &(ohlcv_end - day).to_string()])
            .args(["--end-us", &ohlcv_end.to_string()])
            .args(["--iterations", &iterations.max(1).to_string()])
            .output()
            .map_err(|e| BenchApiError::Poll(format!("duckdb: {e}")))?;
        if !out.status.success() {
            return Err(BenchApiError::Poll(format!(
                "duckdb: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| BenchApiError::Poll(format!("duckdb output: {e}")))?;
        duck = v["p50_ms"]
            .as_f64()
            .map(|p| (p, v["bars"].as_u64().unwrap_or(0)));
    }
    if !keep {
        // A run's own prefix in a `--warehouse` goes with its directory,
        // on whichever store it is (the default warehouse is inside the
        // directory).
        if let Some(w) = warehouse.as_deref() {
            table
                .file_io()
                .delete_prefix(w)
                .await
                .map_err(|e| BenchApiError::Warehouse(w.to_string(), e.to_string()))?;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let ohlcv_p50 = percentile(&ohlcv_ms, 0.5);
    let max = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
    Ok(LatencyReport {
        maintenance,
        lake_trades,
        commits,
        tail_trades,
        iterations,
        build_seconds,
        plan,
        recent_rows,
        recent_p50_ms: percentile(&recent_ms, 0.5),
        recent_p99_ms: percentile(&recent_ms, 0.99),
        recent_max_ms: max(&recent_ms),
        recent_cold_p50_ms: percentile(&cold_ms, 0.5),
        recent_cold_p99_ms: percentile(&cold_ms, 0.99),
        recent_cold_max_ms: max(&cold_ms),
        ohlcv_bars,
        ohlcv_p50_ms: ohlcv_p50,
        ohlcv_p99_ms: percentile(&ohlcv_ms, 0.99),
        ohlcv_max_ms: max(&ohlcv_ms),
        after_commit: after.medians(),
        duckdb_ohlcv_p50_ms: duck.map(|d| d.0),
        duckdb_ohlcv_bars: duck.map(|d| d.1),
        ohlcv_ratio: duck.map(|d| ohlcv_p50 / d.0),
        kept_lake_files_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files of a lake kept in `dir` (its catalog database aside,
    /// which every open rewrites), each with its size.
    fn lake_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
        let mut files: Vec<_> = walkdir::WalkDir::new(dir.join("warehouse"))
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let size = e.metadata().unwrap().len();
                (e.into_path(), size)
            })
            .collect();
        files.sort();
        files
    }

    /// A run small enough for a test: 2,000 trades in the lake, 400 in the
    /// tail, one iteration.
    fn small_run(
        lake_dir: Option<std::path::PathBuf>,
        warehouse: Option<String>,
    ) -> LatencyOptions {
        LatencyOptions {
            lake_trades: 2_000,
            commits: None,
            lake_dir,
            warehouse,
            tail_trades: 400,
            iterations: 1,
            duckdb_python: None,
            maintain: false,
        }
    }

    /// A second run on a kept lake measures the lake the first one built:
    /// the commits each run adds to time what a commit costs the query
    /// side are taken back, the table pointed at its metadata as found and
    /// their files deleted.
    #[actix_rt::test]
    async fn a_kept_lake_is_the_same_after_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let o = small_run(Some(dir.path().to_path_buf()), None);
        let base = Config::default();
        let first = latency(&base, &o).await.unwrap();
        let built = lake_files(dir.path());
        let second = latency(&base, &o).await.unwrap();
        assert_eq!(lake_files(dir.path()), built);
        // Each run's commits wrote a data file, a manifest, a manifest list
        // and a metadata file at least, and each took them back.
        for r in [&first, &second] {
            assert!(
                r.kept_lake_files_removed
                    .is_some_and(|n| n >= 4 * AFTER_COMMITS),
                "{:?}",
                r.kept_lake_files_removed
            );
            assert_eq!(r.recent_rows, second.recent_rows);
        }
        let cfg = base.under(dir.path());
        let catalog = crate::lake::open_catalog(&cfg).await.unwrap();
        let ident = crate::lake::table_ident(&cfg, crate::lake::TableKind::Trades);
        let table = catalog.load_table(&ident).await.unwrap();
        let rows: i64 = table
            .metadata()
            .current_snapshot()
            .and_then(|s| {
                s.summary()
                    .additional_properties
                    .get("total-records")
                    .cloned()
            })
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(rows, 2_000, "the lake holds its own trades only");
    }

    /// A run of its own with `--warehouse` on the local disk, outside its
    /// temporary directory, writes there under a prefix of its own and
    /// leaves nothing behind.
    #[actix_rt::test]
    async fn a_run_of_its_own_leaves_nothing_in_its_warehouse() {
        let warehouse = tempfile::tempdir().unwrap();
        let o = small_run(None, Some(format!("file://{}", warehouse.path().display())));
        let r = latency(&Config::default(), &o).await.unwrap();
        assert!(r.plan.data_files > 0 && r.recent_rows > 0, "{r:?}");
        let left: Vec<_> = walkdir::WalkDir::new(warehouse.path())
            .min_depth(1)
            .into_iter()
            .map(|e| e.unwrap().into_path())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
