//! Degradation level machine: turns periodic load samples into one of five
//! levels, with hysteresis so a noisy signal cannot make the daemon flap.
//!
//! Time is passed in by the caller (`now_ms`) rather than read from a clock,
//! so the machine is deterministic and every test runs in virtual time.
//!
//! Semantics:
//! - The *target* of a sample is the highest level whose trigger is reached
//!   (`>=`) by any signal.
//! - Escalation: when the target is above the current level the machine jumps
//!   straight to the target, provided `cooldown_ms` has passed since the last
//!   transition. The very first transition is immediate.
//! - Recovery: when every signal is below `recovery_factor × trigger(current)`
//!   and the cooldown has passed, the level drops by exactly one step. Under
//!   that condition the target is necessarily below the current level, so
//!   `max(target, current − 1)` is always `current − 1`: recovery from
//!   CIRCUIT_BREAK to NORMAL takes four transitions, at least one cooldown
//!   apart, each recorded in the history. Stepping down one level at a time
//!   lets the daemon re-admit load gradually and re-escalate early if the
//!   pressure was only masked by the degradation itself.
//! - A NaN signal never reaches a trigger and never counts as "below" a
//!   recovery threshold: a broken sampler neither escalates nor lets the
//!   daemon relax.
//! - A `now_ms` earlier than the last transition counts as zero elapsed time,
//!   so a clock step backwards delays transitions instead of allowing them.

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How many transitions [`LevelMachine::history`] keeps.
pub const HISTORY_CAPACITY: usize = 100;

/// Degradation level, ordered from healthy to most degraded.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    Normal,
    Soft,
    Graceful,
    Aggressive,
    CircuitBreak,
}

impl Level {
    /// All levels, lowest first.
    pub const ALL: [Level; 5] = [
        Level::Normal,
        Level::Soft,
        Level::Graceful,
        Level::Aggressive,
        Level::CircuitBreak,
    ];

    /// Numeric value (NORMAL = 0 … CIRCUIT_BREAK = 4), e.g. for a gauge.
    pub const fn as_u8(self) -> u8 {
        match self {
            Level::Normal => 0,
            Level::Soft => 1,
            Level::Graceful => 2,
            Level::Aggressive => 3,
            Level::CircuitBreak => 4,
        }
    }

    /// Inverse of [`Level::as_u8`].
    pub const fn from_u8(value: u8) -> Option<Level> {
        match value {
            0 => Some(Level::Normal),
            1 => Some(Level::Soft),
            2 => Some(Level::Graceful),
            3 => Some(Level::Aggressive),
            4 => Some(Level::CircuitBreak),
            _ => None,
        }
    }

    /// Same spelling as the serde form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "NORMAL",
            Level::Soft => "SOFT",
            Level::Graceful => "GRACEFUL",
            Level::Aggressive => "AGGRESSIVE",
            Level::CircuitBreak => "CIRCUIT_BREAK",
        }
    }

    /// The next level down, `None` for NORMAL.
    pub const fn lower(self) -> Option<Level> {
        match self {
            Level::Normal => None,
            Level::Soft => Some(Level::Normal),
            Level::Graceful => Some(Level::Soft),
            Level::Aggressive => Some(Level::Graceful),
            Level::CircuitBreak => Some(Level::Aggressive),
        }
    }

    /// Index into a [`Triggers`] array; NORMAL has no trigger.
    const fn trigger_index(self) -> Option<usize> {
        match self {
            Level::Normal => None,
            Level::Soft => Some(0),
            Level::Graceful => Some(1),
            Level::Aggressive => Some(2),
            Level::CircuitBreak => Some(3),
        }
    }

    /// Level whose trigger sits at `index` in a [`Triggers`] array.
    const fn from_trigger_index(index: usize) -> Level {
        match index {
            0 => Level::Soft,
            1 => Level::Graceful,
            2 => Level::Aggressive,
            _ => Level::CircuitBreak,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sample of the load signals.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug, Default)]
pub struct Signals {
    /// Records the lake writer's consumer group is behind.
    pub consumer_lag: f64,
    /// Fill of the fullest data lane (ratio 0..1, or a count: whatever unit
    /// the configured thresholds use).
    pub lane_depth: f64,
    /// Resident set size of the daemon in bytes.
    pub rss_bytes: f64,
    /// Records handed to the Kafka producer and not yet acknowledged.
    pub producer_queue: f64,
    /// Latency of the latest Iceberg commit in milliseconds.
    pub commit_latency_ms: f64,
}

impl Signals {
    /// Value of one signal.
    pub const fn get(&self, signal: Signal) -> f64 {
        match signal {
            Signal::ConsumerLag => self.consumer_lag,
            Signal::LaneDepth => self.lane_depth,
            Signal::RssBytes => self.rss_bytes,
            Signal::ProducerQueue => self.producer_queue,
            Signal::CommitLatencyMs => self.commit_latency_ms,
        }
    }

    /// Sets one signal, returning the updated sample.
    pub const fn with(mut self, signal: Signal, value: f64) -> Self {
        match signal {
            Signal::ConsumerLag => self.consumer_lag = value,
            Signal::LaneDepth => self.lane_depth = value,
            Signal::RssBytes => self.rss_bytes = value,
            Signal::ProducerQueue => self.producer_queue = value,
            Signal::CommitLatencyMs => self.commit_latency_ms = value,
        }
        self
    }
}

/// Names of the signals, in the order they are checked (which decides the
/// reason reported when several signals reach the same level).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    ConsumerLag,
    LaneDepth,
    RssBytes,
    ProducerQueue,
    CommitLatencyMs,
}

impl Signal {
    /// All signals, in check order.
    pub const ALL: [Signal; 5] = [
        Signal::ConsumerLag,
        Signal::LaneDepth,
        Signal::RssBytes,
        Signal::ProducerQueue,
        Signal::CommitLatencyMs,
    ];

    /// Same spelling as the config key and the serde field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Signal::ConsumerLag => "consumer_lag",
            Signal::LaneDepth => "lane_depth",
            Signal::RssBytes => "rss_bytes",
            Signal::ProducerQueue => "producer_queue",
            Signal::CommitLatencyMs => "commit_latency_ms",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Trigger values `[soft, graceful, aggressive, circuit_break]`, strictly
/// increasing. A signal at or above an entry puts the daemon at that level.
pub type Triggers = [f64; 4];

/// `[degradation.thresholds]`: one [`Triggers`] array per signal.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Consumer lag in records.
    #[serde(default = "default_consumer_lag")]
    pub consumer_lag: Triggers,
    /// Fill ratio (0..1) of the fullest data lane.
    #[serde(default = "default_lane_depth")]
    pub lane_depth: Triggers,
    /// Resident set size in bytes.
    #[serde(default = "default_rss_bytes")]
    pub rss_bytes: Triggers,
    /// Records in flight in the Kafka producer.
    #[serde(default = "default_producer_queue")]
    pub producer_queue: Triggers,
    /// Iceberg commit latency in milliseconds.
    #[serde(default = "default_commit_latency_ms")]
    pub commit_latency_ms: Triggers,
}

impl Thresholds {
    /// Triggers of one signal.
    pub const fn get(&self, signal: Signal) -> &Triggers {
        match signal {
            Signal::ConsumerLag => &self.consumer_lag,
            Signal::LaneDepth => &self.lane_depth,
            Signal::RssBytes => &self.rss_bytes,
            Signal::ProducerQueue => &self.producer_queue,
            Signal::CommitLatencyMs => &self.commit_latency_ms,
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            consumer_lag: default_consumer_lag(),
            lane_depth: default_lane_depth(),
            rss_bytes: default_rss_bytes(),
            producer_queue: default_producer_queue(),
            commit_latency_ms: default_commit_latency_ms(),
        }
    }
}

fn default_consumer_lag() -> Triggers {
    [50_000.0, 200_000.0, 1_000_000.0, 5_000_000.0]
}

fn default_lane_depth() -> Triggers {
    [0.5, 0.7, 0.85, 0.95]
}

fn default_rss_bytes() -> Triggers {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    [2.0 * GIB, 3.0 * GIB, 4.0 * GIB, 6.0 * GIB]
}

fn default_producer_queue() -> Triggers {
    [20_000.0, 50_000.0, 100_000.0, 200_000.0]
}

fn default_commit_latency_ms() -> Triggers {
    [5_000.0, 15_000.0, 30_000.0, 60_000.0]
}

fn default_recovery_factor() -> f64 {
    0.7
}

fn default_cooldown_ms() -> u64 {
    5_000
}

/// `[degradation]`: thresholds and hysteresis of the level machine.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct DegradationConfig {
    /// Per-signal triggers; a signal omitted here keeps its default.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// The level may only drop once every signal is below this fraction of
    /// its trigger for the current level; strictly between 0 and 1. The gap
    /// between the two is the hysteresis band in which nothing changes.
    #[serde(default = "default_recovery_factor")]
    pub recovery_factor: f64,
    /// Minimum time between two transitions, up or down, in milliseconds;
    /// must be greater than 0 because it is what bounds the flap rate.
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    /// A level is raised only once the signals have called for it (or
    /// higher) at every sample for this long, in milliseconds; it is then
    /// raised to the lowest level those samples called for. A burst that
    /// fills a lane for a few tens of milliseconds (a scheduling gap on a
    /// busy machine) pushes back on the feed without loss, and must not
    /// shed anything. 0 raises at the first sample.
    #[serde(default = "default_raise_after_ms")]
    pub raise_after_ms: u64,
    /// How often the supervisor samples its signals (ms). The machine
    /// itself ignores it; it is given the time of every sample.
    #[serde(default = "default_sample_ms")]
    pub sample_ms: u64,
}

fn default_sample_ms() -> u64 {
    250
}

fn default_raise_after_ms() -> u64 {
    500
}

impl Default for DegradationConfig {
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            recovery_factor: default_recovery_factor(),
            cooldown_ms: default_cooldown_ms(),
            sample_ms: default_sample_ms(),
            raise_after_ms: default_raise_after_ms(),
        }
    }
}

/// An invalid `[degradation]` section; every variant names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LevelConfigError {
    #[error(
        "{key}: triggers must be finite, positive and strictly increasing \
         [soft, graceful, aggressive, circuit_break], got {values:?}"
    )]
    Thresholds { key: String, values: Triggers },
    #[error("{key}: must be strictly between 0 and 1, got {value}")]
    RecoveryFactor { key: String, value: f64 },
    #[error("{key}: must be greater than 0")]
    Cooldown { key: String },
}

impl LevelConfigError {
    /// The offending config key, e.g. `degradation.thresholds.consumer_lag`.
    pub fn key(&self) -> &str {
        match self {
            LevelConfigError::Thresholds { key, .. }
            | LevelConfigError::RecoveryFactor { key, .. }
            | LevelConfigError::Cooldown { key } => key,
        }
    }
}

impl DegradationConfig {
    /// Checks the invariants serde cannot express; the first problem found
    /// is returned.
    pub fn validate(&self) -> Result<(), LevelConfigError> {
        for signal in Signal::ALL {
            let values = *self.thresholds.get(signal);
            // A zero trigger would be reached by an idle daemon, so the first
            // entry must be strictly positive as well as the sequence rising.
            let ok = values.iter().all(|v| v.is_finite())
                && values[0] > 0.0
                && values.windows(2).all(|w| w[0] < w[1]);
            if !ok {
                return Err(LevelConfigError::Thresholds {
                    key: format!("degradation.thresholds.{}", signal.as_str()),
                    values,
                });
            }
        }
        let rf = self.recovery_factor;
        // Written so that NaN fails the check too.
        if !(rf > 0.0 && rf < 1.0) {
            return Err(LevelConfigError::RecoveryFactor {
                key: "degradation.recovery_factor".to_owned(),
                value: rf,
            });
        }
        if self.cooldown_ms == 0 {
            return Err(LevelConfigError::Cooldown {
                key: "degradation.cooldown_ms".to_owned(),
            });
        }
        Ok(())
    }
}

/// One level change.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Transition {
    /// Caller-supplied time of the sample that caused it.
    pub at_ms: u64,
    pub from: Level,
    pub to: Level,
    /// Which signal, its value and the threshold involved.
    pub reason: String,
}

/// Serializable view of the machine, e.g. for `/status`.
#[derive(Serialize, Clone, PartialEq, Debug)]
pub struct LevelSnapshot {
    pub level: Level,
    pub thresholds: Thresholds,
    pub recovery_factor: f64,
    pub cooldown_ms: u64,
    pub raise_after_ms: u64,
    pub last_signals: Option<Signals>,
    pub last_observed_ms: Option<u64>,
    pub last_transition_ms: Option<u64>,
    /// Oldest first.
    pub history: Vec<Transition>,
}

/// The level state machine. Feed it every sample through
/// [`LevelMachine::observe`].
#[derive(Debug, Clone)]
pub struct LevelMachine {
    config: DegradationConfig,
    level: Level,
    last_transition_ms: Option<u64>,
    last_signals: Option<Signals>,
    last_observed_ms: Option<u64>,
    history: VecDeque<Transition>,
    /// Since when every sample has called for a higher level, the lowest
    /// of those levels, and the reason of the sample that set it.
    rising: Option<(u64, Level, String)>,
}

impl LevelMachine {
    /// Starts at NORMAL after validating `config`.
    pub fn new(config: DegradationConfig) -> Result<Self, LevelConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            level: Level::Normal,
            last_transition_ms: None,
            last_signals: None,
            last_observed_ms: None,
            history: VecDeque::with_capacity(HISTORY_CAPACITY),
            rising: None,
        })
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn config(&self) -> &DegradationConfig {
        &self.config
    }

    /// Last [`HISTORY_CAPACITY`] transitions, oldest first.
    pub fn history(&self) -> &VecDeque<Transition> {
        &self.history
    }

    pub fn snapshot(&self) -> LevelSnapshot {
        LevelSnapshot {
            level: self.level,
            thresholds: self.config.thresholds.clone(),
            recovery_factor: self.config.recovery_factor,
            cooldown_ms: self.config.cooldown_ms,
            raise_after_ms: self.config.raise_after_ms,
            last_signals: self.last_signals,
            last_observed_ms: self.last_observed_ms,
            last_transition_ms: self.last_transition_ms,
            history: self.history.iter().cloned().collect(),
        }
    }

    /// The highest level any signal reaches, with a reason naming the first
    /// signal (in [`Signal::ALL`] order) that reaches it.
    pub fn target(&self, signals: &Signals) -> (Level, Option<String>) {
        let mut best = Level::Normal;
        let mut reason = None;
        for signal in Signal::ALL {
            let value = signals.get(signal);
            let triggers = self.config.thresholds.get(signal);
            // Scan from the top so the first hit is this signal's level.
            let hit = triggers
                .iter()
                .enumerate()
                .rev()
                .find(|(_, t)| value >= **t);
            if let Some((i, threshold)) = hit {
                let level = Level::from_trigger_index(i);
                if level > best {
                    best = level;
                    reason = Some(format!("{signal}={value} >= {threshold} ({level} trigger)"));
                }
            }
        }
        (best, reason)
    }

    /// Feeds one sample taken at `now_ms`; returns the transition it caused.
    pub fn observe(&mut self, signals: &Signals, now_ms: u64) -> Option<Transition> {
        self.last_signals = Some(*signals);
        self.last_observed_ms = Some(now_ms);

        let cooled_down = match self.last_transition_ms {
            None => true,
            Some(at) => now_ms.saturating_sub(at) >= self.config.cooldown_ms,
        };
        let (target, reason) = self.target(signals);

        if target > self.level {
            let reason = reason.unwrap_or_default();
            let (since, floor, why) = match self.rising.take() {
                Some((since, floor, why)) if floor <= target => (since, floor, why),
                Some((since, _, _)) => (since, target, reason),
                None => (now_ms, target, reason),
            };
            let held = now_ms.saturating_sub(since);
            if held < self.config.raise_after_ms || !cooled_down {
                self.rising = Some((since, floor, why));
                return None;
            }
            let why = if self.config.raise_after_ms > 0 {
                format!("{why}, at or above {floor} for {held} ms")
            } else {
                why
            };
            return Some(self.transition(floor, why, now_ms));
        }
        self.rising = None;

        // NORMAL has nothing to recover from.
        let index = self.level.trigger_index()?;
        let lower = self.level.lower()?;
        let factor = self.config.recovery_factor;
        // Track the signal closest to its recovery threshold for the reason,
        // and bail out on the first one that is not below it.
        let mut closest: Option<(Signal, f64, f64)> = None;
        for signal in Signal::ALL {
            let value = signals.get(signal);
            let threshold = factor * self.config.thresholds.get(signal)[index];
            // Asked as "is it below" rather than "is it at or above" so that
            // NaN blocks recovery.
            let below = value < threshold;
            if !below {
                return None;
            }
            let ratio = value / threshold;
            if closest.is_none_or(|(_, v, t)| ratio > v / t) {
                closest = Some((signal, value, threshold));
            }
        }
        if !cooled_down {
            return None;
        }
        let reason = match closest {
            Some((signal, value, threshold)) => format!(
                "all signals below {factor} x {} triggers (closest: {signal}={value} < {threshold})",
                self.level
            ),
            None => format!("all signals below {factor} x {} triggers", self.level),
        };
        Some(self.transition(lower, reason, now_ms))
    }

    fn transition(&mut self, to: Level, reason: String, now_ms: u64) -> Transition {
        let from = self.level;
        if to > from {
            tracing::warn!(%from, %to, %reason, "degradation level raised");
        } else {
            tracing::info!(%from, %to, %reason, "degradation level lowered");
        }
        let transition = Transition {
            at_ms: now_ms,
            from,
            to,
            reason,
        };
        self.level = to;
        self.last_transition_ms = Some(now_ms);
        if self.history.len() == HISTORY_CAPACITY {
            self.history.pop_front();
        }
        self.history.push_back(transition.clone());
        transition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: u64 = 5_000;

    /// Every signal gets the same easy-to-read triggers.
    fn config() -> DegradationConfig {
        let t = [100.0, 200.0, 300.0, 400.0];
        DegradationConfig {
            thresholds: Thresholds {
                consumer_lag: t,
                lane_depth: t,
                rss_bytes: t,
                producer_queue: t,
                commit_latency_ms: t,
            },
            recovery_factor: 0.7,
            cooldown_ms: COOLDOWN,
            sample_ms: 250,
            raise_after_ms: 0,
        }
    }

    #[test]
    fn a_level_is_raised_only_when_called_for_at_every_sample_for_raise_after_ms() {
        let mut m = match LevelMachine::new(DegradationConfig {
            raise_after_ms: 500,
            ..config()
        }) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        let soft = trigger(Signal::LaneDepth, Level::Soft);
        let cb = trigger(Signal::LaneDepth, Level::CircuitBreak);
        // A spike of 400 ms, even to CIRCUIT_BREAK, raises nothing.
        assert_eq!(m.observe(&one(Signal::LaneDepth, cb), 0), None);
        assert_eq!(m.observe(&one(Signal::LaneDepth, cb), 400), None);
        assert_eq!(m.observe(&Signals::default(), 500), None);
        assert_eq!(m.level(), Level::Normal);
        // Held: raised to the lowest level the samples called for.
        assert_eq!(m.observe(&one(Signal::LaneDepth, cb), 1000), None);
        assert_eq!(m.observe(&one(Signal::LaneDepth, soft), 1250), None);
        let t = m.observe(&one(Signal::LaneDepth, cb), 1500);
        assert_eq!(t.as_ref().map(|t| t.to), Some(Level::Soft), "{t:?}");
        assert!(t.is_some_and(|t| t.reason.contains("for 500 ms")));
    }

    fn machine() -> LevelMachine {
        match LevelMachine::new(config()) {
            Ok(m) => m,
            Err(e) => panic!("test config invalid: {e}"),
        }
    }

    fn one(signal: Signal, value: f64) -> Signals {
        Signals::default().with(signal, value)
    }

    fn trigger(signal: Signal, level: Level) -> f64 {
        let cfg = config();
        let i = level.trigger_index().unwrap_or(0);
        cfg.thresholds.get(signal)[i]
    }

    /// Drives a machine to `level` through `signal`, jumping directly.
    fn at_level(signal: Signal, level: Level) -> (LevelMachine, u64) {
        let mut m = machine();
        let mut now = 0;
        if level > Level::Normal {
            let t = m.observe(&one(signal, trigger(signal, level)), now);
            assert_eq!(t.map(|t| t.to), Some(level));
        }
        now += COOLDOWN;
        (m, now)
    }

    fn step_up(from: Level, to: Level, signal: Signal) {
        let (mut m, now) = at_level(signal, from);
        let t = m.observe(&one(signal, trigger(signal, to)), now);
        let Some(t) = t else {
            panic!("{from} -> {to} on {signal}: no transition")
        };
        assert_eq!((t.from, t.to), (from, to));
        assert!(t.reason.contains(signal.as_str()), "reason: {}", t.reason);
        assert!(t.reason.contains(to.as_str()), "reason: {}", t.reason);
        assert_eq!(m.level(), to);
    }

    #[test]
    fn normal_to_soft_on_consumer_lag() {
        step_up(Level::Normal, Level::Soft, Signal::ConsumerLag);
    }

    #[test]
    fn soft_to_graceful_on_lane_depth() {
        step_up(Level::Soft, Level::Graceful, Signal::LaneDepth);
    }

    #[test]
    fn graceful_to_aggressive_on_rss_bytes() {
        step_up(Level::Graceful, Level::Aggressive, Signal::RssBytes);
    }

    #[test]
    fn aggressive_to_circuit_break_on_producer_queue() {
        step_up(
            Level::Aggressive,
            Level::CircuitBreak,
            Signal::ProducerQueue,
        );
    }

    #[test]
    fn aggressive_to_circuit_break_on_commit_latency() {
        step_up(
            Level::Aggressive,
            Level::CircuitBreak,
            Signal::CommitLatencyMs,
        );
    }

    #[test]
    fn every_signal_drives_every_step_up() {
        for signal in Signal::ALL {
            for pair in Level::ALL.windows(2) {
                step_up(pair[0], pair[1], signal);
            }
        }
    }

    #[test]
    fn every_signal_allows_every_step_down() {
        for signal in Signal::ALL {
            for pair in Level::ALL.windows(2) {
                let (lower, upper) = (pair[0], pair[1]);
                let (mut m, now) = at_level(signal, upper);
                // Just under recovery_factor × trigger(upper).
                let value = 0.7 * trigger(signal, upper) - 1.0;
                let t = m.observe(&one(signal, value), now);
                let Some(t) = t else {
                    panic!("{upper} -> {lower} on {signal}: no transition")
                };
                assert_eq!((t.from, t.to), (upper, lower));
                assert_eq!(m.level(), lower);
            }
        }
    }

    #[test]
    fn reaching_a_trigger_exactly_counts() {
        let mut m = machine();
        assert!(m.observe(&one(Signal::LaneDepth, 99.999), 0).is_none());
        let t = m.observe(&one(Signal::LaneDepth, 100.0), 1);
        assert_eq!(t.map(|t| t.to), Some(Level::Soft));
    }

    #[test]
    fn multi_level_jump_up() {
        let mut m = machine();
        let t = m.observe(&one(Signal::ConsumerLag, 10_000.0), 0);
        let Some(t) = t else { panic!("no transition") };
        assert_eq!((t.from, t.to), (Level::Normal, Level::CircuitBreak));
        assert_eq!(m.history().len(), 1);

        // From SOFT straight to AGGRESSIVE, skipping GRACEFUL.
        let (mut m, now) = at_level(Signal::LaneDepth, Level::Soft);
        let t = m.observe(&one(Signal::RssBytes, 350.0), now);
        assert_eq!(
            t.map(|t| (t.from, t.to)),
            Some((Level::Soft, Level::Aggressive))
        );
    }

    #[test]
    fn highest_signal_decides_target_and_reason() {
        let m = machine();
        let s = Signals {
            consumer_lag: 150.0,
            lane_depth: 0.0,
            rss_bytes: 320.0,
            producer_queue: 210.0,
            commit_latency_ms: 0.0,
        };
        let (level, reason) = m.target(&s);
        assert_eq!(level, Level::Aggressive);
        let reason = reason.unwrap_or_default();
        assert!(reason.contains("rss_bytes=320"), "{reason}");
        assert!(reason.contains("300"), "{reason}");
    }

    #[test]
    fn first_transition_is_immediate() {
        let mut m = machine();
        // Even at t=0 with no previous transition there is no cooldown.
        assert!(m.observe(&one(Signal::ConsumerLag, 100.0), 0).is_some());
    }

    #[test]
    fn escalation_waits_for_cooldown() {
        let mut m = machine();
        assert!(m.observe(&one(Signal::ConsumerLag, 100.0), 1_000).is_some());
        let high = one(Signal::ConsumerLag, 400.0);
        for now in (1_000..1_000 + COOLDOWN).step_by(100) {
            assert!(m.observe(&high, now).is_none(), "escalated at {now}");
        }
        assert_eq!(m.level(), Level::Soft);
        let t = m.observe(&high, 1_000 + COOLDOWN);
        assert_eq!(t.map(|t| t.to), Some(Level::CircuitBreak));
    }

    #[test]
    fn recovery_waits_for_cooldown() {
        let mut m = machine();
        assert!(m.observe(&one(Signal::ConsumerLag, 200.0), 0).is_some());
        let calm = Signals::default();
        for now in (0..COOLDOWN).step_by(100) {
            assert!(m.observe(&calm, now).is_none(), "recovered at {now}");
        }
        assert_eq!(m.level(), Level::Graceful);
        let t = m.observe(&calm, COOLDOWN);
        assert_eq!(t.map(|t| t.to), Some(Level::Soft));
        // The next step down needs another full cooldown.
        assert!(m.observe(&calm, 2 * COOLDOWN - 1).is_none());
        let t = m.observe(&calm, 2 * COOLDOWN);
        assert_eq!(t.map(|t| t.to), Some(Level::Normal));
    }

    #[test]
    fn clock_going_backwards_delays_transitions() {
        let mut m = machine();
        assert!(
            m.observe(&one(Signal::ConsumerLag, 100.0), 10_000)
                .is_some()
        );
        assert!(m.observe(&Signals::default(), 0).is_none());
        assert!(m.observe(&one(Signal::ConsumerLag, 400.0), 9_000).is_none());
        assert_eq!(m.level(), Level::Soft);
    }

    #[test]
    fn recovery_needs_every_signal_below_its_recovery_threshold() {
        let (mut m, now) = at_level(Signal::ConsumerLag, Level::Graceful);
        // rss sits in the GRACEFUL hysteresis band: 0.7 × 200 = 140 ≤ 150 < 200.
        let s = Signals::default().with(Signal::RssBytes, 150.0);
        for i in 0..100 {
            assert!(m.observe(&s, now + i * COOLDOWN).is_none());
        }
        assert_eq!(m.level(), Level::Graceful);
        let s = s.with(Signal::RssBytes, 139.0);
        let t = m.observe(&s, now + 100 * COOLDOWN);
        assert_eq!(t.map(|t| t.to), Some(Level::Soft));
    }

    #[test]
    fn no_transition_inside_hysteresis_band() {
        for signal in Signal::ALL {
            for level in [Level::Soft, Level::Graceful, Level::CircuitBreak] {
                let (mut m, start) = at_level(signal, level);
                let trig = trigger(signal, level);
                let low = 0.7 * trig;
                // Sweep the whole band [0.7 × trigger, trigger) for 60 s.
                for i in 0..600u64 {
                    let frac = (i % 30) as f64 / 30.0;
                    let value = low + frac * (trig - low) * 0.999;
                    let now = start + i * 100;
                    if let Some(t) = m.observe(&one(signal, value), now) {
                        panic!("{signal} at {value} moved {} -> {}", t.from, t.to);
                    }
                }
                assert_eq!(m.level(), level);
            }
        }
        // Same band below the SOFT trigger while at NORMAL: nothing happens.
        let mut m = machine();
        for i in 0..600u64 {
            let value = 70.0 + (i % 30) as f64;
            assert!(
                m.observe(&one(Signal::ConsumerLag, value), i * 100)
                    .is_none()
            );
        }
        assert!(m.history().is_empty());
    }

    /// Oscillates `signal` between `low` and `high` every 100 ms for 60 s and
    /// returns the transitions seen.
    fn oscillate(low: f64, high: f64) -> Vec<Transition> {
        let mut m = machine();
        let mut seen = Vec::new();
        for i in 0..600u64 {
            let value = if i % 2 == 0 { high } else { low };
            if let Some(t) = m.observe(&one(Signal::ProducerQueue, value), i * 100) {
                seen.push(t);
            }
        }
        seen
    }

    fn assert_rate_bounded(seen: &[Transition]) {
        let elapsed = 600 * 100;
        let bound = (elapsed / COOLDOWN + 1) as usize;
        assert!(seen.len() <= bound, "{} transitions > {bound}", seen.len());
        for pair in seen.windows(2) {
            let gap = pair[1].at_ms - pair[0].at_ms;
            assert!(gap >= COOLDOWN, "transitions {gap} ms apart");
        }
    }

    #[test]
    fn oscillation_around_trigger_is_bounded_by_cooldown() {
        // 0.9 × and 1.1 × the SOFT trigger.
        let seen = oscillate(90.0, 110.0);
        assert_rate_bounded(&seen);
        // 0.9 × trigger stays above 0.7 × trigger, so it never recovers.
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].to, Level::Soft);
    }

    #[test]
    fn wide_oscillation_is_bounded_by_cooldown() {
        // Swings beyond both edges of the hysteresis band every sample, the
        // worst case for flapping: only the cooldown limits it.
        let seen = oscillate(10.0, 110.0);
        assert_rate_bounded(&seen);
        assert!(seen.len() > 2, "expected flapping, got {}", seen.len());
    }

    #[test]
    fn full_recovery_from_circuit_break_records_every_step() {
        let mut m = machine();
        assert!(m.observe(&one(Signal::CommitLatencyMs, 1e9), 0).is_some());
        let calm = Signals::default();
        let mut now = 0;
        while m.level() != Level::Normal {
            now += 100;
            assert!(now <= 10 * COOLDOWN, "never recovered");
            m.observe(&calm, now);
        }
        // Four steps, one per cooldown.
        assert_eq!(now, 4 * COOLDOWN);
        let steps: Vec<_> = m.history().iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            steps,
            vec![
                (Level::Normal, Level::CircuitBreak),
                (Level::CircuitBreak, Level::Aggressive),
                (Level::Aggressive, Level::Graceful),
                (Level::Graceful, Level::Soft),
                (Level::Soft, Level::Normal),
            ]
        );
        let times: Vec<_> = m.history().iter().map(|t| t.at_ms).collect();
        assert_eq!(
            times,
            vec![0, COOLDOWN, 2 * COOLDOWN, 3 * COOLDOWN, 4 * COOLDOWN]
        );
        for t in m.history().iter().skip(1) {
            assert!(t.reason.contains("below 0.7"), "reason: {}", t.reason);
        }
    }

    #[test]
    fn recovery_re_escalates_when_pressure_returns() {
        let mut m = machine();
        assert!(m.observe(&one(Signal::ConsumerLag, 400.0), 0).is_some());
        let t = m.observe(&Signals::default(), COOLDOWN);
        assert_eq!(t.map(|t| t.to), Some(Level::Aggressive));
        let t = m.observe(&one(Signal::ConsumerLag, 400.0), 2 * COOLDOWN);
        assert_eq!(t.map(|t| t.to), Some(Level::CircuitBreak));
    }

    #[test]
    fn history_capped_at_100() {
        let mut m = machine();
        let high = one(Signal::ConsumerLag, 100.0);
        let low = Signals::default();
        for i in 0..250u64 {
            let s = if i % 2 == 0 { &high } else { &low };
            assert!(m.observe(s, i * COOLDOWN).is_some(), "no transition at {i}");
        }
        assert_eq!(m.history().len(), HISTORY_CAPACITY);
        // Oldest kept is transition #150 (0-based), newest is #249.
        assert_eq!(m.history().front().map(|t| t.at_ms), Some(150 * COOLDOWN));
        assert_eq!(m.history().back().map(|t| t.at_ms), Some(249 * COOLDOWN));
    }

    #[test]
    fn nan_signal_neither_escalates_nor_recovers() {
        let mut m = machine();
        assert!(m.observe(&one(Signal::RssBytes, f64::NAN), 0).is_none());
        assert!(m.observe(&one(Signal::RssBytes, 100.0), 0).is_some());
        let t = m.observe(&one(Signal::RssBytes, f64::NAN), COOLDOWN * 10);
        assert!(t.is_none());
        assert_eq!(m.level(), Level::Soft);
    }

    #[test]
    fn validate_names_offending_key() {
        for signal in Signal::ALL {
            for bad in [
                [100.0, 100.0, 300.0, 400.0],
                [100.0, 200.0, 150.0, 400.0],
                [0.0, 200.0, 300.0, 400.0],
                [100.0, 200.0, 300.0, f64::INFINITY],
                [f64::NAN, 200.0, 300.0, 400.0],
            ] {
                let mut cfg = config();
                match signal {
                    Signal::ConsumerLag => cfg.thresholds.consumer_lag = bad,
                    Signal::LaneDepth => cfg.thresholds.lane_depth = bad,
                    Signal::RssBytes => cfg.thresholds.rss_bytes = bad,
                    Signal::ProducerQueue => cfg.thresholds.producer_queue = bad,
                    Signal::CommitLatencyMs => cfg.thresholds.commit_latency_ms = bad,
                }
                let err = cfg.validate().err();
                let key = format!("degradation.thresholds.{signal}");
                assert_eq!(err.as_ref().map(|e| e.key()), Some(key.as_str()));
                let msg = err.map(|e| e.to_string()).unwrap_or_default();
                assert!(msg.starts_with(&key), "{msg}");
                assert!(LevelMachine::new(cfg).is_err());
            }
        }
        for rf in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
            let cfg = DegradationConfig {
                recovery_factor: rf,
                ..config()
            };
            let err = cfg.validate().err();
            assert_eq!(
                err.as_ref().map(|e| e.key()),
                Some("degradation.recovery_factor")
            );
        }
        let cfg = DegradationConfig {
            cooldown_ms: 0,
            ..config()
        };
        let msg = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.starts_with("degradation.cooldown_ms"), "{msg}");
        assert_eq!(config().validate(), Ok(()));
        assert_eq!(DegradationConfig::default().validate(), Ok(()));
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let parsed: DegradationConfig = match serde_json::from_str("{}") {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(parsed, DegradationConfig::default());
        assert_eq!(parsed.recovery_factor, 0.7);
        assert_eq!(parsed.cooldown_ms, 5_000);

        let partial = r#"{"thresholds": {"consumer_lag": [1, 2, 3, 4]}, "cooldown_ms": 250}"#;
        let parsed: DegradationConfig = match serde_json::from_str(partial) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(parsed.thresholds.consumer_lag, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(parsed.thresholds.lane_depth, default_lane_depth());
        assert_eq!(parsed.cooldown_ms, 250);

        for bad in [
            r#"{"cooldown": 1}"#,
            r#"{"thresholds": {"consumer_lags": [1, 2, 3, 4]}}"#,
            r#"{"thresholds": {"consumer_lag": [1, 2, 3]}}"#,
        ] {
            assert!(
                serde_json::from_str::<DegradationConfig>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn snapshot_serializes_level_thresholds_signals_history() {
        let mut m = machine();
        let s = one(Signal::LaneDepth, 250.0);
        assert!(m.observe(&s, 42).is_some());
        let snap = m.snapshot();
        assert_eq!(snap.level, Level::Graceful);
        assert_eq!(snap.last_signals, Some(s));
        let json = match serde_json::to_value(&snap) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(json["level"], "GRACEFUL");
        assert_eq!(json["thresholds"]["lane_depth"][1], 200.0);
        assert_eq!(json["last_signals"]["lane_depth"], 250.0);
        assert_eq!(json["history"][0]["from"], "NORMAL");
        assert_eq!(json["history"][0]["to"], "GRACEFUL");
        assert_eq!(json["history"][0]["at_ms"], 42);
    }

    #[test]
    fn level_order_and_numbers() {
        for (i, level) in Level::ALL.iter().enumerate() {
            assert_eq!(level.as_u8() as usize, i);
            assert_eq!(Level::from_u8(i as u8), Some(*level));
            let json = serde_json::to_string(level).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", level.as_str()));
        }
        assert!(Level::Normal < Level::Soft && Level::Aggressive < Level::CircuitBreak);
        assert_eq!(Level::from_u8(5), None);
    }
}
