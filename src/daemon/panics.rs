//! A panic inside an actor kills that actor's task, where no supervisor
//! can see it. Count it, and stop the daemon non-zero so the process
//! supervisor (systemd) restarts it: the restart resumes exactly once from
//! the snapshots' offsets and the spill log. A panic on a query thread is
//! counted and logged only (see `query::pool`).
//!
//! The hook is the process's, so it is installed once, and it reports to
//! the daemons alive in the process at the time of the panic. A bench or a
//! test starts daemons one after another in one process: a hook per daemon,
//! each wrapping the one before, kept every stopped daemon's metrics alive
//! and sent each panic to all of them.

use std::sync::{Arc, Mutex, Once, Weak};

use crate::metrics::Metrics;

/// Where one daemon hears of a panic.
struct Sink {
    metrics: Metrics,
    fatal: tokio::sync::mpsc::UnboundedSender<String>,
}

/// A daemon's place in the hook's list; dropping it (with the daemon)
/// takes the daemon off the list.
pub(super) struct PanicSink {
    _sink: Arc<Sink>,
}

static SINKS: Mutex<Vec<Weak<Sink>>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

/// Puts a daemon on the list of those a panic reaches, installing the
/// process's hook the first time.
pub(super) fn register(
    metrics: Metrics,
    fatal: tokio::sync::mpsc::UnboundedSender<String>,
) -> PanicSink {
    HOOK.call_once(install);
    let sink = Arc::new(Sink { metrics, fatal });
    let mut sinks = SINKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    sinks.retain(|s| s.strong_count() > 0);
    sinks.push(Arc::downgrade(&sink));
    PanicSink { _sink: sink }
}

/// The daemons alive now. The list's lock is let go before anything is
/// done with them, so nothing a sink does can run under it.
fn live() -> Vec<Arc<Sink>> {
    SINKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect()
}

fn install() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let sinks = live();
        for sink in &sinks {
            sink.metrics
                .actor_panics
                .with_label_values(&[&thread])
                .inc();
        }
        previous(info);
        // A query's panic fails that query only: its task answers 500 and
        // the engine holds no state the panic could have broken.
        if crate::query::pool::on_query_thread() {
            tracing::error!(
                thread,
                "a query panicked; it fails alone and the daemon carries on"
            );
            return;
        }
        for sink in &sinks {
            let _ = sink.fatal.send(format!("panic in thread {thread}: {info}"));
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(sink: &PanicSink) -> bool {
        live().iter().any(|s| Arc::ptr_eq(s, &sink._sink))
    }

    /// A panic on a thread of the process reaches a live daemon: counted
    /// by thread, and sent to its fatal channel, which stops it. No other
    /// test of this binary starts a daemon, so this panic stops none.
    #[test]
    fn a_panic_is_counted_and_stops_a_live_daemon() {
        let metrics = Metrics::new().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = register(metrics.clone(), tx);
        let thread = "tl-panic-test";
        let joined = std::thread::Builder::new()
            .name(thread.into())
            .spawn(|| panic!("boom"))
            .unwrap()
            .join();
        assert!(joined.is_err(), "the thread panicked");
        // Another test's panic may have come first.
        let heard: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(
            heard
                .iter()
                .any(|m| m.starts_with("panic in thread tl-panic-test") && m.contains("boom")),
            "{heard:?}"
        );
        assert_eq!(metrics.actor_panics.with_label_values(&[thread]).get(), 1);
        drop(sink);
    }

    /// Other tests of this binary may start daemons at the same time, so
    /// this asks only about its own sinks, by identity.
    #[test]
    fn a_stopped_daemon_leaves_the_list_and_a_live_one_stays() {
        let metrics = Metrics::new().unwrap();
        let (tx_a, _rx_a) = tokio::sync::mpsc::unbounded_channel();
        let (tx_b, _rx_b) = tokio::sync::mpsc::unbounded_channel();
        let a = register(metrics.clone(), tx_a);
        let b = register(metrics, tx_b);
        assert!(listed(&a) && listed(&b));
        let weak_a = Arc::downgrade(&a._sink);
        drop(a);
        assert!(listed(&b), "the live daemon is still told of panics");
        assert!(weak_a.upgrade().is_none(), "the list keeps nothing alive");
        // The next registration sweeps the dead entry out of the list.
        let (tx_c, _rx_c) = tokio::sync::mpsc::unbounded_channel();
        let c = register(Metrics::new().unwrap(), tx_c);
        let dead = SINKS
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.ptr_eq(&weak_a))
            .count();
        assert_eq!(dead, 0, "a stopped daemon's entry was swept");
        assert!(listed(&b) && listed(&c));
    }
}
