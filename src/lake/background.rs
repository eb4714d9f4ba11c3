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
//! The lake arbiter (consumer, tail, writers' buffers) runs at nice 5, for
//! the same reason one step less: it is behind Kafka, not the socket.

use std::sync::OnceLock;

/// The nice value of the commit thread (0 is the default, 19 the lowest).
const COMMIT_NICE: i32 = 10;

/// The nice value of the lake arbiter's thread: the consumer, the tail
/// and the writers' buffers. What the feed does not read off its socket in
/// time fills its lane, and a lane full for `degradation.raise_after_ms`
/// sheds enrichment and more; what the lake arbiter reads late only waits
/// in Kafka, and the consumer's lag is a signal of its own. On two cores,
/// with the feed's thread, this one and librdkafka's all busy at nice 0,
/// the feed got about two thirds of a core when it needed three quarters.
/// In alternating paced runs of 1,000,000 trades at 240,000 and 250,000
/// trades/s, nice 0 held NORMAL in 3 of 7 and nice 5 in 6 of 7 (see
/// docs/performance.md, "Session of 6 December, second"). Nice 5 is a
/// weight of about a third of the feed's, so the lake side still gets
/// its share under contention and cannot starve.
pub const LAKE_NICE: i32 = 5;

/// Lowers the calling thread's scheduling priority to `LAKE_NICE`: run
/// on the lake arbiter when it starts.
pub fn lower_lake_thread() {
    lower_priority_to(LAKE_NICE);
}

static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();

/// A handle of the commit runtime: one worker thread, plus its blocking
/// pool, all at `COMMIT_NICE`. If the runtime cannot be built, commits run
/// on the caller's runtime as before.
pub fn handle() -> tokio::runtime::Handle {
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ticklake-commit")
            .on_thread_start(|| lower_priority_to(COMMIT_NICE))
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
fn lower_priority_to(nice: i32) {
    // SAFETY: gettid and setpriority take plain integers and touch no
    // memory of ours. On Linux, PRIO_PROCESS with a thread id changes that
    // thread alone.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if r != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            nice,
            "lake: could not lower a thread's priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority_to(_nice: i32) {}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn commits_run_on_a_lower_priority_thread() {
        let (name, nice) = super::handle()
            .spawn(async {
                let name = std::thread::current().name().map(str::to_string);
                #[cfg(target_os = "linux")]
                // SAFETY: as in lower_priority_to.
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

    #[cfg(target_os = "linux")]
    #[test]
    fn the_lake_thread_runs_below_the_feed_and_above_commits() {
        let nice = std::thread::spawn(|| {
            super::lower_lake_thread();
            // SAFETY: as in lower_priority_to.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        })
        .join()
        .unwrap();
        assert_eq!(nice, super::LAKE_NICE);
        // SAFETY: as above; this thread's own priority is untouched.
        let here = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        assert!(here < nice && nice < super::COMMIT_NICE, "{here} {nice}");
    }
}
