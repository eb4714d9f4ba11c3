//! The files of `ticklake record`: one series per feed of JSON lines in
//! independent zstd frames, rotated by size or time, each file opening with
//! its own header.

use super::*;

/// The file side's totals.
#[derive(Debug, Default)]
pub(super) struct Written {
    pub(super) paths: Vec<PathBuf>,
    pub(super) uncompressed: u64,
    pub(super) compressed: u64,
}

impl Written {
    pub(super) fn fill(self, s: &mut FeedSummary) {
        s.files = self.paths.len() as u64;
        s.paths = self.paths;
        s.uncompressed_bytes = self.uncompressed;
        s.compressed_bytes = self.compressed;
    }
}

/// What every file's header says besides its time and sequence number.
#[derive(Debug, Clone)]
pub(super) struct HeaderInfo {
    pub(super) exchange: String,
    pub(super) feed: String,
    pub(super) protocol: &'static str,
    pub(super) url: String,
    pub(super) config: serde_json::Value,
}

/// One feed's file series.
pub(super) struct SeriesWriter {
    pub(super) dir: PathBuf,
    /// The exchange name as it goes into file names.
    pub(super) stem: String,
    pub(super) header: HeaderInfo,
    pub(super) rotate_bytes: u64,
    pub(super) rotate_after: Duration,
    pub(super) flush_every: Duration,
    pub(super) compressor: zstd::bulk::Compressor<'static>,
    pub(super) file: Option<OpenFile>,
    pub(super) seq: u64,
    pub(super) line: Vec<u8>,
    pub(super) written: Written,
}

pub(super) struct OpenFile {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) opened: Instant,
    /// Uncompressed bytes of the file so far, buffered ones included.
    pub(super) bytes: u64,
    /// Lines not yet compressed.
    pub(super) chunk: Vec<u8>,
    /// When the oldest buffered line was added.
    pub(super) chunk_since: Option<Instant>,
}

impl SeriesWriter {
    pub(super) fn new(
        opts: &RecordOptions,
        feed: &FeedConfig,
        url: &str,
    ) -> Result<Self, RecordError> {
        let mut compressor =
            zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|source| RecordError::Io {
                path: opts.out.clone(),
                source,
            })?;
        // A checksum per frame: a corrupt frame fails to read instead of
        // yielding wrong frames.
        compressor
            .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
            .map_err(|source| RecordError::Io {
                path: opts.out.clone(),
                source,
            })?;
        let stem: String = feed
            .exchange
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Ok(Self {
            dir: opts.out.clone(),
            stem,
            header: HeaderInfo {
                exchange: feed.exchange.clone(),
                feed: feed.name.clone(),
                protocol: feed.protocol().as_str(),
                url: url.to_string(),
                config: serde_json::json!({
                    "symbols": feed.symbols,
                    "channels": feed.channels,
                }),
            },
            rotate_bytes: opts.rotate_bytes,
            rotate_after: opts.rotate_after,
            flush_every: opts.flush_every,
            compressor,
            file: None,
            seq: 0,
            line: Vec::with_capacity(4096),
            written: Written::default(),
        })
    }

    /// Writes events until every sender is gone, then finishes the file.
    pub(super) fn run(mut self, rx: mpsc::Receiver<Event>) -> Result<Written, RecordError> {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(event) => self.write(&event)?,
                Err(RecvTimeoutError::Timeout) => self.tick(Instant::now())?,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.close_file()?;
        Ok(self.written)
    }

    pub(super) fn write(&mut self, event: &Event) -> Result<(), RecordError> {
        let now = Instant::now();
        if self.file.is_none() {
            self.open_file(now)?;
        }
        self.line.clear();
        encode(&mut self.line, event);
        self.append(now)?;
        self.tick(now)
    }

    /// Buffers `self.line` into the open file.
    pub(super) fn append(&mut self, now: Instant) -> Result<(), RecordError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.chunk.extend_from_slice(&self.line);
        file.chunk_since.get_or_insert(now);
        file.bytes += self.line.len() as u64;
        self.written.uncompressed += self.line.len() as u64;
        Ok(())
    }

    /// Flushes and rotates when their time (or size) has come.
    pub(super) fn tick(&mut self, now: Instant) -> Result<(), RecordError> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        let flush_due = file.chunk.len() >= CHUNK_BYTES
            || file
                .chunk_since
                .is_some_and(|since| now.duration_since(since) >= self.flush_every);
        let rotate_due =
            file.bytes >= self.rotate_bytes || now.duration_since(file.opened) >= self.rotate_after;
        if rotate_due {
            self.close_file()
        } else if flush_due {
            self.flush_chunk()
        } else {
            Ok(())
        }
    }

    pub(super) fn open_file(&mut self, now: Instant) -> Result<(), RecordError> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut attempt = 0u32;
        let (path, file) = loop {
            let name = if attempt == 0 {
                format!("{}.{stamp}.jsonl.zst", self.stem)
            } else {
                format!("{}.{stamp}_{attempt:04}.jsonl.zst", self.stem)
            };
            let path = self.dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 9999 => {
                    attempt += 1;
                }
                Err(source) => return Err(RecordError::Io { path, source }),
            }
        };
        info!(path = %path.display(), "recording to a new file");
        self.written.paths.push(path.clone());
        self.file = Some(OpenFile {
            path,
            file,
            opened: now,
            bytes: 0,
            chunk: Vec::with_capacity(CHUNK_BYTES + 64 * 1024),
            chunk_since: None,
        });
        self.line.clear();
        encode_header(&mut self.line, &self.header, now_us(), self.seq);
        self.seq += 1;
        self.append(now)
    }

    /// Compresses the buffered lines into one zstd frame and writes it.
    pub(super) fn flush_chunk(&mut self) -> Result<(), RecordError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if file.chunk.is_empty() {
            return Ok(());
        }
        let io = |path: &Path, source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        let frame = self
            .compressor
            .compress(&file.chunk)
            .map_err(|e| io(&file.path, e))?;
        // Unbuffered: once written, the frame is the kernel's and survives
        // the process being killed.
        file.file.write_all(&frame).map_err(|e| io(&file.path, e))?;
        self.written.compressed += frame.len() as u64;
        file.chunk.clear();
        file.chunk_since = None;
        Ok(())
    }

    pub(super) fn close_file(&mut self) -> Result<(), RecordError> {
        self.flush_chunk()?;
        if let Some(file) = self.file.take() {
            file.file.sync_data().map_err(|source| RecordError::Io {
                path: file.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// `1700000000.123456`: unix seconds with microseconds, always six decimals.
pub(super) fn push_ts(out: &mut Vec<u8>, us: i64) {
    let _ = write!(
        out,
        "{}.{:06}",
        us.div_euclid(1_000_000),
        us.rem_euclid(1_000_000)
    );
}

/// A JSON string (quoted and escaped).
pub(super) fn push_str(out: &mut Vec<u8>, s: &str) {
    // Cannot fail: a string serializes into a Vec without error.
    let _ = serde_json::to_writer(&mut *out, s);
}

pub(super) fn encode_header(out: &mut Vec<u8>, h: &HeaderInfo, ts: i64, seq: u64) {
    out.extend_from_slice(br#"{"t":"header","format":"#);
    let _ = write!(out, "{FORMAT}");
    out.extend_from_slice(br#","exchange":"#);
    push_str(out, &h.exchange);
    out.extend_from_slice(br#","feed":"#);
    push_str(out, &h.feed);
    out.extend_from_slice(br#","recorded":"#);
    push_ts(out, ts);
    let _ = write!(out, r#","seq":{seq},"protocol":"#);
    push_str(out, h.protocol);
    out.extend_from_slice(br#","url":"#);
    push_str(out, &h.url);
    out.extend_from_slice(br#","config":"#);
    let _ = serde_json::to_writer(&mut *out, &h.config);
    out.extend_from_slice(br#","recorder":"#);
    push_str(out, concat!("ticklake ", env!("CARGO_PKG_VERSION")));
    out.extend_from_slice(b"}\n");
}

/// One event as its JSON line.
pub(super) fn encode(out: &mut Vec<u8>, event: &Event) {
    let (t, conn, ts) = match event {
        Event::Connect { conn, ts, .. } => ("connect", conn, *ts),
        Event::Send { conn, ts, .. } => ("send", conn, *ts),
        Event::Text { conn, ts, .. } | Event::Binary { conn, ts, .. } => ("recv", conn, *ts),
        Event::Disconnect { conn, ts, .. } => ("disconnect", conn, *ts),
    };
    let _ = write!(out, r#"{{"t":"{t}","conn":"#);
    push_str(out, conn);
    out.extend_from_slice(br#","ts":"#);
    push_ts(out, ts);
    match event {
        Event::Connect { addr, .. } => {
            out.extend_from_slice(br#","addr":"#);
            push_str(out, addr);
        }
        Event::Send { data, .. } => {
            out.extend_from_slice(br#","data":"#);
            push_str(out, data);
        }
        Event::Text { data, .. } => {
            out.extend_from_slice(br#","data":"#);
            push_str(out, data.as_str());
        }
        Event::Binary { data, .. } => {
            out.extend_from_slice(br#","b64":""#);
            let encoded = base64::engine::general_purpose::STANDARD.encode(data);
            out.extend_from_slice(encoded.as_bytes());
            out.push(b'"');
        }
        Event::Disconnect { reason, .. } => {
            out.extend_from_slice(br#","reason":"#);
            push_str(out, reason);
        }
    }
    out.extend_from_slice(b"}\n");
}
