//! Where a spilled record goes when the broker refuses it for good (too
//! large for the topic, malformed): beside the spill log, so replay goes on
//! behind it instead of stopping at it forever, and nothing is lost either.
//!
//! `quarantine.log` holds one entry per refused record, each
//! `[u32 length][spill entry bytes]` (length big-endian; the entry as
//! `SpillEntry::encode` wrote it), appended and synced before the spill
//! log's cursor moves past the record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file's name inside the spill directory.
pub const QUARANTINE_FILE: &str = "quarantine.log";

#[derive(Debug, thiserror::Error)]
#[error("quarantine file {path}: {source}")]
pub struct QuarantineError {
    path: PathBuf,
    source: std::io::Error,
}

#[derive(Debug)]
pub struct Quarantine {
    path: PathBuf,
    /// Opened on the first refused record: most runs never need it.
    file: Option<File>,
}

impl Quarantine {
    pub fn new(spill_dir: &Path) -> Self {
        Self {
            path: spill_dir.join(QUARANTINE_FILE),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and makes it durable.
    pub fn put(&mut self, entry: &[u8]) -> Result<(), QuarantineError> {
        let err = |source| QuarantineError {
            path: self.path.clone(),
            source,
        };
        let len = u32::try_from(entry.len())
            .map_err(|_| err(std::io::Error::other("entry over 4 GiB")))?;
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(err)?;
            self.file = Some(f);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut record = Vec::with_capacity(entry.len() + 4);
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(entry);
        file.write_all(&record).map_err(err)?;
        file.sync_data().map_err(err)
    }
}

/// The entries of a quarantine file, in order (for tests and tools).
pub fn read(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path)?;
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(entry) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        out.push(entry.to_vec());
        at += 4 + len;
    }
    Ok(out)
}
