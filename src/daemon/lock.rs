//! One process per data directory. Two daemons sharing one would overwrite
//! each other's snapshots' offsets, spill segments and schema ids, so the
//! daemon (and `load asx`, `produce`) takes an advisory lock on
//! `<data_dir>/ticklake.lock` first and refuses to start without it.
//!
//! The operating system releases the lock when the process ends, however
//! it ends (a SIGKILL included), so a lock file left behind never blocks a
//! restart. The file holds the owner's pid, for the refusal's message.
//!
//! A lock that was just let go can still look held for a moment: the lock
//! belongs to the open file, and a child that any thread of the process
//! forks shares that open file until it execs (close-on-exec closes it only
//! then). A daemon restarted inside one process (the tests do it, beside
//! threads that spawn query workers) would then be refused for nothing, so a
//! refusal is only final after a short grace (`GRACE`) of retries. A live
//! owner holds the lock for good, so the grace only delays its message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "ticklake.lock";

/// How long a held lock is retried before the refusal is final. A fork's
/// window lasts microseconds to a few milliseconds on a loaded machine.
const GRACE: Duration = Duration::from_millis(500);

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
        let retries = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(2))
            .with_max_delay(Duration::from_millis(100))
            .without_max_times()
            .with_total_delay(Some(GRACE));
        (|| Self::try_acquire(dir))
            .retry(retries)
            .when(|e| matches!(e, LockError::Held { .. }))
            .call()
    }

    fn try_acquire(dir: &Path) -> Result<Self, LockError> {
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

    /// The refusal is not lost to a lock that is let go a moment later, as
    /// a forked child's copy of the open file is when the child execs.
    #[test]
    fn a_lock_let_go_within_the_grace_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).unwrap();
        let letting_go = std::thread::spawn(move || {
            std::thread::sleep(GRACE / 5);
            drop(first);
        });
        DataDirLock::acquire(&data).expect("taken once the holder lets go within the grace");
        letting_go.join().unwrap();
    }
}
