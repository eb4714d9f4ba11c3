//! The replay plan: the validated options with the frames ready to send,
//! and the pacer that spaces them (unpaced, a fixed rate, or the recorded
//! gaps).

use std::sync::atomic::AtomicI64;

use super::*;

/// The validated options, with frames ready to send.
pub(super) struct Plan {
    /// Converted once so that each send is a reference-count bump, not a copy.
    pub(super) frames: Box<[Utf8Bytes]>,
    pub(super) clock: Clock,
    pub(super) looped: bool,
    pub(super) live: bool,
    /// Exchange time (ms) of the first timestamped frame, when retiming.
    pub(super) retime_base: Option<i64>,
    /// The shift (ms) of the pass that started last, so that REST answers
    /// carry the times the WebSocket is playing (see `rest`).
    last_shift: AtomicI64,
}

pub(super) enum Clock {
    Unpaced,
    /// The same gap before every frame.
    Every(Duration),
    /// `gaps[i]` is the wait between frame `i - 1` and frame `i`; `gaps[0]` is
    /// zero, which is also the wait when a loop starts over.
    Gaps(Box<[Duration]>),
}

impl Plan {
    pub(super) fn new(opts: ReplayOptions) -> Result<Self, ReplayError> {
        if opts.frames.is_empty() {
            return Err(ReplayError::EmptyCapture);
        }
        let invalid = |reason| ReplayError::InvalidPacing {
            pacing: opts.pacing,
            reason,
        };
        let clock = match opts.pacing {
            Pacing::AsFastAsPossible => Clock::Unpaced,
            Pacing::Rate(rate) => {
                let gap = Some(rate)
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .and_then(|r| Duration::try_from_secs_f64(1.0 / r).ok())
                    .ok_or_else(|| {
                        invalid("the rate must be a positive number of frames per second")
                    })?;
                Clock::Every(gap)
            }
            Pacing::Speed(speed) => {
                // Every gap is at most MAX_RECORDED_GAP_SECS / speed, so
                // checking that bound here keeps the later conversions exact.
                let valid = speed.is_finite()
                    && speed > 0.0
                    && Duration::try_from_secs_f64(MAX_RECORDED_GAP_SECS / speed).is_ok();
                if !valid {
                    return Err(invalid(
                        "the speed must be a positive multiple of real time",
                    ));
                }
                if opts.frames.iter().all(|f| f.ts.is_none()) {
                    warn!(
                        speed,
                        "capture has no timestamps; speed pacing falls back to as fast as possible"
                    );
                    Clock::Unpaced
                } else {
                    Clock::Gaps(recorded_gaps(&opts.frames, speed))
                }
            }
        };
        if opts.live && matches!(clock, Clock::Unpaced) {
            warn!(
                "live replay without speed or rate pacing runs the shared timeline unthrottled; \
                 clients that cannot keep up will be disconnected"
            );
        }
        let retime_base = if opts.retime {
            let base = opts
                .frames
                .iter()
                .find_map(|f| retime::exchange_time_ms(&f.data));
            if base.is_none() {
                warn!(
                    "--retime: no frame carries an exchange timestamp; frames are sent unchanged"
                );
            }
            base
        } else {
            None
        };
        let frames = match Arc::try_unwrap(opts.frames) {
            Ok(frames) => frames
                .into_iter()
                .map(|f| Utf8Bytes::from(f.data))
                .collect(),
            Err(shared) => shared
                .iter()
                .map(|f| Utf8Bytes::from(f.data.as_str()))
                .collect(),
        };
        // Until a pass starts, REST answers as if one started with the server.
        let last_shift = AtomicI64::new(retime_base.map_or(0, |base| retime::now_ms() - base));
        Ok(Self {
            frames,
            clock,
            looped: opts.looped,
            live: opts.live,
            retime_base,
            last_shift,
        })
    }

    /// The shift (ms) that makes this pass start "now", when retiming.
    /// Remembered as the one REST answers with.
    pub(super) fn pass_shift(&self) -> Option<i64> {
        let shift = self.retime_base.map(|base| retime::now_ms() - base);
        if let Some(shift) = shift {
            self.last_shift.store(shift, Ordering::Relaxed);
        }
        shift
    }

    /// The shift (ms) of the pass that started last; 0 without retiming.
    pub(super) fn current_shift(&self) -> i64 {
        self.last_shift.load(Ordering::Relaxed)
    }

    /// The frame as sent in a pass with `shift`.
    pub(super) fn frame_for_pass(frame: &Utf8Bytes, shift: Option<i64>) -> Utf8Bytes {
        match shift.and_then(|s| retime::shift_frame(frame.as_str(), s)) {
            Some(text) => Utf8Bytes::from(text),
            None => frame.clone(),
        }
    }
}

pub(super) fn recorded_gaps(frames: &[CapturedFrame], speed: f64) -> Box<[Duration]> {
    let mut previous: Option<f64> = None;
    frames
        .iter()
        .map(|frame| {
            let gap = match (previous, frame.ts) {
                (Some(before), Some(now)) => now - before,
                _ => 0.0,
            };
            previous = frame.ts;
            // `gap > 0.0` is false for NaN as well as for negative gaps.
            let secs = if gap > 0.0 {
                gap.min(MAX_RECORDED_GAP_SECS) / speed
            } else {
                0.0
            };
            Duration::try_from_secs_f64(secs).unwrap_or_default()
        })
        .collect()
}

/// Keeps one sequence of frames on schedule.
///
/// Deadlines are absolute (each one is the previous deadline plus the gap),
/// not sleeps after each send: timer resolution is about a millisecond, so
/// sleeping 20µs per frame would cap a 50k/s rate near 1k/s. Frames whose
/// deadline has passed go out back to back, so a sender that fell behind
/// catches up in a burst and the overall rate holds.
pub(super) struct Pacer<'a> {
    clock: &'a Clock,
    next: Option<Instant>,
    burst: u32,
}

impl<'a> Pacer<'a> {
    pub(super) fn new(clock: &'a Clock) -> Self {
        Self {
            clock,
            next: None,
            burst: 0,
        }
    }

    /// Waits until frame `index` is due. Anything buffered in `sink` is
    /// flushed before sleeping, so frames are not held back while idle.
    pub(super) async fn wait(
        &mut self,
        index: usize,
        sink: Option<&mut WsSink>,
    ) -> Result<(), WsError> {
        let gap = match self.clock {
            Clock::Unpaced => None,
            Clock::Every(gap) => Some(*gap),
            Clock::Gaps(gaps) => Some(gaps.get(index).copied().unwrap_or_default()),
        };
        let due = gap.map(|gap| match self.next {
            Some(previous) => previous.checked_add(gap).unwrap_or(previous),
            None => Instant::now(),
        });
        self.next = due;
        match due {
            Some(due) if due > Instant::now() => {
                if let Some(sink) = sink {
                    sink.flush().await?;
                }
                sleep_until(due).await;
                self.burst = 0;
            }
            _ => {
                self.burst += 1;
                if self.burst >= BURST_BEFORE_YIELD {
                    self.burst = 0;
                    tokio::task::yield_now().await;
                }
            }
        }
        Ok(())
    }
}
