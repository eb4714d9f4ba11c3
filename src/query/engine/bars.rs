//! `/v1/ohlcv` from the minute bars kept at write time (`lake::bars`).
//!
//! The answer is the one the raw trades give, bar for bar: the bars table
//! at the newest snapshot that covers no more than the pinned trades
//! snapshot, merged with partial bars computed here from what it does not
//! cover: the rows the trades snapshots after it added (usually none: the
//! bars follow each trades commit within moments) and the tail rows past
//! the pinned snapshot's offsets. A minute's partial rows merge by the
//! trades order (timestamp, source sequence, message id), so late trades
//! and minutes split over commits come out as the raw computation gives.
//!
//! Only whole minutes can come from bars: a request whose start or end is
//! not on a minute, an empty lake, or bars that cannot be matched to the
//! pinned snapshot (no bars table, expired history) go the raw way.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use datafusion::functions_aggregate::expr_fn::{first_value, last_value, max, min, sum};
use datafusion::prelude::col;
use iceberg::TableIdent;
use iceberg::table::Table;
use serde_json::json;

use super::{
    Engine, Request, answer, bar_order, collect, df_err, filtered, ohlcv_filters, rows_in,
    time_bucket,
};
use crate::lake::bars::{self, Aggregator, FileBars};
use crate::lake::files::Planner;
use crate::lake::scan::SnapshotTable;
use crate::lake::schema::BARS_TABLE;
use crate::messages::query::{Answer, OhlcvRequest, QueryError};
use crate::query::budget::Held;
use crate::query::hybrid::{PinnedTable, tail_filter};
use crate::query::json::json_rows;

const MINUTE_US: i64 = 60_000_000;

/// Where `/v1/ohlcv` finds the minute bars.
pub(crate) struct BarsSource {
    pub(super) enabled: bool,
    /// The bars table as last loaded, when something refreshes it after
    /// each bars commit; otherwise it is loaded at every request. A stale
    /// one is still exact (what it does not cover is summarized at query
    /// time), only slower.
    pub(super) cached: Option<PinnedTable>,
    /// Its files, indexed once per manifest: a request plans them in
    /// memory instead of reading the manifest list and manifests.
    planner: Planner,
    /// The partial bars of every symbol in the rows each recent trades
    /// snapshot added, by (table uuid, snapshot id): the snapshots the bars
    /// do not cover yet are summarized once, not at every request.
    gap: Mutex<VecDeque<(GapKey, Arc<Aggregator>)>>,
    /// The bars table's data files, decoded once each into partial bars
    /// by symbol and minute (files never change; a minute's bars are a few
    /// rows, and between compactions a day's bars sit in hundreds of small
    /// files).
    files: Mutex<FileCache>,
}

/// Decoded files by path, within a byte budget.
#[derive(Default)]
struct FileCache {
    files: HashMap<Arc<str>, Arc<FileBars>>,
    bytes: usize,
}

/// What the decoded bars files may hold; past it the cache starts over.
const BARS_CACHE_BYTES: usize = 256 << 20;

type GapKey = (uuid::Uuid, i64);

/// Trades snapshots whose partial bars are kept: more than the bars ever
/// lag behind the trades.
const GAP_SNAPSHOTS_KEPT: usize = 256;

impl Default for BarsSource {
    fn default() -> Self {
        Self {
            enabled: true,
            cached: None,
            planner: Planner::for_time_column("minute"),
            gap: Mutex::new(VecDeque::new()),
            files: Mutex::new(FileCache::default()),
        }
    }
}

impl Engine {
    fn bars_ident(&self) -> TableIdent {
        TableIdent::new(self.ident.namespace().clone(), BARS_TABLE.to_string())
    }

    /// Loads the bars table's newest snapshot and indexes its files, for
    /// the requests to come (an engine made `with_bars_cached`).
    pub async fn refresh_bars(&self) {
        let Some(cache) = &self.bars.cached else {
            return;
        };
        match self.catalog.load_table(&self.bars_ident()).await {
            Ok(t) => {
                if let Err(e) = self.bars.planner.prepare(&t).await {
                    tracing::debug!(error = %e, "query: indexing the bars' files failed; the first request retries");
                }
                cache.set(t);
            }
            Err(e) => tracing::debug!(error = %e, "query: loading the bars table failed"),
        }
    }

    /// The partial bars of the rows trades snapshot `s` added, every
    /// symbol's, summarized on the first request that needs them.
    async fn gap_summary(
        &self,
        trades: &Table,
        key: GapKey,
        s: &iceberg::spec::SnapshotRef,
    ) -> Result<Arc<Aggregator>, QueryError> {
        let cached = |g: &VecDeque<(GapKey, Arc<Aggregator>)>| {
            g.iter().find(|(k, _)| *k == key).map(|(_, a)| a.clone())
        };
        if let Some(a) = self.bars.gap.lock().ok().and_then(|g| cached(&g)) {
            return Ok(a);
        }
        let files = bars::added_files(trades, s)
            .await
            .map_err(QueryError::internal)?;
        let mut all = Aggregator::default();
        bars::summarize_files(trades, &files, &mut all)
            .await
            .map_err(QueryError::internal)?;
        let all = Arc::new(all);
        if let Ok(mut g) = self.bars.gap.lock() {
            if cached(&g).is_none() {
                g.push_back((key, all.clone()));
            }
            while g.len() > GAP_SNAPSHOTS_KEPT {
                g.pop_front();
            }
        }
        Ok(all)
    }

    /// The decoded data files of `table` at `snapshot` that can hold rows
    /// matching `preds`, or `None` when the planner cannot list them.
    async fn bars_files(
        &self,
        table: &Table,
        snapshot: i64,
        preds: &[datafusion::logical_expr::Expr],
    ) -> Result<Option<Vec<Arc<FileBars>>>, QueryError> {
        let Some(planned) = self
            .bars
            .planner
            .plan(table, snapshot, preds)
            .await
            .map_err(df_err)?
        else {
            return Ok(None);
        };
        // One look at the cache for every file (a thousand between
        // compactions), then the misses read and decoded.
        let mut out: Vec<Option<Arc<FileBars>>> = match self.bars.files.lock() {
            Ok(c) => planned
                .iter()
                .map(|f| c.files.get(&f.path).cloned())
                .collect(),
            Err(_) => vec![None; planned.len()],
        };
        for (f, slot) in planned.iter().zip(out.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let batches = crate::lake::commit::read_data_file(table, &f.path)
                .await
                .map_err(QueryError::internal)?;
            let b = Arc::new(FileBars::decode(&batches).map_err(QueryError::internal)?);
            if let Ok(mut c) = self.bars.files.lock() {
                let size = b.bytes();
                if c.bytes + size > BARS_CACHE_BYTES {
                    *c = FileCache::default();
                }
                c.bytes += size;
                c.files.insert(f.path.clone(), b.clone());
            }
            *slot = Some(b);
        }
        Ok(Some(out.into_iter().flatten().collect()))
    }

    /// The bars table: the one kept loaded, else from the catalog.
    async fn bars_table(&self) -> Option<Table> {
        if let Some(t) = self.bars.cached.as_ref().and_then(PinnedTable::get) {
            return Some(t);
        }
        let t = self.catalog.load_table(&self.bars_ident()).await.ok()?;
        if let Some(cache) = &self.bars.cached {
            cache.set(t.clone());
        }
        Some(t)
    }

    /// The roll-up where some bars are read by DataFusion (the planner
    /// could not list the bars' files): the stored bars and `partials`
    /// merged and rolled up to `step` in one query.
    async fn roll_up_in_datafusion(
        &self,
        table: &Table,
        provider: SnapshotTable,
        partials: Aggregator,
        preds: Vec<datafusion::logical_expr::Expr>,
        step: i64,
        q: &Request<'_>,
    ) -> Result<Held, QueryError> {
        let schema = crate::lake::batch::arrow_schema(table.metadata().current_schema())
            .map_err(QueryError::internal)?;
        let extra = partials.into_batch(&schema).map_err(QueryError::internal)?;
        let fresh = self.ctx.read_batch(extra).map_err(df_err)?;
        let merged = filtered(
            self.ctx.read_table(Arc::new(provider)).map_err(df_err)?,
            preds,
        )?
        .union(fresh)
        .map_err(df_err)?;
        let df = merged
            .aggregate(
                vec![time_bucket(step, "minute")],
                vec![
                    first_value(col("open"), bar_order("open_ts", "open_seq", "open_id"))
                        .alias("open"),
                    max(col("high")).alias("high"),
                    min(col("low")).alias("low"),
                    last_value(col("close"), bar_order("close_ts", "close_seq", "close_id"))
                        .alias("close"),
                    sum(col("volume")).alias("volume"),
                    sum(col("trades")).alias("trades"),
                ],
            )
            .and_then(|d| d.sort(vec![col("time").sort(true, false)]))
            .map_err(df_err)?;
        let (rows, _) = collect(df, q, None).await?;
        Ok(rows)
    }

    /// The OHLCV answer from the bars, or `None` when it must come from
    /// the raw trades.
    pub(super) async fn ohlcv_from_bars(
        &self,
        r: &OhlcvRequest,
        q: &Request<'_>,
    ) -> Result<Option<Answer>, QueryError> {
        if !self.bars.enabled || r.start_us % MINUTE_US != 0 || r.end_us % MINUTE_US != 0 {
            return Ok(None);
        }
        let t0 = std::time::Instant::now();
        let Some(table) = self.bars_table().await else {
            return Ok(None);
        };
        q.cancel.check()?;
        // The raw way's filters, so the tail gives the same rows.
        let preds = ohlcv_filters(r, "timestamp");
        let pin = self
            .live
            .pin_now(&tail_filter(&preds))
            .await
            .map_err(df_err)?;
        let Some(snapshot_id) = pin.snapshot_id() else {
            return Ok(None);
        };
        let trades = pin.table();
        let Some(upto) = trades
            .metadata()
            .snapshot_by_id(snapshot_id)
            .map(|s| s.sequence_number())
        else {
            return Ok(None);
        };
        let Some((bars_snapshot, covered)) = bars::covered_at_most(&table, upto) else {
            return Ok(None);
        };
        let Some(gap) = bars::snapshots_between(trades, covered, upto) else {
            return Ok(None);
        };
        let keep = |x: &str, s: &str, t: i64| {
            s == r.symbol
                && r.exchange.as_deref().is_none_or(|e| e == x)
                && t >= r.start_us
                && t < r.end_us
        };
        let mut partials = Aggregator::default();
        let uuid = trades.metadata().uuid();
        for s in &gap {
            let summary = self.gap_summary(trades, (uuid, s.snapshot_id()), s).await?;
            // Whole minutes: the bounds by minute are the bounds by time.
            partials.merge_from(&summary, |x, s, m| keep(x, s, m));
            q.cancel.check()?;
        }
        for b in pin.rows() {
            partials.add(b, keep).map_err(QueryError::internal)?;
        }
        let tail_rows: usize = pin.rows().iter().map(|b| b.num_rows()).sum();
        let t_gap = t0.elapsed();
        let preds = ohlcv_filters(r, "minute");
        // The stored bars merged here with the rest, from files decoded
        // once; where the planner cannot list the files (delete files),
        // DataFusion reads them and the union below merges.
        let stored = match self.bars_files(&table, bars_snapshot, &preds).await? {
            Some(files) => {
                for f in &files {
                    f.merge_into(
                        &mut partials,
                        &r.symbol,
                        r.exchange.as_deref(),
                        (r.start_us, r.end_us),
                    );
                }
                None
            }
            None => Some(
                SnapshotTable::new(table.clone(), bars_snapshot, self.bars.planner.clone())
                    .map_err(QueryError::internal)?,
            ),
        };
        let t_stored = t0.elapsed();
        let step = r.interval.micros();
        let rows = match stored {
            // Every bar is in memory: rolled up here, as DataFusion would
            // (`Aggregator::roll_up`; `tests` check both against the raw
            // trades), without planning a query for 1,440 rows.
            None => {
                let bars = partials.roll_up(step).map_err(QueryError::internal)?;
                let held = q.memory.empty();
                q.memory.hold_batch(&held, &bars)?;
                Held::new(vec![bars], held)
            }
            Some(provider) => {
                self.roll_up_in_datafusion(&table, provider, partials, preds, step, q)
                    .await?
            }
        };
        // Where a slow answer spent its time, for `RUST_LOG=ticklake::query=debug`.
        tracing::debug!(
            gap_snapshots = gap.len(),
            pin_and_gap_ms = t_gap.as_secs_f64() * 1000.0,
            stored_ms = (t_stored - t_gap).as_secs_f64() * 1000.0,
            roll_up_ms = (t0.elapsed() - t_stored).as_secs_f64() * 1000.0,
            "ohlcv from the minute bars"
        );
        let batches = &rows.batches;
        let head = json!({
            "source": "hybrid",
            "snapshot_id": snapshot_id,
            "tail_rows_scanned": tail_rows,
            "symbol": r.symbol,
            "interval": r.interval.as_str(),
            "count": rows_in(batches),
        });
        Ok(Some(answer(
            head,
            "bars",
            json_rows(batches, &q.memory, q.cancel)?,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::lake::commit::append;
    use crate::lake::{self, TableKind};
    use crate::messages::query::{Interval, QueryRequest};
    use crate::model::{Dec8, TradeV2};

    const DAY: i64 = 86_400_000_000;
    const T0: i64 = 1_700_006_400_000_000; // a day's start

    fn trade(id: i64, ts: i64, price: &str, qty: &str, seq: Option<i64>) -> TradeV2 {
        let mut t = TradeV2::builder("X", "BTCUSDT", &id.to_string(), ts)
            .price(Dec8::parse(price).unwrap())
            .quantity(Dec8::parse(qty).unwrap())
            .build();
        t.source_sequence = seq;
        t
    }

    /// Commits `rows`; returns the snapshot and the rows as written.
    async fn commit(
        cfg: &Config,
        catalog: &dyn iceberg::Catalog,
        rows: Vec<TradeV2>,
        next: i64,
    ) -> (i64, arrow::array::RecordBatch) {
        let ident = lake::table_ident(cfg, TableKind::Trades);
        let table = catalog.load_table(&ident).await.unwrap();
        let schema = lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
        let batch = lake::batch::trades_batch(&schema, &rows).unwrap();
        let o = crate::lake::commit::one_partition(next);
        let c = append(catalog, &ident, Some(&batch), &o, 1 << 20)
            .await
            .unwrap();
        (c.snapshot_id, batch)
    }

    /// Every interval, from the bars equal to from the raw trades: with a
    /// commit the bars do not cover yet, with late trades that land after
    /// their minute was summarized (a new open, a new close, a new high),
    /// and with ties on the timestamp broken by source sequence.
    #[tokio::test]
    async fn bars_answer_as_the_raw_trades_do_on_every_interval_with_late_trades() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default().under(dir.path());
        let raw = crate::query::session::engine(&cfg, None)
            .await
            .unwrap()
            .without_bars();
        let fast = crate::query::session::engine(&cfg, None).await.unwrap();
        // As the daemon's: the bars table kept loaded, refreshed when told.
        let kept = crate::query::session::engine(&cfg, None)
            .await
            .unwrap()
            .with_bars_cached();
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        let trades = lake::table_ident(&cfg, TableKind::Trades);
        let bars_ident = lake::bars_ident(&cfg);
        lake::bars::ensure_table(catalog.as_ref(), &cfg)
            .await
            .unwrap();
        let m = 60_000_000;
        // Minutes 0..3 of the day, ties on the timestamp in minute 1.
        commit(
            &cfg,
            catalog.as_ref(),
            vec![
                trade(1, T0 + 5, "100", "1", Some(10)),
                trade(2, T0 + 30_000_000, "101.5", "0.25", None),
                trade(3, T0 + m + 7, "99", "2", Some(3)),
                trade(4, T0 + m + 7, "98", "1", Some(2)),
                trade(5, T0 + m + 7, "97", "1", None),
                trade(6, T0 + 2 * m + 1, "103", "0.5", Some(1)),
                trade(7, T0 + 16 * m, "104", "3", Some(1)),
            ],
            7,
        )
        .await;
        let ask = |interval| {
            QueryRequest::Ohlcv(OhlcvRequest {
                symbol: "BTCUSDT".into(),
                exchange: None,
                interval,
                start_us: T0,
                end_us: T0 + DAY,
            })
        };
        let intervals = [
            Interval::M1,
            Interval::M5,
            Interval::M15,
            Interval::H1,
            Interval::D1,
        ];
        let check = |phase: &'static str| {
            let (raw, fast, kept) = (&raw, &fast, &kept);
            async move {
                for i in intervals {
                    let want = raw.run(ask(i)).await.unwrap().text();
                    let got = fast.run(ask(i)).await.unwrap().text();
                    assert_eq!(got, want, "{phase}, {}", i.as_str());
                    let got = kept.run(ask(i)).await.unwrap().text();
                    assert_eq!(got, want, "{phase}, kept bars, {}", i.as_str());
                }
            }
        };
        check("no bars yet").await;
        // These from the files the commits added.
        let c = lake::bars::catch_up(catalog.as_ref(), &trades, &bars_ident, 1 << 20)
            .await
            .unwrap();
        assert_eq!(c.trades_snapshots_in_memory, 0, "{c:?}");
        check("bars of every commit, the kept table not refreshed").await;
        kept.refresh_bars().await;
        check("bars of every commit").await;
        // Late: a new open and a new high for minute 0, a new close for
        // minute 2, a trade tied with minute 1's open on the timestamp.
        let late = commit(
            &cfg,
            catalog.as_ref(),
            vec![
                trade(8, T0 + 1, "95", "1", Some(1)),
                trade(9, T0 + 40_000_000, "120", "1", None),
                trade(10, T0 + 2 * m + 50_000_000, "90", "4", Some(9)),
                trade(11, T0 + m + 7, "96", "1", Some(1)),
            ],
            11,
        )
        .await;
        check("late trades not summarized yet").await;
        // These from the rows as their writer handed them over, as the
        // daemon's bars actor has them: no file read back.
        let known = lake::bars::Known::from([late]);
        let c = lake::bars::catch_up_to(
            catalog.as_ref(),
            &trades,
            &bars_ident,
            1 << 20,
            None,
            &known,
        )
        .await
        .unwrap();
        assert_eq!(c.trades_rows, 4, "{c:?}");
        assert_eq!(
            (c.trades_snapshots, c.trades_snapshots_in_memory),
            (1, 1),
            "{c:?}"
        );
        kept.refresh_bars().await;
        check("late trades as correction rows").await;
        // The answer is what the trades say, not just what both agree on.
        let text = fast.run(ask(Interval::M1)).await.unwrap().text();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let bar0 = &v["bars"][0];
        assert_eq!(bar0["open"], "95.00000000", "{v}");
        assert_eq!(bar0["high"], "120.00000000", "{v}");
        assert_eq!(bar0["trades"], 4, "{v}");
        let bar1 = &v["bars"][1];
        assert_eq!(bar1["open"], "97.00000000", "no sequence sorts first: {v}");
        assert_eq!(bar1["close"], "99.00000000", "{v}");
        assert_eq!(v["bars"][2]["close"], "90.00000000", "{v}");

        // Compaction merges each minute's partial rows (two commits and a
        // correction) into one, and the answers stay the raw trades'.
        let bar_rows = |t: &iceberg::table::Table| {
            t.metadata()
                .current_snapshot()
                .and_then(|s| s.summary().additional_properties.get("total-records"))
                .and_then(|n| n.parse::<u64>().ok())
        };
        let before = catalog.load_table(&bars_ident).await.unwrap();
        assert_eq!(bar_rows(&before), Some(7), "4 minutes, then 3 corrections");
        let db = crate::lake::compact::CatalogDb::open(&cfg)
            .await
            .unwrap()
            .unwrap();
        let policy = crate::lake::compact::CompactPolicy {
            target_file_size: 1 << 20,
            min_files: 2,
            min_age: std::time::Duration::ZERO,
            sort: vec!["exchange".into(), "symbol".into(), "minute".into()],
            merge: Some(crate::lake::bars::merge_partials),
        };
        let r = crate::lake::compact::compact(catalog.as_ref(), &db, &bars_ident, &policy)
            .await
            .unwrap();
        assert!(r.snapshot_id.is_some(), "{r:?}");
        let after = catalog.load_table(&bars_ident).await.unwrap();
        assert_eq!(bar_rows(&after), Some(4), "one row per minute: {r:?}");
        kept.refresh_bars().await;
        check("partial rows merged by compaction").await;
    }
}
