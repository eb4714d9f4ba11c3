//! On-disk spill log: where records go while a sink's breaker is open,
//! replayed in order once it closes, then truncated. A daemon that restarts
//! with a non-empty log replays it first.
//!
//! Layout: a directory of segments `spill-<seq:020>.log` plus a `cursor`
//! file. A record is `u32 LE payload length`, `u32 LE crc32(payload)`, then
//! the payload. Segments roll once the next record would push the active one
//! past `segment_bytes` (a record larger than that gets a segment of its
//! own). Empty payloads are refused so that a zero-filled region, which is
//! what a file system can leave after a crash, never parses as valid records
//! (crc32 of nothing is 0).
//!
//! The cursor `{"segment": seq, "offset": byte}` is the position of the next
//! record to deliver: everything in lower-numbered segments, and before
//! `offset` in segment `seq`, has been accepted by a replay callback. It is
//! replaced atomically (write `cursor.tmp`, fsync, rename, fsync directory)
//! when a replay stops for any reason, and every [`CURSOR_PERSIST_EVERY`]
//! records during a long replay. Within one process a replay resumes exactly
//! after the last accepted record; after a crash in the middle of a replay at
//! most [`CURSOR_PERSIST_EVERY`] records are delivered again (downstream
//! deduplicates), none is skipped.
//!
//! Crash handling on [`SpillLog::open`]: only the active (last) segment can
//! be torn, because a segment is fsynced when it is sealed. A bad record in
//! the last segment that is followed by nothing but zero bytes is a torn
//! tail: it is cut off and reported. Any other bad record is corruption and
//! an error naming the file and offset.
//!
//! Segment numbers only grow. [`SpillLog::truncate`] first moves the cursor
//! to a segment number above every existing one and only then deletes the
//! files, so a crash in between leaves segments the cursor already covers;
//! `open` removes those. A single process must own the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// During a replay the cursor is persisted at least this often (in records).
pub const CURSOR_PERSIST_EVERY: u64 = 1024;

/// Length + crc32.
const HEADER_LEN: u64 = 8;
const CURSOR_FILE: &str = "cursor";
const CURSOR_TMP_FILE: &str = "cursor.tmp";
const READ_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("spill log i/o on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spill segment {} is corrupt at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("spill cursor {} is invalid: {reason}", path.display())]
    Cursor { path: PathBuf, reason: String },
    #[error("spill record of {len} bytes exceeds the {max} byte limit")]
    RecordTooLarge { len: usize, max: u32 },
    #[error("spill records must not be empty")]
    EmptyRecord,
}

/// Why [`SpillLog::replay`] stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError<E> {
    /// The callback refused a record; `delivered` records were accepted
    /// before it during this call and the refused one is still pending.
    #[error("spill replay callback failed after {delivered} records: {source}")]
    Callback {
        delivered: u64,
        #[source]
        source: E,
    },
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// What [`SpillLog::open`] had to repair.
#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct OpenReport {
    /// Torn records cut off the end of the last segment (0 or 1).
    pub torn_records: u64,
    /// Bytes cut off with them (the torn record plus any zero fill).
    pub torn_bytes: u64,
    /// Segments deleted because the cursor was already past them.
    pub removed_segments: u64,
}

/// Serializable view, e.g. for `/status`.
#[derive(Serialize, Clone, PartialEq, Eq, Debug)]
pub struct SpillSnapshot {
    pub dir: PathBuf,
    pub segments: u64,
    pub pending: u64,
    pub pending_bytes: u64,
    pub cursor_segment: u64,
    pub cursor_offset: u64,
    pub open_report: OpenReport,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
struct Cursor {
    segment: u64,
    offset: u64,
}

#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Bytes of whole, verified records.
    len: u64,
}

/// Result of scanning one segment at open.
struct Scan {
    /// End of the last good record.
    valid_len: u64,
    /// The offset `count_from` sits on a record boundary (or the end).
    boundary_found: bool,
    /// Records and bytes at or after `count_from`.
    records: u64,
    bytes: u64,
    /// Bytes cut off as a torn tail.
    torn_bytes: u64,
}

#[derive(Debug)]
pub struct SpillLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Ascending by `seq`, all at or above `cursor.segment`; the last one
    /// takes appends.
    segments: Vec<Segment>,
    /// Append handle on the last segment, opened lazily.
    writer: Option<File>,
    cursor: Cursor,
    persisted: Option<Cursor>,
    pending: u64,
    pending_bytes: u64,
    /// A segment file was created or deleted since the directory was fsynced.
    dir_dirty: bool,
    report: OpenReport,
    record_buf: Vec<u8>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpillError + '_ {
    move |source| SpillError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(seq: u64) -> String {
    format!("spill-{seq:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("spill-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), SpillError> {
    // Makes file creations, deletions and renames in `dir` durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn remove_if_exists(path: &Path) -> Result<bool, SpillError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn read_cursor(path: &Path) -> Result<Option<Cursor>, SpillError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| SpillError::Cursor {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> SpillError {
    SpillError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// True when every byte of `reader` from its position on is zero.
fn rest_is_zero(reader: &mut impl Read, path: &Path) -> Result<bool, SpillError> {
    let mut buf = [0u8; 8192];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// Reads and verifies the record whose header starts at `offset`, reading no
/// further than `end`. Returns the payload length, or why the record is bad
/// along with how many bytes (from `offset`) it spans.
fn read_record(
    reader: &mut impl Read,
    offset: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> io::Result<Result<u64, (&'static str, u64)>> {
    let remaining = end - offset;
    if remaining < HEADER_LEN {
        return Ok(Err(("incomplete record header", remaining)));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    reader.read_exact(&mut header)?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len = u64::from(u32::from_le_bytes([l0, l1, l2, l3]));
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len == 0 {
        return Ok(Err(("zero-length record", HEADER_LEN)));
    }
    if HEADER_LEN + len > remaining {
        return Ok(Err((
            "record extends past the end of the segment",
            remaining,
        )));
    }
    // `len` fits in u32, so it fits in usize on every supported target.
    buf.resize(len as usize, 0);
    reader.read_exact(buf)?;
    if crc32fast::hash(buf) != crc {
        return Ok(Err(("checksum mismatch", HEADER_LEN + len)));
    }
    Ok(Ok(len))
}

/// Scans a segment, counting records from `count_from`. In the last segment
/// a torn tail is cut off; anything else bad is an error.
fn scan_segment(
    path: &Path,
    is_last: bool,
    count_from: u64,
    buf: &mut Vec<u8>,
) -> Result<Scan, SpillError> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let mut scan = Scan {
        valid_len: 0,
        boundary_found: count_from == 0,
        records: 0,
        bytes: 0,
        torn_bytes: 0,
    };
    let mut offset = 0;
    while offset < file_len {
        let outcome = read_record(&mut reader, offset, file_len, buf).map_err(io_err(path))?;
        match outcome {
            Ok(len) => {
                if offset >= count_from {
                    scan.records += 1;
                    scan.bytes += HEADER_LEN + len;
                }
                offset += HEADER_LEN + len;
                if offset == count_from {
                    scan.boundary_found = true;
                }
            }
            Err((reason, span)) => {
                let torn = is_last && {
                    let mut rest = File::open(path).map_err(io_err(path))?;
                    rest.seek(SeekFrom::Start(offset + span))
                        .map_err(io_err(path))?;
                    rest_is_zero(&mut rest, path)?
                };
                if !torn {
                    return Err(corrupt(path, offset, reason));
                }
                drop(reader);
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                file.set_len(offset).map_err(io_err(path))?;
                file.sync_all().map_err(io_err(path))?;
                tracing::warn!(
                    segment = %path.display(),
                    offset,
                    cut_bytes = file_len - offset,
                    reason,
                    "spill log: cut torn tail record"
                );
                scan.torn_bytes = file_len - offset;
                scan.valid_len = offset;
                return Ok(scan);
            }
        }
    }
    scan.valid_len = offset;
    Ok(scan)
}

impl SpillLog {
    /// Opens (creating if needed) the log in `dir`, repairing a torn tail and
    /// dropping segments the cursor has already passed. `segment_bytes` is
    /// the roll size for new records ([`DEFAULT_SEGMENT_BYTES`] normally).
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Self, SpillError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut report = OpenReport::default();
        let mut dir_dirty = remove_if_exists(&dir.join(CURSOR_TMP_FILE))?;

        let cursor_path = dir.join(CURSOR_FILE);
        let persisted = read_cursor(&cursor_path)?;
        let cursor = persisted.unwrap_or(Cursor {
            segment: 0,
            offset: 0,
        });

        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            if let Some(seq) = name.to_str().and_then(parse_segment_name) {
                found.push((seq, entry.path()));
            }
        }
        found.sort();

        let mut segments = Vec::new();
        let mut pending = 0;
        let mut pending_bytes = 0;
        let mut buf = Vec::new();
        let (stale, live): (Vec<_>, Vec<_>) = found
            .into_iter()
            .partition(|(seq, _)| *seq < cursor.segment);
        for (_, path) in stale {
            // Fully replayed (e.g. a crash inside `truncate`).
            remove_if_exists(&path)?;
            report.removed_segments += 1;
            dir_dirty = true;
        }
        let last_index = live.len().checked_sub(1);
        let mut cursor_segment_seen = false;
        for (i, (seq, path)) in live.into_iter().enumerate() {
            let is_cursor_segment = seq == cursor.segment;
            let count_from = if is_cursor_segment { cursor.offset } else { 0 };
            let scan = scan_segment(&path, Some(i) == last_index, count_from, &mut buf)?;
            if is_cursor_segment {
                cursor_segment_seen = true;
                if !scan.boundary_found {
                    return Err(SpillError::Cursor {
                        path: cursor_path,
                        reason: format!(
                            "offset {} is not a record boundary of {} (valid length {})",
                            cursor.offset,
                            path.display(),
                            scan.valid_len
                        ),
                    });
                }
            }
            if scan.torn_bytes > 0 {
                report.torn_records += 1;
                report.torn_bytes += scan.torn_bytes;
            }
            pending += scan.records;
            pending_bytes += scan.bytes;
            segments.push(Segment {
                seq,
                path,
                len: scan.valid_len,
            });
        }
        if !cursor_segment_seen && cursor.offset > 0 {
            return Err(SpillError::Cursor {
                path: cursor_path,
                reason: format!(
                    "offset {} points into missing segment {}",
                    cursor.offset,
                    segment_name(cursor.segment)
                ),
            });
        }
        if dir_dirty {
            sync_dir(dir)?;
        }
        if pending > 0 {
            tracing::info!(
                dir = %dir.display(),
                pending,
                pending_bytes,
                segments = segments.len(),
                "spill log has records to replay"
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            writer: None,
            cursor,
            persisted,
            pending,
            pending_bytes,
            dir_dirty: false,
            report,
            record_buf: Vec::new(),
        })
    }

    /// Appends one record. It reaches the OS page cache before this returns
    /// (so it survives the process being killed) but is only durable against
    /// power loss after [`SpillLog::sync`].
    pub fn append(&mut self, payload: &[u8]) -> Result<(), SpillError> {
        if payload.is_empty() {
            return Err(SpillError::EmptyRecord);
        }
        let Ok(len) = u32::try_from(payload.len()) else {
            return Err(SpillError::RecordTooLarge {
                len: payload.len(),
                max: u32::MAX,
            });
        };
        let record_len = HEADER_LEN + u64::from(len);
        let roll = match self.segments.last() {
            None => true,
            Some(s) => s.len > 0 && s.len + record_len > self.segment_bytes,
        };
        if roll {
            self.roll()?;
        }
        let Some(segment) = self.segments.last_mut() else {
            return Err(io_err(&self.dir)(io::Error::other("no active segment")));
        };
        let writer = match &mut self.writer {
            Some(w) => w,
            None => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&segment.path)
                    .map_err(io_err(&segment.path))?;
                // A failed earlier write may have left part of a record; cut
                // it so the next record starts on a boundary.
                let actual = file.metadata().map_err(io_err(&segment.path))?.len();
                if actual != segment.len {
                    file.set_len(segment.len).map_err(io_err(&segment.path))?;
                }
                self.writer.insert(file)
            }
        };
        // One write per record, unbuffered: a buffer in this process would
        // be lost if the daemon is OOM-killed, which is precisely the
        // situation that sends records to the spill log.
        self.record_buf.clear();
        self.record_buf.extend_from_slice(&len.to_le_bytes());
        self.record_buf
            .extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.record_buf.extend_from_slice(payload);
        if let Err(e) = writer.write_all(&self.record_buf) {
            // Reopen (and cut back to `segment.len`) before the next append.
            self.writer = None;
            return Err(io_err(&segment.path)(e));
        }
        segment.len += record_len;
        self.pending += 1;
        self.pending_bytes += record_len;
        Ok(())
    }

    /// Makes every appended record durable (fsync of the active segment and,
    /// if segments were created, of the directory).
    pub fn sync(&mut self) -> Result<(), SpillError> {
        if let (Some(writer), Some(segment)) = (&self.writer, self.segments.last()) {
            writer.sync_data().map_err(io_err(&segment.path))?;
        }
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Records appended and not yet accepted by a replay callback.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// On-disk bytes (headers included) of the pending records.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What `open` repaired.
    pub fn open_report(&self) -> OpenReport {
        self.report
    }

    pub fn snapshot(&self) -> SpillSnapshot {
        SpillSnapshot {
            dir: self.dir.clone(),
            segments: self.segments.len() as u64,
            pending: self.pending,
            pending_bytes: self.pending_bytes,
            cursor_segment: self.cursor.segment,
            cursor_offset: self.cursor.offset,
            open_report: self.report,
        }
    }

    /// Delivers pending records to `f` in append order and returns how many
    /// it accepted. On the first `Err` from `f` it stops; that record stays
    /// pending and the next replay starts with it. The cursor is persisted
    /// before returning, whatever the outcome.
    pub fn replay<F, E>(&mut self, mut f: F) -> Result<u64, ReplayError<E>>
    where
        F: FnMut(&[u8]) -> Result<(), E>,
    {
        let mut delivered = 0;
        let outcome = self.replay_inner(&mut f, &mut delivered);
        match outcome {
            Ok(()) => {
                self.persist_cursor()?;
                Ok(delivered)
            }
            Err(e) => {
                // Keep the original error; a failed cursor write only means
                // a restart may redeliver, and the next persist retries.
                if let Err(pe) = self.persist_cursor() {
                    tracing::warn!(error = %pe, "spill log: cannot persist replay cursor");
                }
                Err(e)
            }
        }
    }

    fn replay_inner<F, E>(&mut self, f: &mut F, delivered: &mut u64) -> Result<(), ReplayError<E>>
    where
        F: FnMut(&[u8]) -> Result<(), E>,
    {
        let mut since_persist = 0;
        let mut buf = Vec::new();
        // Segments do not change during a replay (`&mut self`), but `self`
        // is updated per record, so walk a copy of the list.
        let segments: Vec<Segment> = self.segments.clone();
        for segment in segments {
            if segment.seq < self.cursor.segment {
                continue;
            }
            let start = if segment.seq == self.cursor.segment {
                self.cursor.offset
            } else {
                0
            };
            if start >= segment.len {
                continue;
            }
            let path = &segment.path;
            let mut file = File::open(path).map_err(io_err(path))?;
            file.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
            let mut reader = BufReader::with_capacity(READ_BUFFER, file);
            let mut offset = start;
            while offset < segment.len {
                let len = match read_record(&mut reader, offset, segment.len, &mut buf) {
                    Ok(Ok(len)) => len,
                    Ok(Err((reason, _))) => return Err(corrupt(path, offset, reason).into()),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(corrupt(path, offset, "segment shorter than expected").into());
                    }
                    Err(e) => return Err(io_err(path)(e).into()),
                };
                if let Err(source) = f(&buf) {
                    return Err(ReplayError::Callback {
                        delivered: *delivered,
                        source,
                    });
                }
                offset += HEADER_LEN + len;
                self.cursor = Cursor {
                    segment: segment.seq,
                    offset,
                };
                self.pending = self.pending.saturating_sub(1);
                self.pending_bytes = self.pending_bytes.saturating_sub(HEADER_LEN + len);
                *delivered += 1;
                since_persist += 1;
                if since_persist >= CURSOR_PERSIST_EVERY {
                    self.persist_cursor()?;
                    since_persist = 0;
                }
            }
        }
        Ok(())
    }

    /// Deletes every segment and moves the cursor past them; meant for after
    /// a full replay. Records still pending are discarded (and logged).
    pub fn truncate(&mut self) -> Result<(), SpillError> {
        if self.pending > 0 {
            tracing::warn!(
                dir = %self.dir.display(),
                pending = self.pending,
                "spill log truncated with records never replayed"
            );
        }
        let next = self
            .segments
            .last()
            .map_or(self.cursor.segment, |s| s.seq.saturating_add(1))
            .max(self.cursor.segment);
        let previous = self.cursor;
        self.cursor = Cursor {
            segment: next,
            offset: 0,
        };
        // The cursor goes first: once it is durable the old segments are
        // logically gone, and a crash before their deletion is harmless.
        if let Err(e) = self.persist_cursor() {
            self.cursor = previous;
            return Err(e);
        }
        self.writer = None;
        self.pending = 0;
        self.pending_bytes = 0;
        let mut first_error = None;
        for segment in std::mem::take(&mut self.segments) {
            if let Err(e) = remove_if_exists(&segment.path) {
                first_error.get_or_insert(e);
            }
        }
        self.dir_dirty = true;
        if let Some(e) = first_error {
            return Err(e);
        }
        sync_dir(&self.dir)?;
        self.dir_dirty = false;
        Ok(())
    }

    /// Starts a new segment, sealing (fsyncing) the current one so that only
    /// the last segment can ever hold a torn record.
    fn roll(&mut self) -> Result<(), SpillError> {
        if let (Some(writer), Some(segment)) = (self.writer.take(), self.segments.last()) {
            writer.sync_data().map_err(io_err(&segment.path))?;
        }
        let seq = self
            .segments
            .last()
            .map_or(self.cursor.segment, |s| s.seq.saturating_add(1))
            .max(self.cursor.segment);
        let path = self.dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.dir_dirty = true;
        self.writer = Some(file);
        self.segments.push(Segment { seq, path, len: 0 });
        Ok(())
    }

    fn persist_cursor(&mut self) -> Result<(), SpillError> {
        if self.persisted == Some(self.cursor) {
            return Ok(());
        }
        // A durable cursor must never point past durable data: otherwise a
        // power loss after replaying unsynced records would leave a cursor
        // beyond the end of the segment it names.
        self.sync()?;
        let tmp = self.dir.join(CURSOR_TMP_FILE);
        let dst = self.dir.join(CURSOR_FILE);
        let bytes = serde_json::to_vec(&self.cursor).map_err(|e| SpillError::Cursor {
            path: dst.clone(),
            reason: e.to_string(),
        })?;
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        sync_dir(&self.dir)?;
        self.persisted = Some(self.cursor);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        }
    }

    fn open(dir: &Path, segment_bytes: u64) -> SpillLog {
        match SpillLog::open(dir, segment_bytes) {
            Ok(l) => l,
            Err(e) => panic!("open: {e}"),
        }
    }

    fn record(i: usize) -> Vec<u8> {
        // Varying sizes so records straddle segment limits differently.
        format!("record-{i:04}-{}", "x".repeat(i % 13)).into_bytes()
    }

    fn append_n(log: &mut SpillLog, range: std::ops::Range<usize>) {
        for i in range {
            if let Err(e) = log.append(&record(i)) {
                panic!("append {i}: {e}");
            }
        }
    }

    fn replay_all(log: &mut SpillLog) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        let res = log.replay(|p| {
            seen.push(p.to_vec());
            Ok::<(), String>(())
        });
        match res {
            Ok(n) => assert_eq!(n as usize, seen.len()),
            Err(e) => panic!("replay: {e}"),
        }
        seen
    }

    fn expected(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
        range.map(record).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(parse_segment_name)
                        .is_some()
                })
                .collect(),
            Err(e) => panic!("read_dir: {e}"),
        };
        files.sort();
        files
    }

    fn file_len(path: &Path) -> u64 {
        match fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) => panic!("metadata: {e}"),
        }
    }

    fn set_len(path: &Path, len: u64) {
        let res = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(len));
        if let Err(e) = res {
            panic!("set_len: {e}");
        }
    }

    fn patch(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) => panic!("read: {e}"),
        };
        f(&mut bytes);
        if let Err(e) = fs::write(path, bytes) {
            panic!("write: {e}");
        }
    }

    #[test]
    fn empty_log_replays_zero() {
        let dir = tmp();
        let path = dir.path().join("spill");
        let mut log = open(&path, DEFAULT_SEGMENT_BYTES);
        assert!(path.is_dir());
        assert_eq!((log.pending(), log.pending_bytes()), (0, 0));
        let mut called = false;
        let n = log.replay(|_| {
            called = true;
            Ok::<(), String>(())
        });
        assert!(matches!(n, Ok(0)));
        assert!(!called);
        assert!(segment_files(&path).is_empty());
        drop(log);
        assert_eq!(open(&path, DEFAULT_SEGMENT_BYTES).pending(), 0);
    }

    #[test]
    fn append_replay_order_across_segments() {
        let dir = tmp();
        let mut log = open(dir.path(), 64);
        append_n(&mut log, 0..50);
        assert_eq!(log.pending(), 50);
        let bytes: u64 = (0..50).map(|i| HEADER_LEN + record(i).len() as u64).sum();
        assert_eq!(log.pending_bytes(), bytes);
        let files = segment_files(dir.path());
        assert!(files.len() >= 10, "only {} segments", files.len());
        for f in &files {
            // A segment exceeds the limit only when it holds a single record.
            assert!(file_len(f) <= 64 + HEADER_LEN + 30, "{}", f.display());
        }
        assert_eq!(replay_all(&mut log), expected(0..50));
        assert_eq!((log.pending(), log.pending_bytes()), (0, 0));
        assert!(replay_all(&mut log).is_empty());
    }

    #[test]
    fn oversized_record_gets_its_own_segment() {
        let dir = tmp();
        let mut log = open(dir.path(), 32);
        let big = vec![7u8; 1000];
        for p in [b"a".as_slice(), &big, b"b"] {
            if let Err(e) = log.append(p) {
                panic!("{e}");
            }
        }
        assert_eq!(segment_files(dir.path()).len(), 3);
        assert_eq!(
            replay_all(&mut log),
            vec![b"a".to_vec(), big, b"b".to_vec()]
        );
    }

    #[test]
    fn reopen_after_drop_sees_same_pending() {
        let dir = tmp();
        let mut log = open(dir.path(), 100);
        append_n(&mut log, 0..20);
        if let Err(e) = log.sync() {
            panic!("{e}");
        }
        let (pending, bytes) = (log.pending(), log.pending_bytes());
        drop(log);
        let mut log = open(dir.path(), 100);
        assert_eq!((log.pending(), log.pending_bytes()), (pending, bytes));
        assert_eq!(log.open_report(), OpenReport::default());
        // Appends after a reopen continue the same sequence.
        append_n(&mut log, 20..25);
        drop(log);
        let mut log = open(dir.path(), 100);
        assert_eq!(replay_all(&mut log), expected(0..25));
    }

    #[test]
    fn torn_tail_is_cut_on_reopen() {
        // Cut 1 byte, a few bytes, and into the header of the last record.
        for cut in [1, 3, record(9).len() as u64 + 2] {
            let dir = tmp();
            let mut log = open(dir.path(), 64);
            append_n(&mut log, 0..10);
            drop(log);
            let files = segment_files(dir.path());
            let Some(last) = files.last() else {
                panic!("no segments")
            };
            let full = file_len(last);
            set_len(last, full - cut);

            let mut log = open(dir.path(), 64);
            let report = log.open_report();
            assert_eq!(report.torn_records, 1, "cut {cut}");
            assert_eq!(report.torn_bytes, HEADER_LEN + record(9).len() as u64 - cut);
            assert_eq!(log.pending(), 9);
            assert_eq!(file_len(last), full - HEADER_LEN - record(9).len() as u64);
            // The log is usable: new records follow the surviving ones.
            append_n(&mut log, 100..102);
            drop(log);
            let mut log = open(dir.path(), 64);
            assert_eq!(log.open_report(), OpenReport::default());
            let mut want = expected(0..9);
            want.extend(expected(100..102));
            assert_eq!(replay_all(&mut log), want);
        }
    }

    #[test]
    fn zero_filled_tail_is_cut_on_reopen() {
        let dir = tmp();
        let mut log = open(dir.path(), DEFAULT_SEGMENT_BYTES);
        append_n(&mut log, 0..5);
        drop(log);
        let files = segment_files(dir.path());
        let Some(last) = files.last() else {
            panic!("no segments")
        };
        let full = file_len(last);
        // What a file system may leave when the size was updated but the
        // data never reached the disk.
        set_len(last, full + 4096);
        let mut log = open(dir.path(), DEFAULT_SEGMENT_BYTES);
        assert_eq!(log.open_report().torn_records, 1);
        assert_eq!(log.open_report().torn_bytes, 4096);
        assert_eq!(file_len(last), full);
        assert_eq!(replay_all(&mut log), expected(0..5));
    }

    #[test]
    fn bad_checksum_on_last_record_is_a_torn_tail() {
        let dir = tmp();
        let mut log = open(dir.path(), DEFAULT_SEGMENT_BYTES);
        append_n(&mut log, 0..5);
        drop(log);
        let files = segment_files(dir.path());
        let Some(last) = files.last() else {
            panic!("no segments")
        };
        patch(last, |b| {
            if let Some(x) = b.last_mut() {
                *x ^= 0xff;
            }
        });
        let mut log = open(dir.path(), DEFAULT_SEGMENT_BYTES);
        assert_eq!(log.open_report().torn_records, 1);
        assert_eq!(replay_all(&mut log), expected(0..4));
    }

    #[test]
    fn corruption_in_the_middle_names_file_and_offset() {
        let dir = tmp();
        let mut log = open(dir.path(), 64);
        append_n(&mut log, 0..20);
        drop(log);
        let files = segment_files(dir.path());
        let first = &files[0];
        // Flip the first payload byte of the second record of segment 0.
        let second = HEADER_LEN + record(0).len() as u64;
        patch(first, |b| b[second as usize + HEADER_LEN as usize] ^= 0x01);
        let err = SpillLog::open(dir.path(), 64).err();
        match &err {
            Some(SpillError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, first);
                assert_eq!(*offset, second);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("spill-00000000000000000000.log"), "{msg}");
        assert!(msg.contains(&format!("offset {second}")), "{msg}");
    }

    #[test]
    fn corruption_before_the_tail_of_last_segment_is_an_error() {
        let dir = tmp();
        let mut log = open(dir.path(), DEFAULT_SEGMENT_BYTES);
        append_n(&mut log, 0..5);
        drop(log);
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 1);
        patch(&files[0], |b| b[HEADER_LEN as usize] ^= 0x01);
        match SpillLog::open(dir.path(), DEFAULT_SEGMENT_BYTES) {
            Err(SpillError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, files[0]);
                assert_eq!(offset, 0);
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("corruption not detected"),
        }
    }

    #[test]
    fn torn_bytes_in_a_sealed_segment_are_an_error() {
        let dir = tmp();
        let mut log = open(dir.path(), 64);
        append_n(&mut log, 0..20);
        drop(log);
        let files = segment_files(dir.path());
        let first = &files[0];
        set_len(first, file_len(first) - 2);
        assert!(matches!(
            SpillLog::open(dir.path(), 64),
            Err(SpillError::Corrupt { path, .. }) if &path == first
        ));
    }

    /// Replays with a callback that fails at record `k` (0-based).
    fn replay_failing_at(log: &mut SpillLog, k: usize) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        let res = log.replay(|p| {
            if seen.len() == k {
                return Err(format!("sink down at {k}"));
            }
            seen.push(p.to_vec());
            Ok(())
        });
        match res {
            Err(ReplayError::Callback { delivered, source }) => {
                assert_eq!(delivered as usize, k);
                assert_eq!(source, format!("sink down at {k}"));
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(n) => panic!("replay succeeded with {n}"),
        }
        seen
    }

    #[test]
    fn replay_failure_resumes_at_the_failed_record() {
        let n = 20;
        for k in 0..n {
            let dir = tmp();
            let mut log = open(dir.path(), 64);
            append_n(&mut log, 0..n);
            assert_eq!(replay_failing_at(&mut log, k), expected(0..k));
            assert_eq!(log.pending(), (n - k) as u64, "k={k}");
            let rest_bytes: u64 = (k..n).map(|i| HEADER_LEN + record(i).len() as u64).sum();
            assert_eq!(log.pending_bytes(), rest_bytes);
            assert_eq!(replay_all(&mut log), expected(k..n), "k={k}");
            assert_eq!(log.pending(), 0);
        }
    }

    #[test]
    fn replay_progress_survives_reopen() {
        let n = 20;
        for k in [0, 1, 7, 13, 19] {
            let dir = tmp();
            let mut log = open(dir.path(), 64);
            append_n(&mut log, 0..n);
            assert_eq!(replay_failing_at(&mut log, k), expected(0..k));
            drop(log);
            let mut log = open(dir.path(), 64);
            assert_eq!(log.pending(), (n - k) as u64, "k={k}");
            assert_eq!(replay_all(&mut log), expected(k..n), "k={k}");
            drop(log);
            let mut log = open(dir.path(), 64);
            assert_eq!(log.pending(), 0);
            assert!(replay_all(&mut log).is_empty());
        }
    }

    #[test]
    fn repeated_failures_deliver_each_record_once() {
        let dir = tmp();
        let mut log = open(dir.path(), 64);
        append_n(&mut log, 0..30);
        let mut accepted = Vec::new();
        let mut calls = 0u32;
        for round in 0.. {
            assert!(round < 100, "replay is not making progress");
            // Every third call fails, including the very first one.
            let res = log.replay(|p| {
                calls += 1;
                if calls % 3 == 1 {
                    return Err("flaky");
                }
                accepted.push(p.to_vec());
                Ok(())
            });
            if res.is_ok() {
                break;
            }
        }
        assert_eq!(accepted, expected(0..30));
    }

    fn copy_dir(from: &Path, to: &Path) {
        let entries = match fs::read_dir(from) {
            Ok(rd) => rd,
            Err(e) => panic!("{e}"),
        };
        for entry in entries.flatten() {
            if let Err(e) = fs::copy(entry.path(), to.join(entry.file_name())) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn crash_during_replay_redelivers_at_most_one_persist_interval() {
        let n = 2 * CURSOR_PERSIST_EVERY as usize + 500;
        let dir = tmp();
        let crashed = tmp();
        let mut log = open(dir.path(), 4096);
        append_n(&mut log, 0..n);
        let at = CURSOR_PERSIST_EVERY as usize + 700;
        let mut seen = 0;
        let res = log.replay(|_| {
            if seen == at {
                // What a crash right now would leave on disk.
                copy_dir(dir.path(), crashed.path());
            }
            seen += 1;
            Ok::<(), String>(())
        });
        assert!(matches!(res, Ok(k) if k as usize == n));
        let mut log = open(crashed.path(), 4096);
        let resumed_at = n - log.pending() as usize;
        assert_eq!(resumed_at, CURSOR_PERSIST_EVERY as usize);
        assert!(at - resumed_at <= CURSOR_PERSIST_EVERY as usize);
        assert_eq!(replay_all(&mut log), expected(resumed_at..n));
    }

    #[test]
    fn appends_after_partial_replay_come_after_the_rest() {
        let dir = tmp();
        let mut log = open(dir.path(), 64);
        append_n(&mut log, 0..10);
        assert_eq!(replay_failing_at(&mut log, 4), expected(0..4));
        append_n(&mut log, 10..15);
        assert_eq!(log.pending(), 11);
        assert_eq!(replay_all(&mut log), expected(4..15));
    }

    #[test]
    fn truncate_empties_and_new_appends_work() {
        let dir = tmp();
        let mut log = open(dir.path(), 64);
        append_n(&mut log, 0..20);
        assert_eq!(replay_all(&mut log), expected(0..20));
        if let Err(e) = log.truncate() {
            panic!("{e}");
        }
        assert_eq!((log.pending(), log.pending_bytes()), (0, 0));
        assert!(segment_files(dir.path()).is_empty());
        assert!(replay_all(&mut log).is_empty());

        append_n(&mut log, 100..103);
        assert_eq!(log.pending(), 3);
        drop(log);
        let mut log = open(dir.path(), 64);
        assert_eq!(log.pending(), 3);
        assert_eq!(replay_all(&mut log), expected(100..103));
        if let Err(e) = log.truncate() {
            panic!("{e}");
        }
        drop(log);
        let mut log = open(dir.path(), 64);
        assert_eq!(log.pending(), 0);
        assert!(replay_all(&mut log).is_empty());
    }

    #[test]
    fn crash_inside_truncate_leaves_nothing_pending() {
        let dir = tmp();
        let mut log = open(dir.path(), 64);
        append_n(&mut log, 0..20);
        assert_eq!(replay_all(&mut log), expected(0..20));
        drop(log);
        // Keep copies of the segments, truncate, then put them back: the
        // state of a crash after the cursor moved but before deletion.
        let saved: Vec<(PathBuf, Vec<u8>)> = segment_files(dir.path())
            .into_iter()
            .map(|p| {
                let b = fs::read(&p).unwrap_or_default();
                (p, b)
            })
            .collect();
        let mut log = open(dir.path(), 64);
        if let Err(e) = log.truncate() {
            panic!("{e}");
        }
        drop(log);
        for (p, b) in &saved {
            if let Err(e) = fs::write(p, b) {
                panic!("{e}");
            }
        }
        let mut log = open(dir.path(), 64);
        assert_eq!(log.pending(), 0);
        assert_eq!(log.open_report().removed_segments, saved.len() as u64);
        assert!(segment_files(dir.path()).is_empty());
        append_n(&mut log, 0..2);
        assert_eq!(replay_all(&mut log), expected(0..2));
    }

    #[test]
    fn partial_write_is_cut_before_the_next_append() {
        let dir = tmp();
        let mut log = open(dir.path(), DEFAULT_SEGMENT_BYTES);
        append_n(&mut log, 0..3);
        // Simulate a write that failed halfway: stray bytes at the end and
        // the handle dropped, as `append` does on error.
        log.writer = None;
        let files = segment_files(dir.path());
        patch(&files[0], |b| b.extend_from_slice(&[9, 0, 0, 0, 1, 2]));
        append_n(&mut log, 3..5);
        drop(log);
        let mut log = open(dir.path(), DEFAULT_SEGMENT_BYTES);
        assert_eq!(log.open_report(), OpenReport::default());
        assert_eq!(replay_all(&mut log), expected(0..5));
    }

    #[test]
    fn invalid_cursor_is_an_error_naming_it() {
        let dir = tmp();
        let mut log = open(dir.path(), 64);
        append_n(&mut log, 0..5);
        assert_eq!(replay_failing_at(&mut log, 2), expected(0..2));
        drop(log);
        let cursor = dir.path().join(CURSOR_FILE);
        for bad in [&b"{not json"[..], br#"{"segment":0,"offset":3}"#] {
            if let Err(e) = fs::write(&cursor, bad) {
                panic!("{e}");
            }
            match SpillLog::open(dir.path(), 64) {
                Err(SpillError::Cursor { path, .. }) => assert_eq!(path, cursor),
                Err(e) => panic!("wrong error: {e}"),
                Ok(_) => panic!("bad cursor accepted"),
            }
        }
    }

    #[test]
    fn rejects_empty_records() {
        let dir = tmp();
        let mut log = open(dir.path(), 64);
        assert!(matches!(log.append(b""), Err(SpillError::EmptyRecord)));
        assert_eq!(log.pending(), 0);
    }

    #[test]
    fn snapshot_serializes() {
        let dir = tmp();
        let mut log = open(dir.path(), 64);
        append_n(&mut log, 0..3);
        let json = match serde_json::to_value(log.snapshot()) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(json["pending"], 3);
        assert_eq!(json["open_report"]["torn_records"], 0);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(42), "spill-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for bad in ["spill-42.log", "cursor", "spill-0000000000000000004x.log"] {
            assert_eq!(parse_segment_name(bad), None);
        }
    }
}
