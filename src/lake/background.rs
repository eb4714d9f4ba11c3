//! The runtime lake commits run on.
//!
//! Turning a commit's rows into Parquet (sorting, Arrow arrays, zstd) is the
//! heaviest CPU work in the daemon, and nothing waits on it but the tail's
//! size bound. The feed, producer and consumer are on the latency path of
//! every trade. On a small machine they share cores, and a commit of 50,000
//! rows on the shared pool held a core for tens of milliseconds at a time:
//! at 10,000 trades/s that alone tripled the p99 of feed-to-query latency.
//! Commits therefore run on a thread of their own at a lower scheduling
//! priority (nice 10 on Linux): they take the CPU the ingest path leaves,
//! and still get their share under contention, so they cannot starve.

use std::sync::OnceLock;

/// The nice value of the commit thread (0 is the default, 19 the lowest).
const COMMIT_NICE: i32 = 10;

static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();

/// A handle of the commit runtime: one worker thread, plus its blocking
/// pool, all at `COMMIT_NICE`. If the runtime cannot be built, commits run
/// on the caller's runtime as before.
pub fn handle() -> tokio::runtime::Handle {
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ticklake-commit")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .inspect_err(|e| {
                tracing::warn!(error = %e, "lake: no commit runtime of its own; commits share the pool")
            })
            .ok()
    });
    match rt {
        Some(rt) => rt.handle().clone(),
        None => tokio::runtime::Handle::current(),
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no
    // memory of ours. On Linux, PRIO_PROCESS with a thread id changes that
    // thread alone.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, COMMIT_NICE)
    };
    if r != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "lake: could not lower the commit thread's priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn commits_run_on_a_lower_priority_thread() {
        let (name, nice) = super::handle()
            .spawn(async {
                let name = std::thread::current().name().map(str::to_string);
                #[cfg(target_os = "linux")]
                // SAFETY: as in lower_priority.
                let nice =
                    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
                #[cfg(not(target_os = "linux"))]
                let nice = super::COMMIT_NICE;
                (name, nice)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("ticklake-commit"));
        assert_eq!(nice, super::COMMIT_NICE);
    }
}
