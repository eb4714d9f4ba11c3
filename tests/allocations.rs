//! The heap allocations a Binance trade costs on the feed's thread, counted.
//!
//! A feed parses, encodes and frees every trade on one thread, and at
//! `ticklake bench`'s rates allocating and freeing were an eighth of that
//! thread's time. A trade's short texts (trade id, symbol, exchange,
//! currency, instrument, the vendor map's entries) live inside the record
//! (`SmolStr`), so a trade costs its message id and its vendor map's
//! vector, and the encoder writes into a buffer it reuses. This counts
//! them, on this thread only, so that a change which puts a `String` back
//! on the path fails here rather than only showing in a profile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ticklake::config::ProtocolKind;
use ticklake::exchanges::{Frame, ParseCtx, protocol};
use ticklake::instruments::Instruments;
use ticklake::kafka::avro::Codec;
use ticklake::model::TradeV2;

/// The system allocator, counting the calls that take memory (`alloc`,
/// `alloc_zeroed`, `realloc`) made on the calling thread.
struct Counting;

thread_local! {
    static TAKEN: Cell<u64> = const { Cell::new(0) };
}

fn taken() -> u64 {
    TAKEN.with(Cell::get)
}

fn count() {
    // `try_with`: a thread being torn down may still allocate.
    let _ = TAKEN.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is passed through to `System` unchanged; the count
// is a thread-local `Cell` of a const initializer, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FRAMES: usize = 10_000;
const SYMBOLS: usize = 50;

#[test]
fn a_binance_trade_costs_its_message_id_and_its_vendor_map() {
    let frames = ticklake::tools::bench::generated_frames(FRAMES, SYMBOLS);
    let instruments = Instruments::builtin().expect("the shipped instruments");
    let rule = instruments
        .symbol_rule("BINANCE")
        .expect("a rule for BINANCE");
    let ctx = ParseCtx {
        exchange: "BINANCE",
        symbols: rule,
        received_us: ticklake::model::now_us(),
    };
    let binance = protocol(ProtocolKind::Binance);
    let codec = Codec::new(1, 2).expect("the built-in schemas");
    // Sized before counting, as the feed's reused buffers are once warm.
    let mut out: Vec<TradeV2> = Vec::with_capacity(1);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);

    // Each symbol seen once first: the symbol rule remembers, once, each
    // symbol its pattern admitted.
    for f in &frames[..SYMBOLS] {
        binance.parse(f, &ctx, &mut out).expect("a trade");
        out.clear();
    }

    let mut parsed = 0u64;
    let mut encoded = 0u64;
    let mut freed = 0u64;
    for f in &frames {
        let before = taken();
        let frame = binance.parse(f, &ctx, &mut out);
        parsed += taken() - before;
        assert!(
            frame == Ok(Frame::Trades(1)),
            "a generated frame is a trade: {frame:?}"
        );
        let before = taken();
        for t in &out {
            buf.clear();
            codec.encode_trade_into(&mut buf, t);
        }
        encoded += taken() - before;
        let before = taken();
        out.clear();
        freed += taken() - before;
    }
    let trades = FRAMES as f64;
    println!(
        "allocations a trade: parse {:.2}, encode {:.2}, free {:.2}",
        parsed as f64 / trades,
        encoded as f64 / trades,
        freed as f64 / trades
    );
    // The message id (36 bytes, beyond inline text) and the vendor map's
    // vector; before the short texts were inline, 11.
    assert_eq!(parsed, 2 * FRAMES as u64, "allocations in the parse");
    assert_eq!(encoded, 0, "allocations in the encoder");
    assert_eq!(freed, 0, "allocations in freeing the trades");
    // Every record still carries what the texts held.
    let mut last = Vec::new();
    binance
        .parse(frames.last().unwrap(), &ctx, &mut last)
        .unwrap();
    let t = &last[0];
    assert_eq!(t.exchange, "BINANCE");
    assert_eq!(
        t.trade_id,
        format!("BINANCE-{}", t.source_sequence.unwrap())
    );
    assert_eq!(t.currency, "USDT");
    assert_eq!(
        t.instrument.as_deref(),
        Some(format!("{}-USDT", t.symbol.strip_suffix("USDT").unwrap()).as_str())
    );
    let vendor = t.vendor_data.as_ref().unwrap();
    assert_eq!(vendor.get("stream").map(|s| s.as_str()), Some("trade"));
    assert!(vendor.get("event_time_ms").is_some());
}
