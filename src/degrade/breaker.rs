//! Circuit breaker for a downstream sink (Kafka, the Iceberg catalog…).
//!
//! CLOSED lets every call through and counts consecutive failures; at
//! `failure_threshold` it opens. OPEN refuses calls for `open_ms`, then the
//! next [`CircuitBreaker::allow`] moves it to HALF_OPEN, where calls go
//! through as probes: `half_open_successes` successes close it, a single
//! failure reopens it and restarts the timer.
//!
//! Time is passed in (`now_ms`) so the breaker is deterministic and tests run
//! in virtual time. Outcomes reported while OPEN (calls that were already in
//! flight when it opened) are counted but change nothing: a late failure must
//! not extend the open window, and a late success proves nothing about the
//! sink's state now.

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How many transitions [`CircuitBreaker::history`] keeps.
pub const HISTORY_CAPACITY: usize = 100;

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Same spelling as the serde form.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_failure_threshold() -> u32 {
    5
}

fn default_open_ms() -> u64 {
    5_000
}

fn default_half_open_successes() -> u32 {
    3
}

/// Breaker tuning.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures while CLOSED that open the breaker; at least 1.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Milliseconds the breaker stays OPEN before letting a probe through.
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
    /// Successes while HALF_OPEN needed to close again; at least 1.
    #[serde(default = "default_half_open_successes")]
    pub half_open_successes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            open_ms: default_open_ms(),
            half_open_successes: default_half_open_successes(),
        }
    }
}

/// An invalid breaker config; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerConfigError {
    #[error("{key}: must be at least 1")]
    Zero { key: &'static str },
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        // Zero would open on no failure at all / close without any probe.
        if self.failure_threshold == 0 {
            return Err(BreakerConfigError::Zero {
                key: "failure_threshold",
            });
        }
        if self.half_open_successes == 0 {
            return Err(BreakerConfigError::Zero {
                key: "half_open_successes",
            });
        }
        Ok(())
    }
}

/// One state change.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct BreakerTransition {
    pub at_ms: u64,
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: String,
}

/// Lifetime counters.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BreakerCounters {
    /// Times the breaker went to OPEN (from CLOSED or HALF_OPEN).
    pub opens: u64,
    pub total_failures: u64,
    pub total_successes: u64,
    /// Calls refused by [`CircuitBreaker::allow`] while OPEN.
    pub rejected: u64,
}

/// Serializable view, e.g. for `/status`.
#[derive(Serialize, Clone, PartialEq, Eq, Debug)]
pub struct BreakerSnapshot {
    pub name: String,
    pub state: BreakerState,
    pub config: BreakerConfig,
    pub consecutive_failures: u32,
    pub half_open_successes: u32,
    pub opened_at_ms: Option<u64>,
    pub counters: BreakerCounters,
    /// Oldest first.
    pub history: Vec<BreakerTransition>,
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    name: String,
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    half_open_successes: u32,
    opened_at_ms: Option<u64>,
    counters: BreakerCounters,
    history: VecDeque<BreakerTransition>,
}

impl CircuitBreaker {
    /// A CLOSED breaker; `name` identifies it in logs and snapshots.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Result<Self, BreakerConfigError> {
        config.validate()?;
        Ok(Self {
            name: name.into(),
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            half_open_successes: 0,
            opened_at_ms: None,
            counters: BreakerCounters::default(),
            history: VecDeque::with_capacity(HISTORY_CAPACITY),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub fn counters(&self) -> BreakerCounters {
        self.counters
    }

    /// Last [`HISTORY_CAPACITY`] transitions, oldest first.
    pub fn history(&self) -> &VecDeque<BreakerTransition> {
        &self.history
    }

    /// Whether a call may go to the sink now. CLOSED and HALF_OPEN say yes;
    /// OPEN says no until `open_ms` has passed, then turns HALF_OPEN and says
    /// yes. A `now_ms` before the opening counts as no time elapsed.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => true,
            BreakerState::Open => {
                let opened = self.opened_at_ms.unwrap_or(now_ms);
                let elapsed = now_ms.saturating_sub(opened);
                if elapsed >= self.config.open_ms {
                    self.half_open_successes = 0;
                    let reason = format!("open for {elapsed} ms");
                    self.transition(BreakerState::HalfOpen, reason, now_ms);
                    true
                } else {
                    self.counters.rejected += 1;
                    false
                }
            }
        }
    }

    pub fn on_success(&mut self, now_ms: u64) {
        self.counters.total_successes += 1;
        match self.state {
            BreakerState::Closed => self.consecutive_failures = 0,
            BreakerState::HalfOpen => {
                self.half_open_successes += 1;
                if self.half_open_successes >= self.config.half_open_successes {
                    let reason = format!("{} half-open successes", self.half_open_successes);
                    self.consecutive_failures = 0;
                    self.half_open_successes = 0;
                    self.opened_at_ms = None;
                    self.transition(BreakerState::Closed, reason, now_ms);
                }
            }
            BreakerState::Open => {}
        }
    }

    pub fn on_failure(&mut self, now_ms: u64) {
        self.counters.total_failures += 1;
        match self.state {
            BreakerState::Closed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.config.failure_threshold {
                    let reason = format!("{} consecutive failures", self.consecutive_failures);
                    self.open(reason, now_ms);
                }
            }
            BreakerState::HalfOpen => {
                self.open("half-open probe failed".to_owned(), now_ms);
            }
            BreakerState::Open => {}
        }
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot {
            name: self.name.clone(),
            state: self.state,
            config: self.config.clone(),
            consecutive_failures: self.consecutive_failures,
            half_open_successes: self.half_open_successes,
            opened_at_ms: self.opened_at_ms,
            counters: self.counters,
            history: self.history.iter().cloned().collect(),
        }
    }

    fn open(&mut self, reason: String, now_ms: u64) {
        self.counters.opens += 1;
        self.opened_at_ms = Some(now_ms);
        self.consecutive_failures = 0;
        self.half_open_successes = 0;
        self.transition(BreakerState::Open, reason, now_ms);
    }

    fn transition(&mut self, to: BreakerState, reason: String, now_ms: u64) {
        let from = self.state;
        if to == BreakerState::Open {
            tracing::warn!(breaker = %self.name, %from, %to, %reason, "circuit breaker opened");
        } else {
            tracing::info!(breaker = %self.name, %from, %to, %reason, "circuit breaker state changed");
        }
        self.state = to;
        if self.history.len() == HISTORY_CAPACITY {
            self.history.pop_front();
        }
        self.history.push_back(BreakerTransition {
            at_ms: now_ms,
            from,
            to,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use BreakerState::{Closed, HalfOpen, Open};

    fn breaker() -> CircuitBreaker {
        match CircuitBreaker::new("kafka", BreakerConfig::default()) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    /// Fails `n` times at `now`, checking `allow` first like a caller would.
    fn fail(b: &mut CircuitBreaker, n: u32, now: u64) {
        for _ in 0..n {
            assert!(b.allow(now));
            b.on_failure(now);
        }
    }

    fn opened_breaker(now: u64) -> CircuitBreaker {
        let mut b = breaker();
        fail(&mut b, 5, now);
        assert_eq!(b.state(), Open);
        b
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let mut b = breaker();
        fail(&mut b, 4, 0);
        assert_eq!(b.state(), Closed);
        fail(&mut b, 1, 10);
        assert_eq!(b.state(), Open);
        assert!(!b.allow(10));
        assert_eq!(b.counters().opens, 1);
        assert_eq!(b.counters().total_failures, 5);
        assert_eq!(b.snapshot().opened_at_ms, Some(10));
    }

    #[test]
    fn success_resets_consecutive_failure_count() {
        let mut b = breaker();
        for round in 0..10 {
            fail(&mut b, 4, round);
            b.on_success(round);
            assert_eq!(b.state(), Closed, "round {round}");
        }
        assert_eq!(b.counters().total_failures, 40);
        assert_eq!(b.counters().total_successes, 10);
        assert_eq!(b.counters().opens, 0);
        fail(&mut b, 5, 100);
        assert_eq!(b.state(), Open);
    }

    #[test]
    fn stays_open_for_open_ms() {
        let mut b = opened_breaker(1_000);
        for now in (1_000..6_000).step_by(50) {
            assert!(!b.allow(now), "allowed at {now}");
            assert_eq!(b.state(), Open);
        }
        assert!(!b.allow(5_999));
        assert_eq!(b.counters().rejected, 101);
    }

    #[test]
    fn half_opens_after_open_ms() {
        let mut b = opened_breaker(1_000);
        assert!(b.allow(6_000));
        assert_eq!(b.state(), HalfOpen);
        // Probes keep going through while half-open.
        assert!(b.allow(6_001));
        assert!(b.allow(6_002));
    }

    #[test]
    fn closes_after_half_open_successes() {
        let mut b = opened_breaker(0);
        assert!(b.allow(5_000));
        b.on_success(5_001);
        b.on_success(5_002);
        assert_eq!(b.state(), HalfOpen);
        b.on_success(5_003);
        assert_eq!(b.state(), Closed);
        // Closing clears the failure count: it takes a full threshold again.
        fail(&mut b, 4, 5_004);
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn half_open_failure_reopens_and_restarts_timer() {
        let mut b = opened_breaker(0);
        assert!(b.allow(5_000));
        b.on_success(5_010);
        b.on_failure(5_020);
        assert_eq!(b.state(), Open);
        assert_eq!(b.counters().opens, 2);
        assert!(!b.allow(10_019), "timer must restart at the probe failure");
        assert!(b.allow(10_020));
        assert_eq!(b.state(), HalfOpen);
        // Successes from the previous half-open period do not carry over.
        b.on_success(10_021);
        b.on_success(10_022);
        assert_eq!(b.state(), HalfOpen);
        b.on_success(10_023);
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn late_outcomes_while_open_change_nothing() {
        let mut b = opened_breaker(0);
        b.on_failure(4_000);
        b.on_success(4_500);
        assert_eq!(b.state(), Open);
        // The late failure did not extend the open window.
        assert!(b.allow(5_000));
        assert_eq!(b.counters().total_failures, 6);
        assert_eq!(b.counters().total_successes, 1);
    }

    #[test]
    fn history_order() {
        let mut b = opened_breaker(100);
        assert!(b.allow(5_100));
        b.on_failure(5_200);
        assert!(b.allow(10_200));
        for t in 0..3 {
            b.on_success(10_300 + t);
        }
        let seen: Vec<_> = b
            .history()
            .iter()
            .map(|t| (t.at_ms, t.from, t.to))
            .collect();
        assert_eq!(
            seen,
            vec![
                (100, Closed, Open),
                (5_100, Open, HalfOpen),
                (5_200, HalfOpen, Open),
                (10_200, Open, HalfOpen),
                (10_302, HalfOpen, Closed),
            ]
        );
        assert_eq!(b.history()[0].reason, "5 consecutive failures");
        assert_eq!(b.history()[2].reason, "half-open probe failed");
        assert_eq!(b.history()[4].reason, "3 half-open successes");
    }

    #[test]
    fn history_capped_at_100() {
        let mut b = breaker();
        let mut now = 0;
        // Each cycle adds three transitions: open, half-open, close.
        for _ in 0..50 {
            fail(&mut b, 5, now);
            now += 5_000;
            assert!(b.allow(now));
            for _ in 0..3 {
                b.on_success(now);
            }
            now += 1;
        }
        assert_eq!(b.history().len(), HISTORY_CAPACITY);
        assert_eq!(b.counters().opens, 50);
        assert_eq!(b.history().back().map(|t| t.to), Some(Closed));
    }

    #[test]
    fn custom_config_and_validation() {
        let cfg = BreakerConfig {
            failure_threshold: 1,
            open_ms: 10,
            half_open_successes: 1,
        };
        let mut b = match CircuitBreaker::new("iceberg", cfg) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        b.on_failure(0);
        assert_eq!(b.state(), Open);
        assert!(b.allow(10));
        b.on_success(10);
        assert_eq!(b.state(), Closed);

        for (cfg, key) in [
            (
                BreakerConfig {
                    failure_threshold: 0,
                    ..BreakerConfig::default()
                },
                "failure_threshold",
            ),
            (
                BreakerConfig {
                    half_open_successes: 0,
                    ..BreakerConfig::default()
                },
                "half_open_successes",
            ),
        ] {
            let msg = CircuitBreaker::new("x", cfg).err().map(|e| e.to_string());
            assert_eq!(msg, Some(format!("{key}: must be at least 1")));
        }
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let cfg: BreakerConfig = match serde_json::from_str("{}") {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            (cfg.failure_threshold, cfg.open_ms, cfg.half_open_successes),
            (5, 5_000, 3)
        );
        assert!(serde_json::from_str::<BreakerConfig>(r#"{"open": 1}"#).is_err());
    }

    #[test]
    fn snapshot_serializes() {
        let mut b = opened_breaker(7);
        assert!(b.allow(5_007));
        let json = match serde_json::to_value(b.snapshot()) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(json["name"], "kafka");
        assert_eq!(json["state"], "HALF_OPEN");
        assert_eq!(json["counters"]["opens"], 1);
        assert_eq!(json["counters"]["total_failures"], 5);
        assert_eq!(json["history"][0]["to"], "OPEN");
        assert_eq!(json["history"][1]["at_ms"], 5_007);
    }
}
