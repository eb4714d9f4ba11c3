//! What the producer shows of itself on `/status`.

use serde::Serialize;

use crate::actors::observe::{Health, ObservableState};
use crate::degrade::breaker::BreakerSnapshot;
use crate::degrade::level::Level;
use crate::degrade::spill::SpillSnapshot;
use crate::kafka::window::WindowSnapshot;
use crate::lanes::MailboxStats;

/// What `/status` shows for the producer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProducerState {
    pub level: Option<Level>,
    pub in_flight: u64,
    pub enqueued: u64,
    pub delivered: u64,
    pub failed_deliveries: u64,
    pub spilled: u64,
    pub replayed: u64,
    /// Refused by the broker for good and moved to the quarantine file.
    pub quarantined: u64,
    /// Records found in the spill log at start and not yet replayed.
    pub carried_over_pending: u64,
    /// Spilled because the embedded broker's window was full (its
    /// consumer behind), not because of a broker fault.
    pub window_spilled: u64,
    /// Times the producer stopped reading its lanes to wait for room for a
    /// record: the embedded broker's window full (its consumer behind)...
    pub window_waits: u64,
    /// ... or librdkafka's own queue full (the broker behind).
    pub queue_waits: u64,
    pub window: Option<WindowSnapshot>,
    pub shed: u64,
    pub enrichment_skipped: u64,
    pub breaker: Option<BreakerSnapshot>,
    pub spill: Option<SpillSnapshot>,
    pub lanes: Option<MailboxStats>,
    #[serde(flatten)]
    pub health: Health,
}

impl ObservableState for ProducerState {
    fn name(&self) -> String {
        "producer".into()
    }

    fn status(&self) -> String {
        match self.breaker.as_ref().map(|b| b.state.as_str()) {
            Some("CLOSED") | None => "running",
            Some(_) => "broker unavailable: spilling",
        }
        .into()
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn throughput_key(&self) -> Option<String> {
        Some("producer.delivered".into())
    }

    fn breaker(&self) -> Option<&BreakerSnapshot> {
        self.breaker.as_ref()
    }
}
