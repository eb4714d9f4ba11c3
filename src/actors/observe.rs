//! One shape for every actor: an observable state published on a watch
//! channel, the same restart and last-error bookkeeping, and one restart
//! helper with a capped, jittered backoff.
//!
//! Modelled on Quickwit's actors: each actor has a serializable
//! `ObservableState`; observers (`/status`, the degradation supervisor,
//! tests) read the newest published copy without locking the actor, so a
//! busy actor never stalls them. Tests that must see the effect of earlier
//! messages send the generic [`Observe`](crate::messages::observe::Observe)
//! message instead: it is answered after everything sent before it
//! ("process what is pending, then observe").

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::degrade::breaker::BreakerSnapshot;
pub use crate::messages::observe::Health;
use crate::metrics::Metrics;

/// An actor's observable state.
pub trait ObservableState: Clone + Serialize + Send + Sync + 'static {
    /// The actor's name in the supervision tree (`producer`,
    /// `writer.trades`, `feed.binance`).
    fn name(&self) -> String;

    /// A word or two for the tree's state column.
    fn status(&self) -> String;

    fn health(&self) -> &Health;

    /// The degradation supervisor's rate (see `SupervisorState::rates`)
    /// that is this actor's throughput.
    fn throughput_key(&self) -> Option<String> {
        None
    }

    /// The actor's circuit breaker, if it has one; `/status` lists them.
    fn breaker(&self) -> Option<&BreakerSnapshot> {
        None
    }

    /// The fields of its `/status` node beyond name, state, restarts,
    /// last error and throughput: by default the whole state.
    fn details(&self) -> Map<String, Value> {
        fields_of(self)
    }
}

/// A state's serialized fields, for `details` and its overrides.
pub fn fields_of(state: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(state) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The sending side of an actor's state: the actor publishes after each
/// change, observers hold receivers from [`subscribe`](Self::subscribe).
#[derive(Debug)]
pub struct Published<S> {
    tx: watch::Sender<S>,
}

impl<S: ObservableState> Published<S> {
    pub fn new(initial: S) -> Self {
        let (tx, _) = watch::channel(initial);
        Self { tx }
    }

    pub fn publish(&self, state: &S) {
        self.tx.send_replace(state.clone());
    }

    pub fn subscribe(&self) -> watch::Receiver<S> {
        self.tx.subscribe()
    }
}

/// One node of the `/status` tree, whatever the actor's state type.
pub trait StatusNode: Send + Sync {
    /// The node as `/status` shows it; `rates` are the supervisor's.
    fn node(&self, rates: &BTreeMap<String, f64>) -> Value;

    fn breaker(&self) -> Option<Value>;
}

impl<S: ObservableState> StatusNode for watch::Receiver<S> {
    fn node(&self, rates: &BTreeMap<String, f64>) -> Value {
        let s = self.borrow();
        let mut node = s.details();
        let h = s.health();
        let head = json!({
            "name": s.name(),
            "state": s.status(),
            "restarts": h.restarts,
            "last_error": h.last_error,
            "throughput_per_sec": s.throughput_key().and_then(|k| rates.get(&k).copied()),
        });
        if let Value::Object(head) = head {
            node.extend(head);
        }
        Value::Object(node)
    }

    fn breaker(&self) -> Option<Value> {
        let s = self.borrow();
        s.breaker()
            .map(|b| serde_json::to_value(b).unwrap_or(Value::Null))
    }
}

/// A stage configured off (the feed, when disabled): it keeps its place in
/// the tree, so a reader sees that it is off, not missing.
pub struct Disabled(pub &'static str);

impl StatusNode for Disabled {
    fn node(&self, _rates: &BTreeMap<String, f64>) -> Value {
        json!({"name": self.0, "state": "disabled", "restarts": 0, "last_error": null})
    }

    fn breaker(&self) -> Option<Value> {
        None
    }
}

/// How a supervised actor backs off between restarts: from `initial`,
/// doubling, to at most `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl RestartPolicy {
    /// No wait: an actor whose restart only re-arms its timers and streams.
    pub const IMMEDIATE: RestartPolicy = RestartPolicy {
        initial: Duration::ZERO,
        max: Duration::ZERO,
    };

    pub fn from_millis(initial_ms: u64, max_ms: u64) -> Self {
        Self {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
        }
    }
}

/// Restart bookkeeping shared by every supervised actor: it counts the
/// restart (state, metric, log) and says how long to wait before working
/// again, growing from `initial` to `max` with jitter, so an actor that
/// fails at once does not spin.
#[derive(Debug)]
pub struct Restarts {
    actor: String,
    builder: ExponentialBuilder,
    backoff: ExponentialBackoff,
    max: Duration,
}

impl Restarts {
    pub fn new(actor: impl Into<String>, policy: RestartPolicy) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(policy.initial)
            .with_max_delay(policy.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            actor: actor.into(),
            backoff: builder.build(),
            builder,
            max: policy.max,
        }
    }

    /// Counts one restart: in the actor's health, in
    /// `ticklake_actor_restarts_total{actor}` and in the log.
    pub fn count(&self, health: &mut Health, metrics: &Metrics) {
        health.restarts += 1;
        metrics
            .actor_restarts
            .with_label_values(&[&self.actor])
            .inc();
        tracing::warn!(actor = %self.actor, restarts = health.restarts, "actor restarting");
    }

    /// The wait before the next attempt: capped, jittered and growing
    /// until [`reset`](Self::reset).
    pub fn next_delay(&mut self) -> Duration {
        self.backoff.next().unwrap_or(self.max)
    }

    /// The wait before a (re)start's work: none on the first start.
    pub fn delay(&mut self, health: &Health) -> Duration {
        if health.restarts == 0 {
            Duration::ZERO
        } else {
            self.next_delay()
        }
    }

    /// A healthy run: the next failure waits the shortest delay again.
    pub fn reset(&mut self) {
        self.backoff = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, Serialize)]
    struct Toy {
        depth: u32,
        #[serde(flatten)]
        health: Health,
    }

    impl ObservableState for Toy {
        fn name(&self) -> String {
            "toy".into()
        }
        fn status(&self) -> String {
            if self.depth > 0 { "busy" } else { "idle" }.into()
        }
        fn health(&self) -> &Health {
            &self.health
        }
        fn throughput_key(&self) -> Option<String> {
            Some("toy.items".into())
        }
    }

    #[test]
    fn a_node_has_the_common_fields_and_the_actors_own() {
        let published = Published::new(Toy::default());
        let rx = published.subscribe();
        published.publish(&Toy {
            depth: 3,
            health: Health {
                restarts: 2,
                last_error: Some("boom".into()),
            },
        });
        let rates = BTreeMap::from([("toy.items".to_string(), 5.0)]);
        let node = rx.node(&rates);
        assert_eq!(node["name"], "toy");
        assert_eq!(node["state"], "busy");
        assert_eq!(node["restarts"], 2);
        assert_eq!(node["last_error"], "boom");
        assert_eq!(node["depth"], 3);
        assert_eq!(node["throughput_per_sec"], 5.0);
        assert!(rx.breaker().is_none());
    }

    #[test]
    fn restarts_count_and_back_off_with_a_cap() {
        let m = Metrics::new().unwrap();
        let mut r = Restarts::new("toy", RestartPolicy::from_millis(100, 1000));
        let mut h = Health::default();
        assert_eq!(r.delay(&h), Duration::ZERO, "a first start does not wait");
        r.count(&mut h, &m);
        assert_eq!(h.restarts, 1);
        assert_eq!(
            m.actor_restarts.with_label_values(&["toy"]).get(),
            1,
            "counted in the metric"
        );
        let first = r.delay(&h);
        // jitter adds up to one more base delay, never beyond twice the cap
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let later: Vec<Duration> = (0..10).map(|_| r.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= Duration::from_millis(2000)));
        assert!(later[9] >= Duration::from_millis(1000));
        r.reset();
        assert!(r.next_delay() <= Duration::from_millis(200), "reset");
    }
}
