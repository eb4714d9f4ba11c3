//! The search for the highest rate the full path holds at NORMAL: paced
//! runs at falling fractions of the unpaced rate until one keeps up (or,
//! when the first does, at rising ones until one falls behind), then
//! halving the step between.

use serde::Serialize;

use super::{BenchError, FullReport, ProducerWaits};
use crate::degrade::level::Level;

/// The fractions of the unpaced rate the search offers, in order: fine
/// steps near the top, where the NORMAL rate of an unpaced run that
/// degraded for part of its trades usually is.
pub const NORMAL_FRACTIONS: [f64; 11] = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.4, 0.3];

/// The fractions offered, in order, when the first of `NORMAL_FRACTIONS`
/// kept up: then the unpaced rate is no bound on NORMAL's (an unpaced run
/// spends most of its time above NORMAL, where trades go without
/// `vendor_data` and cost less, but its rate moves from run to run by more
/// than the step), and stopping there would report the search's start,
/// not the path's limit. Up to 1.1: a paced run that holds NORMAL above
/// that is no longer what the unpaced run measured.
pub const RISING_FRACTIONS: [f64; 3] = [1.0, 1.05, 1.1];

/// Paced runs after the first that kept up, each halving the step between
/// the highest fraction that kept up and the lowest that did not: two
/// take the search's resolution near the top from 5 % of the unpaced rate
/// to 1.25 % (a whole step could cost the reported rate up to 5 %, 2.5 %
/// on average), for two more runs of about ten seconds each.
pub const REFINE_STEPS: usize = 2;

/// One paced run of the search.
#[derive(Debug, Serialize)]
pub struct NormalProbe {
    /// The fraction of the unpaced rate offered.
    pub fraction: f64,
    /// Run to halve the step after the first that kept up
    /// (`REFINE_STEPS`), not one of `NORMAL_FRACTIONS` or
    /// `RISING_FRACTIONS`.
    pub refine: bool,
    pub offered_per_s: f64,
    pub trades: usize,
    /// What the feed received, over the time it took to.
    pub received_per_s: f64,
    /// First frame to last committed row.
    pub stored_per_s: f64,
    /// Last frame received to last row committed.
    pub tail_secs: f64,
    pub max_level: Level,
    pub above_normal_secs: f64,
    pub raised_by: Option<String>,
    pub enrichment_skipped: u64,
    pub producer_waits: ProducerWaits,
    pub cpu_us_per_trade: f64,
    pub peak_rss_bytes: u64,
    /// The process it ran in.
    pub pid: u32,
    pub sustained: bool,
}

impl NormalProbe {
    /// A paced run of `n` trades at `offered` judged: it kept up when the
    /// feed received at >= 95 % of the offer, the last commit followed
    /// the last frame within a bounded tail, every trade was stored, and
    /// the level stayed NORMAL throughout (so no trade went without
    /// `vendor_data`).
    pub(super) fn judged(
        r: FullReport,
        n: usize,
        fraction: f64,
        offered: f64,
        refine: bool,
    ) -> Self {
        let received_per_s = n as f64 / r.received_secs.max(f64::MIN_POSITIVE);
        let tail_secs = r.seconds - r.received_secs;
        let stored = r.outcomes.get("stored").copied().unwrap_or(0);
        let sustained = r.max_level == Level::Normal
            && r.enrichment_skipped == 0
            && stored >= n as u64
            && received_per_s >= 0.95 * offered
            && tail_secs <= (0.25 * r.received_secs).max(2.0);
        Self {
            fraction,
            refine,
            offered_per_s: offered,
            trades: n,
            received_per_s,
            stored_per_s: r.end_to_end_per_s,
            tail_secs,
            max_level: r.max_level,
            above_normal_secs: r.above_normal_secs,
            raised_by: r.raised_by,
            enrichment_skipped: r.enrichment_skipped,
            producer_waits: r.producer_waits,
            cpu_us_per_trade: r.cpu_us_per_trade,
            peak_rss_bytes: r.peak_rss_bytes,
            pid: r.pid,
            sustained,
        }
    }
}

/// The search for the highest rate held at NORMAL: `probe(fraction,
/// refine)` runs one paced run at that fraction of the unpaced rate. The
/// runs offered, in order, and the received rate of the one offered the
/// most of those that kept up.
pub(super) async fn search_normal<F, Fut>(
    mut probe: F,
) -> Result<(Vec<NormalProbe>, Option<f64>), BenchError>
where
    F: FnMut(f64, bool) -> Fut,
    Fut: std::future::Future<Output = Result<NormalProbe, BenchError>>,
{
    let mut search: Vec<NormalProbe> = Vec::new();
    // Falling fractions until one keeps up...
    let mut failed_above = None;
    let mut held = None;
    for fraction in NORMAL_FRACTIONS {
        let p = probe(fraction, false).await?;
        let ok = p.sustained;
        search.push(p);
        if ok {
            held = Some(fraction);
            break;
        }
        failed_above = Some(fraction);
    }
    // ...or, when the first kept up, rising ones until one falls behind...
    if held.is_some() && failed_above.is_none() {
        for fraction in RISING_FRACTIONS {
            let p = probe(fraction, false).await?;
            let ok = p.sustained;
            search.push(p);
            if !ok {
                failed_above = Some(fraction);
                break;
            }
            held = Some(fraction);
        }
    }
    // ...then halving the step between the lowest that fell behind and the
    // highest that kept up, so that the figure is not up to a whole step
    // below what the path holds.
    if let (Some(mut low), Some(mut high)) = (held, failed_above) {
        for _ in 0..REFINE_STEPS {
            let fraction = (low + high) / 2.0;
            let p = probe(fraction, true).await?;
            if p.sustained {
                low = fraction;
            } else {
                high = fraction;
            }
            search.push(p);
        }
    }
    let sustained = search
        .iter()
        .filter(|p| p.sustained)
        .max_by(|a, b| a.fraction.total_cmp(&b.fraction))
        .map(|p| p.received_per_s);
    Ok((search, sustained))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paced run that keeps up at `fraction` exactly when it is at or
    /// below `holds`; it receives what it was offered, of an unpaced
    /// 100,000/s.
    fn run_at(fraction: f64, refine: bool, holds: f64) -> NormalProbe {
        NormalProbe {
            fraction,
            refine,
            offered_per_s: 100_000.0 * fraction,
            trades: 1_000,
            received_per_s: 100_000.0 * fraction,
            stored_per_s: 100_000.0 * fraction,
            tail_secs: 0.1,
            max_level: if fraction <= holds {
                Level::Normal
            } else {
                Level::Soft
            },
            above_normal_secs: 0.0,
            raised_by: None,
            enrichment_skipped: 0,
            producer_waits: ProducerWaits::default(),
            cpu_us_per_trade: 1.0,
            peak_rss_bytes: 1,
            pid: 1,
            sustained: fraction <= holds,
        }
    }

    /// The runs tried, as (fraction in hundredths of a percent, refining,
    /// kept up), and the rate found.
    async fn search_holding_up_to(holds: f64) -> (Vec<(i64, bool, bool)>, Option<f64>) {
        let (runs, rate) =
            search_normal(|fraction, refine| async move { Ok(run_at(fraction, refine, holds)) })
                .await
                .unwrap();
        let runs = runs
            .iter()
            .map(|p| {
                (
                    (p.fraction * 10_000.0).round() as i64,
                    p.refine,
                    p.sustained,
                )
            })
            .collect();
        (runs, rate)
    }

    #[tokio::test]
    async fn the_search_halves_the_step_above_the_first_rate_that_keeps_up() {
        let (runs, rate) = search_holding_up_to(0.83).await;
        assert_eq!(
            runs,
            [
                (9_500, false, false),
                (9_000, false, false),
                (8_500, false, false),
                (8_000, false, true),
                (8_250, true, true),
                (8_375, true, false),
            ]
        );
        assert_eq!(
            rate.map(f64::round),
            Some(82_500.0),
            "the highest offer that kept up"
        );
    }

    #[tokio::test]
    async fn a_search_whose_first_run_keeps_up_rises_until_one_falls_behind() {
        let (runs, rate) = search_holding_up_to(1.03).await;
        assert_eq!(
            runs,
            [
                (9_500, false, true),
                (10_000, false, true),
                (10_500, false, false),
                (10_250, true, true),
                (10_375, true, false),
            ]
        );
        assert_eq!(rate.map(f64::round), Some(102_500.0));
        let (runs, rate) = search_holding_up_to(0.97).await;
        assert_eq!(
            runs,
            [
                (9_500, false, true),
                (10_000, false, false),
                (9_750, true, false),
                (9_625, true, true),
            ]
        );
        assert_eq!(rate.map(f64::round), Some(96_250.0));
    }

    #[tokio::test]
    async fn a_search_that_holds_throughout_or_never_refines_nothing() {
        let (runs, rate) = search_holding_up_to(2.0).await;
        assert_eq!(
            runs,
            [
                (9_500, false, true),
                (10_000, false, true),
                (10_500, false, true),
                (11_000, false, true),
            ]
        );
        assert_eq!(rate.map(f64::round), Some(110_000.0));
        let (runs, rate) = search_holding_up_to(0.1).await;
        assert_eq!(runs.len(), NORMAL_FRACTIONS.len());
        assert!(runs.iter().all(|(_, refine, held)| !refine && !held));
        assert_eq!(rate, None);
    }
}
