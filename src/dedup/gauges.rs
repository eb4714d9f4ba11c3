//! A dedup's figures in the metrics, under its owner (`feed.<exchange>`,
//! `writer.trades`). The dedup sets them itself, so that its users (the
//! feed's intake, the writer) need no code of their own for it.

use prometheus::{Gauge, IntCounter, IntGauge};

use crate::metrics::Metrics;

/// The owner's series, looked up once.
pub(super) struct Gauges {
    memory: IntGauge,
    fill: Gauge,
    false_positives: IntCounter,
}

impl Gauges {
    pub(super) fn new(metrics: &Metrics, owner: &str) -> Self {
        Self {
            memory: metrics.dedup_memory_bytes.with_label_values(&[owner]),
            fill: metrics.dedup_bloom_fill_ratio.with_label_values(&[owner]),
            false_positives: metrics.dedup_false_positives.with_label_values(&[owner]),
        }
    }

    pub(super) fn set(&self, memory_bytes: usize, fill_ratio: f64) {
        self.memory
            .set(i64::try_from(memory_bytes).unwrap_or(i64::MAX));
        self.fill.set(fill_ratio);
    }

    pub(super) fn false_positive(&self) {
        self.false_positives.inc();
    }
}
