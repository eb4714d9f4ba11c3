//! The tail's data store: the trades consumed past the latest commit, as
//! Arrow, per symbol, each row with its Kafka position, so a query can read
//! them beside the lake and split exactly at a snapshot's offsets.
//!
//! The `TailActor` (`crate::actors::tail`) owns the one `TailStore` and
//! feeds it on the ingest arbiter. After every change it publishes a
//! `TailSnapshot` to a `TailView`, and queries scan that snapshot on their
//! own threads: a scan never goes through the actor, so however big it is,
//! ingest never waits for it. A snapshot is immutable and shares its rows
//! with the store instead of copying them:
//!
//! - rows are kept in sealed segments of at least `SEGMENT_ROWS` rows of
//!   one symbol. A segment names its rows in the consumer's chunks (Arrow
//!   batches the writer shares) until a scan first reads it whole; that
//!   scan gathers them into one batch, on its own thread, and the segment
//!   keeps it, so later scans hand it out as it is (the buffers are
//!   shared) and a query over 10,000 tail rows costs about as much as one
//!   over 100;
//! - the rows still being gathered for a symbol's next segment (its open
//!   run) are a chain of immutable links, one per push, each naming its
//!   rows in the consumer's chunk, so publishing needs no copy of them; a
//!   scan gathers the open rows it reads into one batch. Sealing and
//!   pruning copy no row: ingest never gathers.
//!
//! Publishing a snapshot therefore costs one pointer pair per symbol.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock, RwLock};

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;

use crate::fastmap::FastMap;
use crate::lake::batch::{RecordAt, gather_rows, text_column, time_column, trades_batch_as_is};
use crate::lake::commit::KafkaOffsets;
use crate::messages::tail::{TailError, TailFilter, TailRow, TailState};
use crate::model::TradeV2;

fn arrow_err(e: impl std::fmt::Display) -> TailError {
    TailError::Arrow(e.to_string())
}

/// Rows of one symbol converted to Arrow together. Small enough that
/// converting an open run at scan time is cheap, large enough that a
/// query reads few batches.
const SEGMENT_ROWS: usize = 1024;

/// A Kafka position: an index into `TailStore::partitions`, and the offset.
type Pos = (u32, i64);

/// A sealed run of one symbol's rows, with each row's position, and what
/// lets a scan skip the whole run.
///
/// The rows stay where the consumer put them, in its chunks (whose buffers
/// the writer shares), until a scan first reads them: only then are they
/// gathered into one batch, on the scan's thread, and kept for the scans
/// after it. Sealing on the ingest arbiter therefore copies nothing.
/// Gathering every run as it sealed was 17 % of that arbiter's samples in
/// a profile of `ticklake bench` (1,000,000 trades at 150,000/s), for rows
/// that nearly always reach the lake, and leave the tail, before anyone
/// reads them here. A run holds its chunks until it is pruned, which the
/// writer's commit does as soon as it holds them no longer itself.
#[derive(Debug)]
struct Segment {
    /// The chunks the rows are in, shared, not copied.
    chunks: Vec<RecordBatch>,
    /// Per row, in order: its chunk (an index into `chunks`) and its row
    /// there.
    rows: Vec<(usize, usize)>,
    /// The rows as one batch, once a scan has asked for them. A gather can
    /// fail only on chunks of another schema (a bug): its error is kept,
    /// and every scan of the run reports it.
    gathered: OnceLock<Result<RecordBatch, String>>,
    pos: Vec<Pos>,
    /// Per partition in the run: its lowest and highest offset.
    spans: Vec<(u32, i64, i64)>,
    exchanges: BTreeSet<String>,
    min_ts: i64,
    max_ts: i64,
}

/// Per partition among `pos`: its lowest and highest offset.
fn spans(pos: &[Pos]) -> Vec<(u32, i64, i64)> {
    let mut spans: Vec<(u32, i64, i64)> = Vec::new();
    for &(p, o) in pos {
        match spans.iter_mut().find(|s| s.0 == p) {
            Some(s) => {
                s.1 = s.1.min(o);
                s.2 = s.2.max(o);
            }
            None => spans.push((p, o, o)),
        }
    }
    spans
}

impl Segment {
    /// The run of `links` (oldest first), none of them empty, as a
    /// segment: its rows named, not gathered.
    fn new(links: &[&OpenLink]) -> Result<Self, TailError> {
        let n = links.iter().map(|l| l.rows.len()).sum();
        let (mut rows, mut pos) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
        // Distinct names first, then owned: one String per exchange, not
        // one per row. A run rarely has more than one.
        let mut names: Vec<&str> = Vec::new();
        for (l, link) in links.iter().enumerate() {
            let time = time_column(&link.batch, "timestamp").map_err(arrow_err)?;
            let exchange = text_column(&link.batch, "exchange").map_err(arrow_err)?;
            for (&row, &p) in link.rows.iter().zip(&link.pos) {
                let row = row as usize;
                if time.is_valid(row) {
                    let t = time.value(row);
                    min_ts = min_ts.min(t);
                    max_ts = max_ts.max(t);
                }
                if exchange.is_valid(row) {
                    let x = exchange.value(row);
                    if !names.contains(&x) {
                        names.push(x);
                    }
                }
                rows.push((l, row));
                pos.push(p);
            }
        }
        Ok(Self {
            chunks: links.iter().map(|l| l.batch.clone()).collect(),
            rows,
            gathered: OnceLock::new(),
            spans: spans(&pos),
            pos,
            exchanges: names.into_iter().map(str::to_string).collect(),
            min_ts,
            max_ts,
        })
    }

    /// The rows of `self` that `keep` keeps (by position), as a segment of
    /// the same chunks; the exchanges and time range stay those of the
    /// whole run, which only makes a scan skip it less often.
    fn keeping(&self, keep: impl Fn(Pos) -> bool) -> Self {
        let (rows, pos): (Vec<_>, Vec<_>) = self
            .rows
            .iter()
            .zip(&self.pos)
            .filter(|&(_, &p)| keep(p))
            .map(|(&r, &p)| (r, p))
            .unzip();
        Self {
            chunks: self.chunks.clone(),
            rows,
            gathered: OnceLock::new(),
            spans: spans(&pos),
            pos,
            exchanges: self.exchanges.clone(),
            min_ts: self.min_ts,
            max_ts: self.max_ts,
        }
    }

    /// `rows` of the chunks as one batch.
    fn gather(&self, rows: &[(usize, usize)]) -> Result<RecordBatch, TailError> {
        let Some(first) = self.chunks.first() else {
            return Err(TailError::Arrow("a sealed run without rows".into()));
        };
        let refs: Vec<&RecordBatch> = self.chunks.iter().collect();
        gather_rows(&first.schema(), &refs, rows).map_err(arrow_err)
    }

    /// All the run's rows as one batch, gathered by the first scan to ask.
    fn batch(&self) -> Result<&RecordBatch, TailError> {
        self.gathered
            .get_or_init(|| self.gather(&self.rows).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| TailError::Arrow(e.clone()))
    }

    /// Whether a scan has gathered the rows.
    #[cfg(test)]
    fn is_gathered(&self) -> bool {
        self.gathered.get().is_some()
    }

    fn len(&self) -> usize {
        self.pos.len()
    }

    /// Whether the run's rows are at or past `from` (per partition index):
    /// all of them (`Some(true)`), none (`Some(false)`), or some (`None`).
    fn past(&self, from: &[i64]) -> Option<bool> {
        let at = |p: u32| from.get(p as usize).copied().unwrap_or(0);
        if self.spans.iter().all(|&(p, lo, _)| lo >= at(p)) {
            Some(true)
        } else if self.spans.iter().all(|&(p, _, hi)| hi < at(p)) {
            Some(false)
        } else {
            None
        }
    }

    /// The rows at or past `from` (per partition index): the batch itself
    /// when every row is, else the rows that are.
    fn from(&self, from: &[i64]) -> Result<Option<RecordBatch>, TailError> {
        match self.past(from) {
            Some(true) => return Ok(Some(self.batch()?.clone())),
            Some(false) => return Ok(None),
            None => {}
        }
        let at = |p: u32| from.get(p as usize).copied().unwrap_or(0);
        if let Some(Ok(batch)) = self.gathered.get() {
            let mask: BooleanArray = self.pos.iter().map(|&(p, o)| Some(o >= at(p))).collect();
            return filter_record_batch(batch, &mask)
                .map(Some)
                .map_err(|e| TailError::Arrow(e.to_string()));
        }
        // Not gathered yet: only the rows asked for, and not kept (a scan
        // from a point inside a run is one of a moment).
        let rows: Vec<(usize, usize)> = self
            .rows
            .iter()
            .zip(&self.pos)
            .filter(|&(_, &(p, o))| o >= at(p))
            .map(|(&r, _)| r)
            .collect();
        self.gather(&rows).map(Some)
    }

    fn matches(&self, filter: &TailFilter) -> bool {
        filter
            .exchanges
            .as_ref()
            .is_none_or(|x| !x.is_disjoint(&self.exchanges))
            && filter.start_us.is_none_or(|s| self.max_ts >= s)
            && filter.end_us.is_none_or(|e| self.min_ts <= e)
    }

    /// Whether every row matches `filter` (symbols aside: a segment holds
    /// one symbol, and scans pick segments by symbol).
    fn all_match(&self, filter: &TailFilter) -> bool {
        filter
            .exchanges
            .as_ref()
            .is_none_or(|x| self.exchanges.is_subset(x))
            && filter.start_us.is_none_or(|s| self.min_ts >= s)
            && filter.end_us.is_none_or(|e| self.max_ts <= e)
    }
}

/// The rows of `batch` (trades) that match `filter` exactly, bounds
/// inclusive.
pub fn rows_matching(batch: &RecordBatch, filter: &TailFilter) -> Result<RecordBatch, TailError> {
    use arrow::array::{Array, AsArray, StringArray};
    use arrow::datatypes::TimestampMicrosecondType;
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| TailError::Arrow(format!("tail rows without a {name} column")))
    };
    let (symbol, exchange, time) = (column("symbol")?, column("exchange")?, column("timestamp")?);
    let (Some(symbol), Some(exchange), Some(time)) = (
        symbol.as_string_opt::<i32>(),
        exchange.as_string_opt::<i32>(),
        time.as_primitive_opt::<TimestampMicrosecondType>(),
    ) else {
        return Err(TailError::Arrow("tail rows of another schema".into()));
    };
    let within = |set: &Option<BTreeSet<String>>, a: &StringArray, i: usize| {
        set.as_ref()
            .is_none_or(|s| a.is_valid(i) && s.contains(a.value(i)))
    };
    let mask: BooleanArray = (0..batch.num_rows())
        .map(|i| {
            let t = time.value(i);
            Some(
                time.is_valid(i)
                    && within(&filter.symbols, symbol, i)
                    && within(&filter.exchanges, exchange, i)
                    && filter.start_us.is_none_or(|s| t >= s)
                    && filter.end_us.is_none_or(|e| t <= e),
            )
        })
        .collect();
    filter_record_batch(batch, &mask).map_err(|e| TailError::Arrow(e.to_string()))
}

/// Rows of one symbol (their indices in a chunk) with their positions, in
/// order.
type Run = (Vec<u32>, Vec<Pos>);

/// The rows one push brought for one symbol's open run, linked to the
/// older ones. A link never changes once made, so a snapshot holding the
/// newest link sees exactly the open rows of its moment, however the run
/// grows or is sealed afterwards.
#[derive(Debug)]
struct OpenLink {
    /// The chunk the rows are in (its buffers shared, not copied).
    batch: RecordBatch,
    rows: Vec<u32>,
    pos: Vec<Pos>,
    older: Option<Arc<OpenLink>>,
}

/// The open rows of `links` that `keep` keeps, gathered into one batch
/// (in link order), with their positions; `None` when it keeps none.
fn gather(
    links: &[&OpenLink],
    mut keep: impl FnMut(&OpenLink, usize, Pos) -> bool,
) -> Result<Option<(RecordBatch, Vec<Pos>)>, TailError> {
    let mut order: Vec<(usize, usize)> = Vec::new();
    let mut pos = Vec::new();
    for (l, link) in links.iter().enumerate() {
        for (&row, &p) in link.rows.iter().zip(&link.pos) {
            if keep(link, row as usize, p) {
                order.push((l, row as usize));
                pos.push(p);
            }
        }
    }
    if order.is_empty() {
        return Ok(None);
    }
    let batches: Vec<&RecordBatch> = links.iter().map(|l| &l.batch).collect();
    let schema = batches[0].schema();
    let batch = gather_rows(&schema, &batches, &order).map_err(arrow_err)?;
    Ok(Some((batch, pos)))
}

impl Drop for OpenLink {
    /// A run holds up to a link per row; dropping them one by one instead
    /// of recursively keeps a long chain from exhausting the stack.
    fn drop(&mut self) {
        let mut next = self.older.take();
        while let Some(link) = next {
            next = match Arc::try_unwrap(link) {
                Ok(mut l) => l.older.take(),
                // Still shared with a snapshot, which drops it later.
                Err(_) => None,
            };
        }
    }
}

/// One symbol's rows: sealed segments, then the open run. A clone (what a
/// snapshot takes) copies two pointers.
#[derive(Debug, Clone, Default)]
struct SymbolRows {
    sealed: Arc<Vec<Arc<Segment>>>,
    /// The newest link of the open run.
    open: Option<Arc<OpenLink>>,
    open_len: usize,
}

impl SymbolRows {
    fn len(&self) -> usize {
        self.sealed.iter().map(|s| s.len()).sum::<usize>() + self.open_len
    }

    /// The open run's links, oldest first.
    fn open_links(&self) -> Vec<&OpenLink> {
        let mut links = Vec::new();
        let mut at = self.open.as_deref();
        while let Some(link) = at {
            links.push(link);
            at = link.older.as_deref();
        }
        links.reverse();
        links
    }

    /// The open run's positions, oldest first.
    fn open_pos(&self) -> impl Iterator<Item = Pos> {
        self.open_links()
            .into_iter()
            .flat_map(|l| l.pos.iter().copied())
    }
}

/// The rows themselves, indexed by symbol (every API query names one), and
/// the offsets they were pruned to. Kept apart from the actor so it can be
/// tested without a running system.
#[derive(Debug)]
pub struct TailStore {
    cluster_id: Arc<str>,
    schema: SchemaRef,
    by_symbol: FastMap<Arc<str>, SymbolRows>,
    rows: usize,
    /// Highest committed offsets seen, i.e. everything below is gone.
    pruned: Arc<KafkaOffsets>,
    /// The (topic, partition) pairs seen, indexed by `Pos`'s first field.
    partitions: Arc<Vec<(Arc<str>, i32)>>,
    partition_index: FastMap<(Arc<str>, i32), u32>,
    /// Highest offset taken in per partition index. A partition is read in
    /// offset order, so anything at or below it is a re-read (a consumer
    /// restart or a writer rewinding to its last snapshot) of a row the
    /// tail already holds or has pruned.
    newest: Vec<i64>,
}

/// Per partition index of `partitions`, the first offset of `offsets` (0
/// when absent).
fn per_index(partitions: &[(Arc<str>, i32)], offsets: &KafkaOffsets) -> Vec<i64> {
    partitions
        .iter()
        .map(|(t, p)| offsets.get(t, *p).unwrap_or(0))
        .collect()
}

impl TailStore {
    /// `schema` is the trades table's Arrow schema, which scans return.
    pub fn new(cluster_id: &str, schema: SchemaRef) -> Self {
        Self {
            cluster_id: Arc::from(cluster_id),
            schema,
            by_symbol: Default::default(),
            rows: 0,
            pruned: Arc::new(KafkaOffsets {
                cluster_id: cluster_id.to_string(),
                topics: Default::default(),
            }),
            partitions: Arc::default(),
            partition_index: Default::default(),
            newest: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    fn partition(&mut self, topic: &Arc<str>, partition: i32) -> u32 {
        if let Some(i) = self.partition_index.get(&(topic.clone(), partition)) {
            return *i;
        }
        let i = self.partitions.len() as u32;
        // A new partition is rare; snapshots keep the list they saw.
        Arc::make_mut(&mut self.partitions).push((topic.clone(), partition));
        self.partition_index.insert((topic.clone(), partition), i);
        self.newest.push(i64::MIN);
        i
    }

    /// Owned trades (tools and tests) as a chunk: the batch, and each
    /// row's topic, partition and offset.
    pub fn chunk_of(&self, rows: &[TailRow]) -> Result<(RecordBatch, Vec<RecordAt>), TailError> {
        let trades: Vec<&TradeV2> = rows.iter().map(|r| &*r.trade).collect();
        let batch = trades_batch_as_is(&self.schema, &trades).map_err(arrow_err)?;
        let at = rows
            .iter()
            .map(|r| (r.topic.clone(), r.partition, r.offset))
            .collect();
        Ok((batch, at))
    }

    /// Adds owned trades (tools and tests), as [`push_chunk`](Self::push_chunk).
    pub fn push(&mut self, rows: Vec<TailRow>) {
        match self.chunk_of(&rows) {
            Ok((batch, at)) => self.push_chunk(&batch, &at),
            Err(e) => {
                tracing::error!(error = %e, rows = rows.len(), "tail: trades not convertible to its schema")
            }
        }
    }

    /// Adds a consumed chunk: `batch` in the trades schema, `at` each row's
    /// topic, partition and offset. A row the tail has seen before (a
    /// re-read) or that lies below the pruned offsets (already in the
    /// lake) is not kept twice.
    pub fn push_chunk(&mut self, batch: &RecordBatch, at: &[RecordAt]) {
        let symbols = match text_column(batch, "symbol") {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "tail: a chunk not of the trades schema");
                return;
            }
        };
        // This push's rows per symbol, each becoming one link.
        let mut fresh: FastMap<Arc<str>, Run> = Default::default();
        // A chunk comes in runs of one partition: its index and pruned
        // offset are looked up once a run, not by text once a row.
        let mut last: Option<(&Arc<str>, i32, u32, Option<i64>)> = None;
        for (i, (topic, partition, offset)) in at.iter().enumerate().take(batch.num_rows()) {
            let (p, pruned) = match last {
                Some((t, tp, p, pruned))
                    if tp == *partition && (Arc::ptr_eq(t, topic) || **t == **topic) =>
                {
                    (p, pruned)
                }
                _ => {
                    let pruned = self.pruned.get(topic, *partition);
                    let p = self.partition(topic, *partition);
                    last = Some((topic, *partition, p, pruned));
                    (p, pruned)
                }
            };
            if pruned.is_some_and(|p| *offset < p) {
                continue;
            }
            let newest = &mut self.newest[p as usize];
            if *offset <= *newest {
                continue;
            }
            *newest = *offset;
            self.rows += 1;
            let symbol = symbols.value(i);
            let run = match fresh.get_mut(symbol) {
                Some(run) => run,
                None => {
                    // The name the store already holds, when it does.
                    let name = match self.by_symbol.get_key_value(symbol) {
                        Some((name, _)) => name.clone(),
                        None => Arc::from(symbol),
                    };
                    fresh.entry(name).or_default()
                }
            };
            run.0.push(i as u32);
            run.1.push((p, *offset));
        }
        for (symbol, (rows, pos)) in fresh {
            let sym = match self.by_symbol.get_mut(&symbol) {
                Some(sym) => sym,
                None => self.by_symbol.entry(symbol).or_default(),
            };
            sym.open_len += rows.len();
            sym.open = Some(Arc::new(OpenLink {
                batch: batch.clone(),
                rows,
                pos,
                older: sym.open.take(),
            }));
            if sym.open_len >= SEGMENT_ROWS {
                seal(sym);
            }
        }
    }

    /// Drops every row a commit covers. Offsets of another cluster (the
    /// embedded one of an earlier run) say nothing about these rows.
    pub fn prune(&mut self, committed: &KafkaOffsets) {
        if committed.cluster_id != *self.cluster_id {
            return;
        }
        let pruned = Arc::make_mut(&mut self.pruned);
        for (topic, parts) in &committed.topics {
            for (p, next) in parts {
                if pruned.get(topic, *p).is_none_or(|old| *next > old) {
                    pruned.set(topic, *p, *next);
                }
            }
        }
        let from = per_index(&self.partitions, &self.pruned);
        let at = |p: u32| from.get(p as usize).copied().unwrap_or(0);
        let mut kept = 0;
        self.by_symbol.retain(|_, sym| {
            let sealed: Vec<Arc<Segment>> = sym
                .sealed
                .iter()
                .filter_map(|seg| match seg.past(&from) {
                    Some(true) => Some(seg.clone()),
                    Some(false) => None,
                    // Straddling the commit: the rows past it, still named
                    // in their chunks.
                    None => Some(Arc::new(seg.keeping(|(p, o)| o >= at(p)))),
                })
                .collect();
            sym.sealed = Arc::new(sealed);
            if sym.open_pos().any(|(p, o)| o < at(p)) {
                // The rows past the commit, as new links of the same
                // chunks (nothing copied); snapshots keep the old chain.
                let mut older: Option<Arc<OpenLink>> = None;
                let mut open_len = 0;
                for link in sym.open_links() {
                    let (rows, pos): (Vec<u32>, Vec<Pos>) = link
                        .rows
                        .iter()
                        .zip(&link.pos)
                        .filter(|&(_, &(p, o))| o >= at(p))
                        .map(|(&r, &p)| (r, p))
                        .unzip();
                    if rows.is_empty() {
                        continue;
                    }
                    open_len += rows.len();
                    older = Some(Arc::new(OpenLink {
                        batch: link.batch.clone(),
                        rows,
                        pos,
                        older,
                    }));
                }
                sym.open_len = open_len;
                sym.open = older;
            }
            let n = sym.len();
            kept += n;
            n > 0
        });
        self.rows = kept;
    }

    /// What scans read: the rows and offsets as they are now, shared.
    pub fn snapshot(&self) -> TailSnapshot {
        TailSnapshot {
            cluster_id: self.cluster_id.clone(),
            by_symbol: self.by_symbol.clone(),
            pruned: self.pruned.clone(),
            partitions: self.partitions.clone(),
        }
    }

    /// What the store holds, for observers.
    pub fn state(&self, max_rows: usize) -> TailState {
        TailState {
            rows: self.rows,
            symbols: self.by_symbol.len(),
            max_rows,
            pruned: (*self.pruned).clone(),
            health: Default::default(),
        }
    }
}

/// Converts a symbol's full open run into a segment (its rows named in
/// their chunks, not gathered). On failure the rows stay in the open run:
/// nothing is dropped, and scans report it.
fn seal(sym: &mut SymbolRows) {
    if sym.open_len == 0 {
        return;
    }
    match Segment::new(&sym.open_links()) {
        Ok(seg) => {
            let mut sealed = Vec::with_capacity(sym.sealed.len() + 1);
            sealed.extend(sym.sealed.iter().cloned());
            sealed.push(Arc::new(seg));
            sym.sealed = Arc::new(sealed);
            sym.open = None;
            sym.open_len = 0;
        }
        Err(e) => tracing::warn!(error = %e, "tail: could not seal rows"),
    }
}

/// The tail at one moment, immutable: its rows and the offsets it had
/// pruned to then. Scans read it on the query side; the store moves on.
#[derive(Debug)]
pub struct TailSnapshot {
    cluster_id: Arc<str>,
    by_symbol: FastMap<Arc<str>, SymbolRows>,
    pruned: Arc<KafkaOffsets>,
    partitions: Arc<Vec<(Arc<str>, i32)>>,
}

impl TailSnapshot {
    /// The rows at or past `since` that match `filter`, exactly (bounds
    /// inclusive), or `Stale` when rows past `since` were already dropped.
    /// A sealed segment whose rows all match is handed out as it is; only
    /// those straddling a bound are filtered row by row.
    pub fn scan(
        &self,
        since: &KafkaOffsets,
        filter: &TailFilter,
    ) -> Result<Vec<RecordBatch>, TailError> {
        // A snapshot recorded on another cluster covers none of these rows.
        let none = KafkaOffsets::default();
        let since = if since.cluster_id == *self.cluster_id {
            since
        } else {
            &none
        };
        for (topic, parts) in &self.pruned.topics {
            for (p, pruned) in parts {
                let s = since.get(topic, *p).unwrap_or(0);
                if *pruned > s {
                    return Err(TailError::Stale {
                        topic: topic.clone(),
                        partition: *p,
                        pruned: *pruned,
                        since: s,
                    });
                }
            }
        }
        let from = per_index(&self.partitions, since);
        let at = |p: u32| from.get(p as usize).copied().unwrap_or(0);
        let mut out = Vec::new();
        let mut read = |sym: &SymbolRows| -> Result<(), TailError> {
            for seg in sym.sealed.iter().filter(|s| s.matches(filter)) {
                match seg.from(&from)? {
                    Some(b) if seg.all_match(filter) => out.push(b),
                    Some(b) => out.push(rows_matching(&b, filter)?),
                    None => {}
                }
            }
            // Open rows are checked on their chunk's columns, which every
            // chunk has (the consumer builds them in the trades schema).
            let mut failed = None;
            let keep = |l: &OpenLink, row: usize, (p, o): Pos| {
                if o < at(p) {
                    return false;
                }
                match (
                    text_column(&l.batch, "exchange"),
                    time_column(&l.batch, "timestamp"),
                ) {
                    (Ok(exchange), Ok(time)) => {
                        let t = time.value(row);
                        filter
                            .exchanges
                            .as_ref()
                            .is_none_or(|x| x.contains(exchange.value(row)))
                            && filter.start_us.is_none_or(|s| t >= s)
                            && filter.end_us.is_none_or(|s| t <= s)
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        failed = Some(arrow_err(e));
                        false
                    }
                }
            };
            let open = gather(&sym.open_links(), keep)?;
            if let Some(e) = failed {
                return Err(e);
            }
            if let Some((batch, _)) = open {
                out.push(batch);
            }
            Ok(())
        };
        match &filter.symbols {
            Some(symbols) => {
                for s in symbols {
                    if let Some(sym) = self.by_symbol.get(s.as_str()) {
                        read(sym)?;
                    }
                }
            }
            None => {
                for sym in self.by_symbol.values() {
                    read(sym)?;
                }
            }
        }
        out.retain(|b| b.num_rows() > 0);
        Ok(out)
    }
}

/// Where the tail actor publishes its snapshots and queries take them.
/// Either side holds the lock only to copy or swap one pointer, so neither
/// ever waits for the other's work. Until the actor publishes, the tail is
/// empty.
#[derive(Debug, Clone, Default)]
pub struct TailView(Arc<RwLock<Option<Arc<TailSnapshot>>>>);

impl TailView {
    pub fn publish(&self, snapshot: TailSnapshot) {
        let new = Some(Arc::new(snapshot));
        let old = match self.0.write() {
            Ok(mut held) => std::mem::replace(&mut *held, new),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), new),
        };
        // The previous snapshot is freed here, outside the lock, unless a
        // scan still reads it.
        drop(old);
    }

    /// The newest snapshot, `None` before the first.
    pub fn load(&self) -> Option<Arc<TailSnapshot>> {
        match self.0.read() {
            Ok(held) => held.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// `TailSnapshot::scan` on the newest snapshot.
    pub fn scan(
        &self,
        since: &KafkaOffsets,
        filter: &TailFilter,
    ) -> Result<Vec<RecordBatch>, TailError> {
        match self.load() {
            Some(snapshot) => snapshot.scan(since, filter),
            None => Ok(Vec::new()),
        }
    }
}

/// Rows and offsets for the tail's tests and the actor's.
#[cfg(test)]
pub(crate) mod test_rows {
    use super::*;
    use crate::model::Dec8;

    pub(crate) fn trade(symbol: &str, ts: i64) -> TradeV2 {
        TradeV2::builder("X", symbol, &ts.to_string(), ts)
            .message_id(format!("{symbol}-{ts}"))
            .price(Dec8::from_unscaled(1).unwrap())
            .quantity(Dec8::from_unscaled(1).unwrap())
            .build()
    }

    pub(crate) fn row(p: i32, offset: i64, symbol: &str) -> TailRow {
        TailRow {
            topic: Arc::from("t"),
            partition: p,
            offset,
            trade: Arc::new(trade(symbol, offset)),
        }
    }

    pub(crate) fn offsets(cluster: &str, parts: &[(i32, i64)]) -> KafkaOffsets {
        let mut o = KafkaOffsets {
            cluster_id: cluster.into(),
            ..Default::default()
        };
        for (p, n) in parts {
            o.set("t", *p, *n);
        }
        o
    }

    pub(crate) fn schema() -> SchemaRef {
        crate::lake::batch::arrow_schema(&crate::lake::schema::trades_schema().unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_rows::*;
    use super::*;

    fn store() -> TailStore {
        TailStore::new("c", schema())
    }

    impl TailStore {
        /// A scan of the snapshot taken now.
        fn scan(
            &self,
            since: &KafkaOffsets,
            filter: &TailFilter,
        ) -> Result<Vec<RecordBatch>, TailError> {
            self.snapshot().scan(since, filter)
        }
    }

    /// The timestamps (= offsets in these tests) of the rows, sorted.
    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        let mut v: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let c = arrow::compute::cast(
                    b.column_by_name("timestamp").unwrap(),
                    &arrow::datatypes::DataType::Int64,
                )
                .unwrap();
                c.as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        v.sort();
        v
    }

    fn count(batches: &[RecordBatch]) -> usize {
        batches.iter().map(|b| b.num_rows()).sum()
    }

    /// Open rows come out the same whether they came a row a push (a link
    /// a row, each of its own chunk) or all in one push (one link a
    /// symbol, one chunk), vendor maps included.
    #[test]
    fn open_rows_gather_alike_from_small_and_large_pushes() {
        let rows: Vec<TailRow> = (0..60)
            .map(|o| {
                let mut r = row((o % 2) as i32, o, if o % 3 == 0 { "A" } else { "B" });
                let mut t = (*r.trade).clone();
                t.vendor_data = (o % 4 != 0)
                    .then(|| crate::model::VendorData::from_iter([("k".into(), format!("v{o}"))]));
                r.trade = Arc::new(t);
                r
            })
            .collect();
        let (mut one, mut all) = (store(), store());
        for r in rows.clone() {
            one.push(vec![r]);
        }
        all.push(rows.clone());
        let since = offsets("c", &[]);
        for symbol in ["A", "B"] {
            let f = TailFilter {
                symbols: Some([symbol.to_string()].into()),
                ..Default::default()
            };
            let join = |b: Vec<RecordBatch>| arrow::compute::concat_batches(&schema(), &b).unwrap();
            let (a, b) = (
                join(one.scan(&since, &f).unwrap()),
                join(all.scan(&since, &f).unwrap()),
            );
            let want: Vec<&TradeV2> = rows
                .iter()
                .filter(|r| r.trade.symbol == symbol)
                .map(|r| &*r.trade)
                .collect();
            let want = trades_batch_as_is(&schema(), &want).unwrap();
            assert_eq!(a, want, "{symbol}, a row a push");
            assert_eq!(b, want, "{symbol}, one push");
        }
    }

    #[test]
    fn scan_splits_exactly_at_the_snapshot_offsets() {
        let mut s = store();
        s.push((0..10).map(|o| row(0, o, "A")).collect());
        s.push((0..5).map(|o| row(1, 100 + o, "B")).collect());
        let since = offsets("c", &[(0, 4), (1, 102)]);
        let all = s.scan(&since, &TailFilter::default()).unwrap();
        assert_eq!(ids(&all), vec![4, 5, 6, 7, 8, 9, 102, 103, 104]);
        // another cluster's snapshot covers nothing here
        let other = s.scan(&offsets("old", &[(0, 9)]), &TailFilter::default());
        assert_eq!(count(&other.unwrap()), 15);
    }

    #[test]
    fn prune_drops_only_committed_rows_and_scans_behind_it_are_stale() {
        let mut s = store();
        s.push((0..10).map(|o| row(0, o, "A")).collect());
        s.prune(&offsets("c", &[(0, 6)]));
        assert_eq!(s.len(), 4);
        let e = s
            .scan(&offsets("c", &[(0, 4)]), &TailFilter::default())
            .unwrap_err();
        assert!(
            matches!(
                e,
                TailError::Stale {
                    pruned: 6,
                    since: 4,
                    ..
                }
            ),
            "{e}"
        );
        let rows = s
            .scan(&offsets("c", &[(0, 6)]), &TailFilter::default())
            .unwrap();
        assert_eq!(ids(&rows), vec![6, 7, 8, 9]);
        // a commit of another cluster prunes nothing, an older one neither
        s.prune(&offsets("x", &[(0, 100)]));
        s.prune(&offsets("c", &[(0, 2)]));
        assert_eq!(s.len(), 4);
        // a re-read of committed rows is not kept twice, nor one of rows
        // still held (a consumer seeking back after a restart)
        s.push(vec![row(0, 3, "A")]);
        assert_eq!(s.len(), 4);
        s.push((5..12).map(|o| row(0, o, "A")).collect());
        assert_eq!(s.len(), 6, "only offsets 10 and 11 are new");
        s.prune(&offsets("c", &[(0, 12)]));
        assert!(s.is_empty());
    }

    #[test]
    fn filters_narrow_by_symbol_exchange_and_time() {
        let mut s = store();
        s.push(
            (0..10)
                .map(|o| row(0, o, if o % 2 == 0 { "A" } else { "B" }))
                .collect(),
        );
        let since = offsets("c", &[]);
        let f = TailFilter {
            symbols: Some(["A".to_string()].into()),
            start_us: Some(2),
            end_us: Some(6),
            ..Default::default()
        };
        assert_eq!(ids(&s.scan(&since, &f).unwrap()), vec![2, 4, 6]);
        let f = TailFilter {
            exchanges: Some(["Y".to_string()].into()),
            ..Default::default()
        };
        assert_eq!(count(&s.scan(&since, &f).unwrap()), 0);
    }

    /// Rows spread over sealed segments and the open run, two partitions
    /// interleaved: every split point and every prune point gives exactly
    /// the rows at or past it, whole segments shared and straddling ones
    /// filtered; so do time bounds that cut through sealed segments.
    #[test]
    fn segments_split_and_prune_exactly_at_any_offset() {
        let n = (SEGMENT_ROWS * 3 + 17) as i64;
        let all: Vec<TailRow> = (0..n).map(|o| row((o % 2) as i32, o, "A")).collect();
        let mut s = store();
        for chunk in all.chunks(300) {
            s.push(chunk.to_vec());
        }
        assert_eq!(s.len(), n as usize);
        assert!(s.by_symbol["A"].sealed.len() >= 2, "rows were sealed");
        for cut in [0, 1, 511, 1024, 1025, 2047, 2500, n - 1, n] {
            let since = offsets("c", &[(0, cut), (1, cut)]);
            let got = ids(&s.scan(&since, &TailFilter::default()).unwrap());
            let want: Vec<i64> = (cut..n).collect();
            assert_eq!(got, want, "split at {cut}");
        }
        // Timestamps equal offsets here.
        let since = offsets("c", &[]);
        for (lo, hi) in [(0, n), (100, 1500), (1023, 1024), (2000, n + 5)] {
            let f = TailFilter {
                start_us: Some(lo),
                end_us: Some(hi),
                ..Default::default()
            };
            let got = ids(&s.scan(&since, &f).unwrap());
            assert_eq!(got, (lo..=hi.min(n - 1)).collect::<Vec<_>>(), "{lo}..={hi}");
        }
        for cut in [700, 1500, 3000, n] {
            s.prune(&offsets("c", &[(0, cut), (1, cut)]));
            assert_eq!(s.len(), (n - cut) as usize, "pruned to {cut}");
            let since = offsets("c", &[(0, cut), (1, cut)]);
            let got = ids(&s.scan(&since, &TailFilter::default()).unwrap());
            assert_eq!(got, (cut..n).collect::<Vec<_>>(), "after prune to {cut}");
        }
        assert!(s.is_empty());
    }

    /// A snapshot is the tail of its moment: rows pushed, sealed or pruned
    /// afterwards change what the store and newer snapshots hold, never it.
    #[test]
    fn a_snapshot_keeps_what_it_saw_while_the_store_moves_on() {
        let mut s = store();
        // A sealed segment of A, an open run of B.
        s.push((0..1100).map(|o| row(0, o, "A")).collect());
        s.push((0..10).map(|o| row(1, o, "B")).collect());
        let before = s.snapshot();
        let all = TailFilter::default();
        let none = offsets("c", &[]);
        let want_before: Vec<i64> = (0..10).chain(0..1100).collect::<Vec<_>>();
        let sorted = |mut v: Vec<i64>| {
            v.sort();
            v
        };
        assert_eq!(
            ids(&before.scan(&none, &all).unwrap()),
            sorted(want_before.clone())
        );
        // A's next rows are sealed too, the commit cuts through A's first
        // segment, and B is pruned away.
        s.push((1100..2200).map(|o| row(0, o, "A")).collect());
        s.prune(&offsets("c", &[(0, 1050), (1, 10)]));
        assert_eq!(ids(&before.scan(&none, &all).unwrap()), sorted(want_before));
        let after = s.snapshot();
        assert!(matches!(
            after.scan(&none, &all),
            Err(TailError::Stale { pruned: 1050, .. })
        ));
        let since = offsets("c", &[(0, 1050), (1, 10)]);
        assert_eq!(
            ids(&after.scan(&since, &all).unwrap()),
            (1050..2200).collect::<Vec<_>>()
        );
    }

    /// A symbol that gets one row per push: its open run is a chain of a
    /// link per row, sealed at the segment size and pruned at any point,
    /// and scans of it are exact throughout.
    #[test]
    fn one_row_per_push_chains_seal_and_prune_exactly() {
        let n = (SEGMENT_ROWS * 2 + 300) as i64;
        let mut s = store();
        let mut held = Vec::new();
        for o in 0..n {
            s.push(vec![row((o % 2) as i32, o, "A")]);
            if o % 500 == 0 {
                held.push((o, s.snapshot()));
            }
        }
        assert_eq!(s.by_symbol["A"].sealed.len(), 2);
        assert_eq!(s.by_symbol["A"].open_len, 300);
        let all = TailFilter::default();
        for cut in [0, 700, 2100, n - 1] {
            let since = offsets("c", &[(0, cut), (1, cut)]);
            let got = ids(&s.scan(&since, &all).unwrap());
            assert_eq!(got, (cut..n).collect::<Vec<_>>(), "split at {cut}");
        }
        s.prune(&offsets("c", &[(0, 2200), (1, 2200)]));
        assert_eq!(s.len(), (n - 2200) as usize);
        let since = offsets("c", &[(0, 2200), (1, 2200)]);
        assert_eq!(
            ids(&s.scan(&since, &all).unwrap()),
            (2200..n).collect::<Vec<_>>()
        );
        // Snapshots taken along the way still read their own prefix.
        let none = offsets("c", &[]);
        for (o, snap) in &held {
            assert_eq!(
                ids(&snap.scan(&none, &all).unwrap()),
                (0..=*o).collect::<Vec<_>>()
            );
        }
        s.prune(&offsets("c", &[(0, n), (1, n)]));
        assert!(s.is_empty());
    }

    /// Sealing and pruning copy no row: a sealed run is gathered by the
    /// first scan that reads it whole, and later scans (of that snapshot
    /// or newer ones) get the same buffers. A scan from inside a run
    /// gathers only its rows and leaves the run as it was.
    #[test]
    fn sealed_runs_are_gathered_once_by_the_first_scan_to_read_them() {
        let mut s = store();
        // Pushes of 100 rows seal at 1,100 and 2,200.
        assert_eq!(SEGMENT_ROWS, 1024);
        let n = 2200;
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            s.push(chunk.iter().map(|&o| row(0, o, "A")).collect());
        }
        let segs = s.by_symbol["A"].sealed.clone();
        assert_eq!(segs.len(), 2);
        assert!(segs.iter().all(|g| !g.is_gathered()), "sealing gathered");
        // From inside the first run: its rows past 500, nothing kept.
        let inside = offsets("c", &[(0, 500)]);
        let got = ids(&s.scan(&inside, &TailFilter::default()).unwrap());
        assert_eq!(got, (500..n).collect::<Vec<_>>());
        assert!(!segs[0].is_gathered(), "a partial read was kept");
        assert!(segs[1].is_gathered(), "a whole read was not kept");
        // A commit through the second run: the rows past it, not gathered.
        s.prune(&offsets("c", &[(0, 1500)]));
        let after = s.by_symbol["A"].sealed.clone();
        assert_eq!(after.len(), 1);
        assert!(!after[0].is_gathered(), "pruning gathered");
        assert_eq!(after[0].len(), n as usize - 1500);
        let since = offsets("c", &[(0, 1500)]);
        let first = s.scan(&since, &TailFilter::default()).unwrap();
        assert_eq!(ids(&first), (1500..n).collect::<Vec<_>>());
        let again = s.snapshot().scan(&since, &TailFilter::default()).unwrap();
        assert!(
            first[0].column(0).to_data().buffers()[0]
                .ptr_eq(&again[0].column(0).to_data().buffers()[0]),
            "a second scan gathered the run again"
        );
    }

    /// The view hands out the newest published snapshot; before any, the
    /// tail is empty.
    #[test]
    fn the_view_serves_the_newest_snapshot() {
        let view = TailView::default();
        let none = offsets("c", &[]);
        let all = TailFilter::default();
        assert!(view.scan(&none, &all).unwrap().is_empty());
        let mut s = store();
        s.push((0..5).map(|o| row(0, o, "A")).collect());
        view.publish(s.snapshot());
        let held = view.load().unwrap();
        s.push((5..8).map(|o| row(0, o, "A")).collect());
        view.publish(s.snapshot());
        assert_eq!(
            ids(&view.scan(&none, &all).unwrap()),
            (0..8).collect::<Vec<_>>()
        );
        assert_eq!(
            ids(&held.scan(&none, &all).unwrap()),
            (0..5).collect::<Vec<_>>()
        );
    }
}
