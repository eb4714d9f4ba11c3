//! What the orchestrator sees of the daemon while it runs: a sample every
//! half second from `/status`, the counters summed over the daemon's runs
//! (a killed run's counters die with it; its last sample stands for them),
//! the fault spans, and the live terminal view.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::source::Timeline;

pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// One exchange and tier's counters from `/status` `accounting`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub published: u64,
    pub shed: u64,
    pub dead_lettered: u64,
    pub deduplicated: u64,
    pub stored: u64,
    pub spilled_pending: u64,
}

impl Counts {
    fn from_status(a: &Value) -> Self {
        let n = |k: &str| a[k].as_u64().unwrap_or(0);
        Self {
            received: n("received"),
            published: n("published"),
            shed: n("shed"),
            dead_lettered: n("dead_lettered"),
            deduplicated: n("deduplicated"),
            stored: n("stored"),
            spilled_pending: n("spilled_pending"),
        }
    }
    fn add(&mut self, o: &Self) {
        self.received += o.received;
        self.published += o.published;
        self.shed += o.shed;
        self.dead_lettered += o.dead_lettered;
        self.deduplicated += o.deduplicated;
        self.stored += o.stored;
        self.spilled_pending += o.spilled_pending;
    }
}

/// One point of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    pub phase: String,
    /// Trades a second the venue generated, delivered to the daemon's feed,
    /// and the daemon committed to the lake (all runs).
    pub offered_rate: f64,
    pub delivered_rate: f64,
    pub stored_rate: f64,
    /// Trades committed so far, all runs.
    pub stored: u64,
    pub level: String,
    pub level_n: u8,
    pub lag: i64,
    pub spill_pending: u64,
    /// Shed so far, all runs.
    pub shed: u64,
    pub breaker: String,
    pub daemon_up: bool,
    pub lanes: String,
}

/// A fault's span on the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct FaultSpan {
    pub name: String,
    pub start: f64,
    pub end: Option<f64>,
}

pub fn level_n(level: &str) -> u8 {
    match level {
        "SOFT" => 1,
        "GRACEFUL" => 2,
        "AGGRESSIVE" => 3,
        "CIRCUIT_BREAK" => 4,
        _ => 0,
    }
}

/// Counters per (exchange, tier) of one `/status`.
pub fn accounts(s: &Value) -> BTreeMap<(String, String), Counts> {
    s["accounting"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        (
                            x["exchange"].as_str().unwrap_or("?").to_string(),
                            x["tier"].as_str().unwrap_or("?").to_string(),
                        ),
                        Counts::from_status(x),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Consumer lag summed over topics and partitions.
pub fn lag(s: &Value) -> i64 {
    s["lag"]
        .as_object()
        .map(|t| {
            t.values()
                .filter_map(Value::as_object)
                .flat_map(|p| p.values().filter_map(Value::as_i64))
                .sum()
        })
        .unwrap_or(0)
}

fn lanes(s: &Value) -> String {
    let Some(children) = s["tree"]["children"].as_array() else {
        return String::new();
    };
    children
        .iter()
        .filter_map(|c| c["lanes"]["lanes"].as_array())
        .flatten()
        .map(|l| {
            format!(
                "t{} {}/{}",
                l["tier"].as_u64().unwrap_or(0) + 1,
                l["depth"].as_u64().unwrap_or(0),
                l["capacity"].as_u64().unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn producer_breaker(s: &Value) -> String {
    s["breakers"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["name"] == "producer"))
        .and_then(|b| b["state"].as_str())
        .unwrap_or("-")
        .to_string()
}

/// The watcher: samples, totals over runs, faults, the view.
pub struct Watch {
    pub started: Instant,
    pub tl: Arc<Timeline>,
    pub samples: Vec<Sample>,
    pub faults: Vec<FaultSpan>,
    pub phase: String,
    /// Counters of the daemon's finished runs, summed.
    finished: BTreeMap<(String, String), Counts>,
    /// The current run's last counters.
    pub current: BTreeMap<(String, String), Counts>,
    pub last_status: Option<Value>,
    last_at: Option<Instant>,
    last_head: u64,
    last_cursor: u64,
    tty: bool,
    drawn_lines: usize,
    quiet: bool,
}

impl Watch {
    pub fn new(tl: Arc<Timeline>, quiet: bool) -> Self {
        Self {
            started: Instant::now(),
            tl,
            samples: Vec::new(),
            faults: Vec::new(),
            phase: "start".into(),
            finished: BTreeMap::new(),
            current: BTreeMap::new(),
            last_status: None,
            last_at: None,
            last_head: 0,
            last_cursor: 0,
            tty: std::io::stdout().is_terminal(),
            drawn_lines: 0,
            quiet,
        }
    }

    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn fault_start(&mut self, name: &str) {
        let start = self.now();
        self.faults.push(FaultSpan {
            name: name.into(),
            start,
            end: None,
        });
    }

    pub fn fault_end(&mut self) {
        let now = self.now();
        if let Some(f) = self.faults.iter_mut().rev().find(|f| f.end.is_none()) {
            f.end = Some(now);
        }
    }

    /// The daemon's run ended (killed): its last counters are final.
    pub fn run_ended(&mut self) {
        for (k, c) in std::mem::take(&mut self.current) {
            self.finished.entry(k).or_default().add(&c);
        }
    }

    /// Counters summed over every run so far.
    pub fn totals(&self) -> BTreeMap<(String, String), Counts> {
        let mut t = self.finished.clone();
        for (k, c) in &self.current {
            t.entry(k.clone()).or_default().add(c);
        }
        t
    }

    /// Commits land in bursts (every `writer.max_age_ms`), so the stored
    /// rate is taken over the last two seconds, not between two samples.
    fn stored_rate(&self, stored: u64) -> f64 {
        let now = self.now();
        let Some(then) = self.samples.iter().rev().find(|s| now - s.t >= 2.0) else {
            return 0.0;
        };
        stored.saturating_sub(then.stored) as f64 / (now - then.t)
    }

    /// Takes a sample now (`status` is `None` while the daemon is down).
    pub fn sample(&mut self, status: Option<Value>) {
        let now = Instant::now();
        let dt = self
            .last_at
            .map_or(0.0, |a| now.duration_since(a).as_secs_f64());
        if let Some(s) = &status {
            self.current = accounts(s);
        }
        let totals = self.totals();
        let stored: u64 = totals.values().map(|c| c.stored).sum();
        let shed: u64 = totals.values().map(|c| c.shed).sum();
        let head = self.tl.head();
        let cursor = self.tl.cursor.load(std::sync::atomic::Ordering::Relaxed);
        let rate = |now: u64, before: u64| {
            if dt > 0.0 {
                now.saturating_sub(before) as f64 / dt
            } else {
                0.0
            }
        };
        let level = status
            .as_ref()
            .and_then(|s| s["level"].as_str())
            .unwrap_or("DOWN")
            .to_string();
        let sample = Sample {
            t: self.now(),
            phase: self.phase.clone(),
            offered_rate: rate(head, self.last_head),
            delivered_rate: rate(cursor, self.last_cursor),
            stored_rate: self.stored_rate(stored),
            stored,
            level_n: level_n(&level),
            level,
            lag: status.as_ref().map_or(0, lag),
            spill_pending: status
                .as_ref()
                .and_then(|s| s["spill"]["pending"].as_u64())
                .unwrap_or(0),
            shed,
            breaker: status.as_ref().map_or("-".into(), producer_breaker),
            daemon_up: status.is_some(),
            lanes: status.as_ref().map_or(String::new(), lanes),
        };
        self.last_at = Some(now);
        self.last_head = head;
        self.last_cursor = cursor;
        self.samples.push(sample);
        if status.is_some() {
            self.last_status = status;
        }
        if !self.quiet {
            self.draw();
        }
    }

    /// The live view: a panel redrawn in place on a terminal, one line a
    /// second otherwise (a log, a CI run).
    fn draw(&mut self) {
        let Some(s) = self.samples.last() else {
            return;
        };
        let mut out = std::io::stdout().lock();
        if !self.tty {
            // Every other sample: one line a second.
            if self.samples.len().is_multiple_of(2) {
                let _ = writeln!(
                    out,
                    "t={:>6.1}s {:<14} offered {:>7.0}/s delivered {:>7.0}/s stored {:>7.0}/s level {:<13} breaker {:<9} spill {:>6} lag {:>6} shed {:>6}",
                    s.t,
                    s.phase,
                    s.offered_rate,
                    s.delivered_rate,
                    s.stored_rate,
                    s.level,
                    s.breaker,
                    s.spill_pending,
                    s.lag,
                    s.shed
                );
            }
            return;
        }
        let mut lines = vec![
            format!(
                "ticklake chaos  t={:.1}s  phase {}  daemon {}",
                s.t,
                s.phase,
                if s.daemon_up { "up" } else { "DOWN" }
            ),
            format!(
                "  level {:<13}  breaker {:<9}  spill {:>7}  lag {:>7}  shed {:>7}",
                s.level, s.breaker, s.spill_pending, s.lag, s.shed
            ),
            format!(
                "  rate/s  offered {:>8.0}  delivered {:>8.0}  stored {:>8.0}",
                s.offered_rate, s.delivered_rate, s.stored_rate
            ),
            format!("  lanes   {}", s.lanes),
        ];
        for ((ex, tier), c) in self.totals() {
            lines.push(format!(
                "  {ex:<8} tier {tier:<2} received {:>8}  stored {:>8}  shed {:>7}  dedup {:>5}  dead {:>4}",
                c.received, c.stored, c.shed, c.deduplicated, c.dead_lettered
            ));
        }
        if self.drawn_lines > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn_lines);
        }
        for l in &lines {
            let _ = writeln!(out, "\x1b[2K{l}");
        }
        self.drawn_lines = lines.len();
        let _ = out.flush();
    }

    /// Ends the panel so what follows prints below it.
    pub fn finish_view(&mut self) {
        self.drawn_lines = 0;
    }
}
