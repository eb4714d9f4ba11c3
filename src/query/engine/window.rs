//! `/v1/trades/recent`'s lake side, kept decoded between queries.
//!
//! A poller asks for the same symbol's last minutes again and again, and
//! the lake's part of that answer changes only when a commit adds files.
//! Read from Parquet each time, the page cost a decode of the row groups
//! around the window (pages of 20,000 rows and more for a window of a few
//! thousand) and a codec set up per column chunk: most of the query's
//! 10 ms on a compacted lake, and far more on the small files of the last
//! minutes before compaction reaches them. So the engine keeps, per
//! (symbol or instrument, exchange) asked, the lake's rows of the window
//! at one snapshot (`LakeWindow`), and carries them to the next snapshot
//! by reading only the files the commit added: Iceberg data files never
//! change, so when every file the window was read from is still in the
//! new snapshot, the new rows are exactly the old ones plus those of the
//! added files. A snapshot that dropped one of them (compaction, expiry of
//! a partition) is read again whole. The entries share
//! `api.recent_cache_bytes`, the least recently asked dropped first.
//!
//! A window holding far more rows than a page is read only to twice the
//! page, newest first, and kept as the rows after the oldest timestamp
//! among them: all the lake holds after that time, though not the whole
//! window. Such an entry serves a page as long as it and the tail's rows
//! after that time make more than the page (`covers`), which they do
//! right after a commit, when the tail has just handed the page's rows to
//! the lake: before, each poll then read the window's files again until
//! the tail alone filled the page (7 ms a poll at 10,000 trades/s, for
//! half a second after every commit).

use std::collections::HashSet;

use arrow::array::{BooleanArray, TimestampMicrosecondArray};
use arrow::compute::filter_record_batch;

use super::recent::{RecentWindow, WindowKey};
use super::*;
use crate::lake::files::PlannedFile;
use crate::lake::scan::{SnapshotTable, local_files};

/// How far below a query's start an entry keeps rows when it moves on, so
/// that pollers asking windows a few minutes apart share one entry instead
/// of each reading the lake again.
const KEEP_BELOW_US: i64 = 5 * 60 * 1_000_000;

/// How a page's lake side was found, as counted in
/// `ticklake_query_recent_windows_total{outcome}`: `kept` (this snapshot's
/// rows were kept), `carried` (kept rows carried to a new snapshot, here or
/// right after a commit), `read` (read whole, then kept), `not_kept` (read
/// whole, too large to keep).
const OUTCOMES: [&str; 4] = ["kept", "carried", "read", "not_kept"];

#[derive(Clone, Copy)]
enum Outcome {
    Kept,
    Carried,
    Read,
    NotKept,
}

/// The outcomes counted, for the engine and its metric.
#[derive(Default)]
pub(super) struct WindowCounts {
    counts: [std::sync::atomic::AtomicU64; 4],
    metric: Option<prometheus::IntCounterVec>,
}

impl WindowCounts {
    pub(super) fn with_metric(metric: prometheus::IntCounterVec) -> Self {
        for o in OUTCOMES {
            metric.with_label_values(&[o]).inc_by(0);
        }
        Self {
            counts: Default::default(),
            metric: Some(metric),
        }
    }

    fn add(&self, o: Outcome) {
        let i = o as usize;
        self.counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(m) = &self.metric {
            m.with_label_values(&[OUTCOMES[i]]).inc();
        }
    }

    pub(super) fn get(&self) -> [(&'static str, u64); 4] {
        std::array::from_fn(|i| {
            (
                OUTCOMES[i],
                self.counts[i].load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }
}

/// Which window an entry holds: its symbol or instrument, and exchange.
type Key = WindowKey;

/// The lake's rows of one symbol or instrument (and exchange) with
/// timestamps at or after `from`, at one snapshot: all of them, in no
/// particular order, with the files they were read from.
struct LakeWindow {
    snapshot_id: i64,
    sequence: i64,
    from: i64,
    files: HashSet<Arc<str>>,
    rows: Vec<RecordBatch>,
    bytes: usize,
    used: u64,
}

/// The windows kept, within a byte budget.
#[derive(Default)]
pub(super) struct WindowCache {
    entries: HashMap<Key, LakeWindow>,
    bytes: usize,
    tick: u64,
}

/// What an entry offers a query at a snapshot.
enum Found {
    /// Rows of this very snapshot: their `from` and rows. They serve a
    /// query whose start is at or after `from` whole, and one whose start
    /// is before it when they and the tail's rows at or after `from` make
    /// more than a page (`covers`).
    Exact(i64, Vec<RecordBatch>),
    /// Rows of an older snapshot to carry forward: their `from`, files
    /// and rows.
    Older(i64, HashSet<Arc<str>>, Vec<RecordBatch>),
    Nothing,
}

/// Whether the lake's rows at or after `from` (`lake`, all of them) and
/// the window's tail rows (`tail`, all of them) decide a page of `limit`
/// rows of a window starting at `start`: when `from` is at or before the
/// start, they are the whole window; else when at least `limit + 1` of
/// them are at or after `from`, since every lake row not among them is
/// older than all of those, so neither the page nor whether more rows
/// match depends on the lake's rows before `from`.
fn covers(
    from: i64,
    start: i64,
    lake: &[RecordBatch],
    tail: &[RecordBatch],
    limit: usize,
) -> Result<bool, QueryError> {
    if from <= start {
        return Ok(true);
    }
    let mut known = rows_in(lake);
    for b in tail {
        known += timestamps(b)?
            .values()
            .iter()
            .filter(|&&t| t >= from)
            .count();
    }
    Ok(known > limit)
}

fn timestamps(b: &RecordBatch) -> Result<&TimestampMicrosecondArray, QueryError> {
    b.column_by_name("timestamp")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| QueryError::Internal("no timestamp column in the trades".into()))
}

impl WindowCache {
    fn find(&mut self, key: &Key, snapshot_id: i64) -> Found {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(key) {
            Some(w) => {
                w.used = tick;
                if w.snapshot_id == snapshot_id {
                    Found::Exact(w.from, w.rows.clone())
                } else {
                    Found::Older(w.from, w.files.clone(), w.rows.clone())
                }
            }
            None => Found::Nothing,
        }
    }

    /// Keeps `w` unless an entry of a newer snapshot is there already, then
    /// drops the least recently asked entries past `budget`.
    fn put(&mut self, key: Key, mut w: LakeWindow, budget: usize) {
        if w.bytes > budget / 4 {
            return;
        }
        if let Some(old) = self.entries.get(&key) {
            if old.sequence > w.sequence {
                return;
            }
            self.bytes -= old.bytes;
        }
        self.tick += 1;
        w.used = self.tick;
        self.bytes += w.bytes;
        self.entries.insert(key, w);
        while self.bytes > budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, w)| w.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(w) = self.entries.remove(&oldest) {
                self.bytes -= w.bytes;
            }
        }
    }

    fn keys(&self) -> Vec<(Key, i64)> {
        self.entries
            .iter()
            .map(|(k, w)| (k.clone(), w.from))
            .collect()
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// The rows of `rows` with timestamps at or after `start`.
fn rows_from(rows: &[RecordBatch], start: i64) -> Result<Vec<RecordBatch>, QueryError> {
    let mut out = Vec::with_capacity(rows.len());
    for b in rows {
        let ts = timestamps(b)?;
        if ts.values().iter().all(|&t| t >= start) {
            out.push(b.clone());
            continue;
        }
        let keep: BooleanArray = ts.values().iter().map(|&t| Some(t >= start)).collect();
        let kept = filter_record_batch(b, &keep).map_err(QueryError::internal)?;
        if kept.num_rows() > 0 {
            out.push(kept);
        }
    }
    Ok(out)
}

fn bytes_of(rows: &[RecordBatch]) -> usize {
    rows.iter().map(RecordBatch::get_array_memory_size).sum()
}

impl Engine {
    /// The lake's rows of `window` at `pin`'s snapshot (which it must
    /// have) that decide, with the window's tail rows (`tail`, exactly the
    /// window's), its page of `limit` rows: `(rows, complete)`. `complete`
    /// when they are all the window's lake rows; else they are the window's
    /// newest lake rows, and more than the page with the tail's (`covers`).
    /// `None` when the files cannot be planned here (delete files, files
    /// elsewhere than the local disk): the caller reads the hybrid table
    /// instead.
    pub(super) async fn lake_window(
        &self,
        pin: &Pin,
        window: &RecentWindow<'_>,
        tail: &[RecordBatch],
        limit: usize,
        q: &Request<'_>,
    ) -> Result<Option<(Vec<RecordBatch>, bool)>, QueryError> {
        let Some(snapshot_id) = pin.snapshot_id() else {
            return Ok(Some((Vec::new(), true)));
        };
        let key = window.key();
        let found = match self.windows.lock() {
            Ok(mut c) => c.find(&key, snapshot_id),
            Err(_) => Found::Nothing,
        };
        match found {
            Found::Exact(from, rows) => {
                if covers(from, window.start, &rows, tail, limit)? {
                    self.window_counts.add(Outcome::Kept);
                    return Ok(Some((
                        rows_from(&rows, window.start)?,
                        from <= window.start,
                    )));
                }
            }
            Found::Older(from, files, rows) => {
                if let Some(w) = self
                    .carry_forward(pin, window, from, files, rows, q)
                    .await?
                {
                    let page = if covers(w.from, window.start, &w.rows, tail, limit)? {
                        Some((rows_from(&w.rows, window.start)?, w.from <= window.start))
                    } else {
                        None
                    };
                    self.keep_window(key.clone(), w);
                    self.window_counts.add(Outcome::Carried);
                    if page.is_some() {
                        return Ok(page);
                    }
                }
            }
            Found::Nothing => {}
        }
        // Read the window's newest rows: twice the page, so that when the
        // window holds more, what is kept of them still decides the next
        // pages while the tail is small (right after a commit).
        let Some(files) = self.window_files(pin, window, window.start).await? else {
            return Ok(None);
        };
        let most = 2 * (limit + 1);
        let paths = files.iter().map(|f| f.path.clone()).collect();
        let rows = self.read_files(pin, files, window.preds(), most, q).await?;
        let complete = rows_in(&rows) < most;
        let entry = if complete {
            Some(LakeWindow {
                snapshot_id,
                sequence: sequence_of(pin, snapshot_id),
                from: window.start,
                files: paths,
                rows: rows.clone(),
                bytes: bytes_of(&rows),
                used: 0,
            })
        } else {
            self.newest_entry(pin, window, &rows).await?
        };
        let kept = entry.filter(|w| w.bytes <= self.limits.recent_cache_bytes / 4);
        self.window_counts.add(if kept.is_some() {
            Outcome::Read
        } else {
            Outcome::NotKept
        });
        if let Some(w) = kept {
            self.keep_window(key, w);
        }
        Ok(Some((rows, complete)))
    }

    /// An entry of the newest lake rows of `window` (`rows`, at `pin`'s
    /// snapshot, newest first by timestamp then message id, cut at some
    /// count): the rows after the oldest timestamp among them, which are
    /// all the lake holds after it (the cut may fall among rows sharing
    /// that timestamp, so those are left out). `None` when none are left.
    async fn newest_entry(
        &self,
        pin: &Pin,
        window: &RecentWindow<'_>,
        rows: &[RecordBatch],
    ) -> Result<Option<LakeWindow>, QueryError> {
        let Some(snapshot_id) = pin.snapshot_id() else {
            return Ok(None);
        };
        let mut oldest = None::<i64>;
        for b in rows {
            if let Some(m) = timestamps(b)?.values().iter().min() {
                oldest = Some(oldest.map_or(*m, |o| o.min(*m)));
            }
        }
        let Some(from) = oldest.and_then(|o| o.checked_add(1)) else {
            return Ok(None);
        };
        let rows = rows_from(rows, from)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let Some(files) = self.window_files(pin, window, from).await? else {
            return Ok(None);
        };
        let bytes = bytes_of(&rows);
        Ok(Some(LakeWindow {
            snapshot_id,
            sequence: sequence_of(pin, snapshot_id),
            from,
            files: files.into_iter().map(|f| f.path).collect(),
            rows,
            bytes,
            used: 0,
        }))
    }

    /// The files planned for `window`'s rows at or after `from` at `pin`'s
    /// snapshot (which it must have), when the fast path can read them.
    async fn window_files(
        &self,
        pin: &Pin,
        window: &RecentWindow<'_>,
        from: i64,
    ) -> Result<Option<Vec<PlannedFile>>, QueryError> {
        let Some(snapshot_id) = pin.snapshot_id() else {
            return Ok(None);
        };
        local_files(
            self.live.planner(),
            pin.table(),
            snapshot_id,
            &window.preds_from(from),
        )
        .await
        .map_err(df_err)
    }

    /// The rows of `files` (of `pin`'s snapshot) matching `preds`, newest
    /// first, at most `most`.
    async fn read_files(
        &self,
        pin: &Pin,
        files: Vec<PlannedFile>,
        preds: Vec<Expr>,
        most: usize,
        q: &Request<'_>,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        let Some(snapshot_id) = pin.snapshot_id() else {
            return Ok(Vec::new());
        };
        let table = SnapshotTable::of_files(pin.table().clone(), snapshot_id, files)
            .map_err(QueryError::internal)?;
        let df = self.ctx.read_table(Arc::new(table)).map_err(df_err)?;
        let read = trades_in_order(df, preds, false, most, q).await?;
        Ok(read.batches.clone())
    }

    /// `rows`, the window's rows at or after `from` at an older snapshot
    /// read from `files`, carried to `pin`'s snapshot: `None` when that
    /// snapshot no longer holds one of those files (compaction replaced
    /// it), or when the added files hold more rows than an entry keeps.
    async fn carry_forward(
        &self,
        pin: &Pin,
        window: &RecentWindow<'_>,
        from: i64,
        files: HashSet<Arc<str>>,
        mut rows: Vec<RecordBatch>,
        q: &Request<'_>,
    ) -> Result<Option<LakeWindow>, QueryError> {
        let Some(snapshot_id) = pin.snapshot_id() else {
            return Ok(None);
        };
        let Some(now) = self.window_files(pin, window, from).await? else {
            return Ok(None);
        };
        let paths: HashSet<Arc<str>> = now.iter().map(|f| f.path.clone()).collect();
        if !files.is_subset(&paths) {
            return Ok(None);
        }
        let added: Vec<PlannedFile> = now
            .into_iter()
            .filter(|f| !files.contains(&f.path))
            .collect();
        if !added.is_empty() {
            let most = self.limits.max_rows.max(1);
            let read = self
                .read_files(pin, added, window.preds_from(from), most + 1, q)
                .await?;
            if rows_in(&read) > most {
                return Ok(None);
            }
            rows.extend(read);
        }
        // Rows well below what is asked now are let go, and the files
        // planned again for what is kept.
        let keep_from = from.max(window.start - KEEP_BELOW_US);
        let (rows, files) = if keep_from > from {
            match self.window_files(pin, window, keep_from).await? {
                Some(files) => (
                    rows_from(&rows, keep_from)?,
                    files.into_iter().map(|f| f.path).collect(),
                ),
                None => return Ok(None),
            }
        } else {
            (rows, paths)
        };
        let bytes = bytes_of(&rows);
        Ok(Some(LakeWindow {
            snapshot_id,
            sequence: sequence_of(pin, snapshot_id),
            from: keep_from,
            files,
            rows,
            bytes,
            used: 0,
        }))
    }

    /// How many pages found their lake side each way (`OUTCOMES`).
    pub fn recent_window_counts(&self) -> [(&'static str, u64); 4] {
        self.window_counts.get()
    }

    /// The same engine, counting its recent windows in `metric`
    /// (`ticklake_query_recent_windows_total`).
    pub fn with_window_metric(mut self, metric: prometheus::IntCounterVec) -> Self {
        self.window_counts = WindowCounts::with_metric(metric);
        self
    }

    /// Whether a window is kept that can serve `window` (at this snapshot
    /// or carried forward from an older one).
    pub(super) fn window_kept(&self, window: &RecentWindow<'_>) -> bool {
        self.windows.lock().is_ok_and(|c| {
            c.entries
                .get(&window.key())
                .is_some_and(|w| w.from <= window.start)
        })
    }

    /// What a window kept at `snapshot_id` says of the lake's newest row
    /// of `key`: `(from, newest)`, the newest timestamp at or after `from`.
    /// An entry holds every lake row at or after its own start, so when it
    /// holds any, the newest of them is the lake's newest of all.
    pub(super) fn kept_newest(&self, key: &Key, snapshot_id: i64) -> Option<(i64, Option<i64>)> {
        let c = self.windows.lock().ok()?;
        let w = c
            .entries
            .get(key)
            .filter(|w| w.snapshot_id == snapshot_id)?;
        let mut newest = None::<i64>;
        for b in &w.rows {
            if let Some(m) = timestamps(b).ok()?.values().iter().max() {
                newest = Some(newest.map_or(*m, |n| n.max(*m)));
            }
        }
        Some(match newest {
            Some(n) => (i64::MIN, Some(n)),
            None => (w.from, None),
        })
    }

    fn keep_window(&self, key: Key, w: LakeWindow) {
        if let Ok(mut c) = self.windows.lock() {
            c.put(key, w, self.limits.recent_cache_bytes);
        }
    }

    /// Carries every window kept to `table`'s current snapshot, before it
    /// is pinned (`Engine::refresh`). Background work, with a request's
    /// limits.
    pub(super) async fn carry_windows_to(&self, table: &iceberg::table::Table) {
        let cancel = Cancel::after(self.limits.timeout_ms);
        let q = self.request(&cancel);
        self.refresh_windows(&Pin::lake_at(table.clone()), &q).await;
    }

    /// Carries every window kept to `pin`'s snapshot, after a commit, so
    /// that the first page a poller asks of the new snapshot is served from
    /// memory. Background work, with a request's limits.
    pub(super) async fn refresh_windows(&self, pin: &Pin, q: &Request<'_>) {
        if self.limits.recent_cache_bytes == 0 {
            return;
        }
        let Some(snapshot_id) = pin.snapshot_id() else {
            return;
        };
        let keys = match self.windows.lock() {
            Ok(c) => c.keys(),
            Err(_) => return,
        };
        for (key, from) in keys {
            let window = RecentWindow::new(&key, from);
            let found = match self.windows.lock() {
                Ok(mut c) => c.find(&key, snapshot_id),
                Err(_) => return,
            };
            let Found::Older(from, files, rows) = found else {
                continue;
            };
            match self.carry_forward(pin, &window, from, files, rows, q).await {
                Ok(Some(w)) => {
                    self.keep_window(key, w);
                    self.window_counts.add(Outcome::Carried);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(window = ?key, error = %e, "query: could not carry a recent window forward")
                }
            }
        }
    }
}

/// The sequence number of `snapshot_id` in `pin`'s table: which of two
/// snapshots is newer.
fn sequence_of(pin: &Pin, snapshot_id: i64) -> i64 {
    pin.table()
        .metadata()
        .snapshot_by_id(snapshot_id)
        .map_or(0, |s| s.sequence_number())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema, TimeUnit};

    fn batch(ts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                false,
            ),
            Field::new("n", DataType::Int64, false),
        ]));
        let t = TimestampMicrosecondArray::from(ts.to_vec()).with_timezone("+00:00");
        let n = Int64Array::from(ts.to_vec());
        RecordBatch::try_new(schema, vec![Arc::new(t), Arc::new(n)]).unwrap()
    }

    fn window(snapshot_id: i64, sequence: i64, from: i64, bytes: usize) -> LakeWindow {
        LakeWindow {
            snapshot_id,
            sequence,
            from,
            files: HashSet::new(),
            rows: vec![batch(&[from])],
            bytes,
            used: 0,
        }
    }

    fn key(s: &str) -> Key {
        WindowKey {
            symbol: Some(s.to_string()),
            instrument: None,
            exchange: None,
        }
    }

    #[test]
    fn rows_from_keeps_exactly_the_rows_at_or_after_the_start() {
        let rows = vec![batch(&[5, 1, 9, 3]), batch(&[0, 2]), batch(&[7])];
        let kept = rows_from(&rows, 3).unwrap();
        let mut ts: Vec<i64> = kept
            .iter()
            .flat_map(|b| {
                let c = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>();
                c.unwrap().values().to_vec()
            })
            .collect();
        ts.sort();
        assert_eq!(ts, vec![3, 5, 7, 9]);
        assert_eq!(kept.len(), 2, "a batch with no row left is dropped");
    }

    #[test]
    fn an_entry_is_found_at_its_snapshot_and_carried_from_an_older_one() {
        let mut c = WindowCache::default();
        c.put(key("A"), window(10, 1, 100, 50), 1000);
        assert!(matches!(c.find(&key("A"), 10), Found::Exact(100, _)));
        // Another snapshot: carried forward, not served.
        assert!(matches!(c.find(&key("A"), 11), Found::Older(100, _, _)));
        assert!(matches!(c.find(&key("B"), 10), Found::Nothing));
    }

    /// Rows from `from` on serve any later start; an earlier start only
    /// when they and the tail's rows from `from` on make more than a page.
    #[test]
    fn an_entry_covers_an_earlier_start_only_with_more_than_a_page_after_its_own() {
        let lake = vec![batch(&[100, 105, 110])];
        assert!(covers(100, 100, &lake, &[], 1000).unwrap());
        assert!(covers(100, 150, &lake, &[], 1000).unwrap());
        // Start before `from`: 3 lake rows, and tail rows at 99 (before
        // `from`, so not counted), 100 and 120.
        let tail = vec![batch(&[99, 120]), batch(&[100])];
        assert!(covers(100, 50, &lake, &tail, 4).unwrap());
        assert!(!covers(100, 50, &lake, &tail, 5).unwrap());
        assert!(!covers(100, 50, &lake, &[], 3).unwrap());
        assert!(covers(100, 50, &lake, &[], 2).unwrap());
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let mut c = WindowCache::default();
        c.put(key("A"), window(11, 2, 100, 50), 1000);
        c.put(key("A"), window(10, 1, 100, 50), 1000);
        assert!(matches!(c.find(&key("A"), 11), Found::Exact(100, _)));
        assert_eq!(c.bytes, 50);
    }

    #[test]
    fn the_budget_drops_the_least_recently_asked() {
        let mut c = WindowCache::default();
        for k in ["A", "B", "C", "D"] {
            c.put(key(k), window(1, 1, 0, 100), 400);
        }
        assert_eq!(c.bytes, 400);
        // A asked again: B is now the one least recently asked.
        assert!(matches!(c.find(&key("A"), 1), Found::Exact(0, _)));
        c.put(key("E"), window(1, 1, 0, 100), 400);
        assert!(matches!(c.find(&key("B"), 1), Found::Nothing));
        for k in ["A", "C", "D", "E"] {
            assert!(matches!(c.find(&key(k), 1), Found::Exact(0, _)), "{k}");
        }
        assert_eq!(c.bytes, 400);
        // An entry larger than a quarter of the budget is not kept.
        c.put(key("F"), window(1, 1, 0, 101), 400);
        assert!(matches!(c.find(&key("F"), 1), Found::Nothing));
        assert_eq!(c.bytes, 400);
        c.clear();
        assert_eq!(c.bytes, 0);
    }
}
