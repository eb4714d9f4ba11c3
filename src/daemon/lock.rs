//! One process per data directory. Two daemons sharing one would overwrite
//! each other's snapshots' offsets, spill segments and schema ids, so the
//! daemon (and `load asx`, `produce`) takes an advisory lock on
//! `<data_dir>/ticklake.lock` first and refuses to start without it.
//!
//! The operating system releases the lock when the process ends, however
//! it ends (a SIGKILL included), so a lock file left behind never blocks a
//! restart. The file holds the owner's pid, for the refusal's message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "ticklake.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data directory {dir} is in use by another ticklake process{holder}: it holds the lock {lock}; stop that process or set another data_dir"
    )]
    Held {
        dir: PathBuf,
        lock: PathBuf,
        /// ` (pid N)` when the owner wrote it, else empty.
        holder: String,
    },
    #[error("data directory lock {lock}: {source}")]
    Io {
        lock: PathBuf,
        source: std::io::Error,
    },
}

/// Held for as long as the process works in the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let lock = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            lock: lock.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    lock,
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).unwrap();
        let err = DataDirLock::acquire(&data).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{msg}");
        assert!(msg.contains(LOCK_FILE), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        DataDirLock::acquire(&data).expect("free once the first holder is gone");
    }
}
