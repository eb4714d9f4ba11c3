//! What the process and each of its threads spent, from the kernel: the
//! bench's CPU-µs per trade (`getrusage`) and where that time went (the
//! per-thread times in `/proc/self/task`, grouped by thread name), and the
//! resident memory it peaked at.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// User plus system CPU time of the whole process.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time per live thread, by thread id: (name, time).
pub type Threads = BTreeMap<u64, (String, Duration)>;

/// The CPU time of every thread of this process now.
pub fn threads() -> Threads {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut out = Threads::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "tid (name) state ppid ...": the name may hold spaces and
        // parentheses, so fields are counted from the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime); 3 is the first here.
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(user), Some(system)) = (field(11), field(12)) else {
            continue;
        };
        let time = Duration::from_micros((user + system) * 1_000_000 / ticks);
        out.insert(tid, (name, time));
    }
    out
}

/// CPU time spent by one group of threads between two readings.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ThreadCpu {
    /// The thread name, with a trailing number dropped so that a pool's
    /// threads count as one (`tokio-runtime-w`, `rdk:broker`).
    pub name: String,
    pub threads: usize,
    pub cpu_secs: f64,
    /// Of the process's CPU time in the same interval.
    pub share: f64,
}

fn group(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#')
        .to_string()
}

/// What each thread group spent between `before` and `after`, most first.
/// Threads born in between count from zero.
pub fn spent(before: &Threads, after: &Threads) -> Vec<ThreadCpu> {
    let mut by: BTreeMap<String, (usize, Duration)> = BTreeMap::new();
    for (tid, (name, t)) in after {
        let base = before.get(tid).map(|b| b.1).unwrap_or_default();
        let e = by.entry(group(name)).or_default();
        e.0 += 1;
        e.1 += t.saturating_sub(base);
    }
    let total: f64 = by.values().map(|v| v.1.as_secs_f64()).sum();
    let mut out: Vec<ThreadCpu> = by
        .into_iter()
        .filter(|(_, (_, t))| !t.is_zero())
        .map(|(name, (threads, t))| ThreadCpu {
            name,
            threads,
            cpu_secs: t.as_secs_f64(),
            share: if total > 0.0 {
                t.as_secs_f64() / total
            } else {
                0.0
            },
        })
        .collect();
    out.sort_by(|a, b| b.cpu_secs.total_cmp(&a.cpu_secs));
    out
}

/// Resident memory now, in bytes, read as the daemon's `rss_bytes` signal
/// reads it.
pub fn resident_bytes() -> Option<u64> {
    memory_stats::memory_stats().map(|m| m.physical_mem as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_is_seen_spending_cpu() {
        let before = threads();
        assert!(!before.is_empty());
        let cpu0 = process_cpu();
        // Spin for a few scheduler ticks.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_cpu() > cpu0);
        let spent = spent(&before, &threads());
        assert!(spent.iter().any(|g| g.cpu_secs > 0.0), "{spent:?}");
        let shares: f64 = spent.iter().map(|g| g.share).sum();
        assert!((shares - 1.0).abs() < 1e-9, "{spent:?}");
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn pool_threads_group_by_their_name_without_the_number() {
        assert_eq!(group("rdk:broker-1"), "rdk:broker");
        assert_eq!(group("tokio-runtime-w"), "tokio-runtime-w");
        assert_eq!(
            group("actix-rt|system:0|arbiter:12"),
            "actix-rt|system:0|arbiter:"
        );
    }
}
