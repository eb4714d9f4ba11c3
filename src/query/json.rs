//! Answer rows as JSON text, written by arrow-json straight from the result
//! batches. Two column types get encoders of their own, through arrow-json's
//! `EncoderFactory`:
//!
//! - `Decimal128` becomes a JSON *string* with every digit, written from the
//!   integer. Casting the column to Utf8 first (what the answers did before)
//!   allocates a `String` per value.
//! - UTC timestamps are written as RFC 3339, exactly as arrow's own display
//!   writes them (`2024-03-09T20:57:14.754Z`: the shortest of 0, 3 or 6
//!   fractional digits), without chrono's per-value formatting machinery.
//!   Values outside years 1970..=9999 go through arrow's formatter.
//!
//! A 10,000-row answer is about 3 MB of text, so large answers are encoded
//! in two halves on two threads and joined.

use std::sync::Arc;

use arrow::array::ArrayData;
use arrow::array::{Array, AsArray, Decimal128Array, RecordBatch, TimestampMicrosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, TimeUnit};
use arrow::error::ArrowError;
use arrow::json::writer::{JsonArray, NullableEncoder};
use arrow::json::{Encoder, EncoderFactory, EncoderOptions};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::Datelike;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::MemoryReservation;

use super::cancel::Cancel;
use crate::messages::query::QueryError;

/// Rows from which an answer is encoded on two threads.
const PARALLEL_ROWS: usize = 4096;

/// A JSON array of row objects, as text.
pub struct JsonRows(pub(super) String);

impl JsonRows {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug)]
struct AnswerEncoders;

impl EncoderFactory for AnswerEncoders {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        match array.data_type() {
            DataType::Decimal128(_, scale) if *scale >= 0 => {
                let array = array.as_primitive::<arrow::datatypes::Decimal128Type>();
                let enc = DecimalString {
                    array,
                    scale: *scale as u32,
                };
                Ok(Some(NullableEncoder::new(
                    Box::new(enc),
                    array.nulls().cloned(),
                )))
            }
            DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if is_utc(tz) => {
                let array = array.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
                let fallback = ArrayFormatter::try_new(array, &FormatOptions::new())?;
                let enc = UtcMicros {
                    array,
                    fallback,
                    day: None,
                };
                Ok(Some(NullableEncoder::new(
                    Box::new(enc),
                    array.nulls().cloned(),
                )))
            }
            _ => Ok(None),
        }
    }
}

fn is_utc(tz: &str) -> bool {
    matches!(tz, "+00:00" | "UTC" | "Z" | "+0000" | "Etc/UTC")
}

struct DecimalString<'a> {
    array: &'a Decimal128Array,
    scale: u32,
}

impl Encoder for DecimalString<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        out.push(b'"');
        write_decimal(self.array.value(idx), self.scale, out);
        out.push(b'"');
    }
}

/// `v / 10^scale` in plain notation, as arrow's Decimal128 → Utf8 cast
/// writes it: a leading `-` when negative, at least one integer digit, and
/// exactly `scale` fractional digits.
fn write_decimal(v: i128, scale: u32, out: &mut Vec<u8>) {
    // 39 digits at most, or the scale plus one (at most 77 for Decimal128).
    let mut digits = [0u8; 80];
    let mut len = 0;
    let abs = v.unsigned_abs();
    // Prices and quantities fit in 64 bits; u128 division is a library
    // call costing tens of nanoseconds per digit, u64 division a multiply.
    match u64::try_from(abs) {
        Ok(mut n) => loop {
            digits[len] = b'0' + (n % 10) as u8;
            n /= 10;
            len += 1;
            if n == 0 {
                break;
            }
        },
        Err(_) => {
            let mut n = abs;
            loop {
                digits[len] = b'0' + (n % 10) as u8;
                n /= 10;
                len += 1;
                if n == 0 {
                    break;
                }
            }
        }
    }
    // Zero-pad so there is at least one integer digit.
    let scale = (scale as usize).min(78);
    while len <= scale {
        digits[len] = b'0';
        len += 1;
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend(digits[scale..len].iter().rev());
    if scale > 0 {
        out.push(b'.');
        out.extend(digits[..scale].iter().rev());
    }
}

struct UtcMicros<'a> {
    array: &'a TimestampMicrosecondArray,
    fallback: ArrayFormatter<'a>,
    /// The last day written and its `"YYYY-MM-DDT` prefix: the rows of one
    /// answer mostly share a day.
    day: Option<(i64, [u8; 12])>,
}

/// 10000-01-01T00:00:00Z in microseconds.
const YEAR_10000_US: i64 = 253_402_300_800_000_000;
const DAY_US: i64 = 86_400_000_000;

impl Encoder for UtcMicros<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let us = self.array.value(idx);
        if !(0..YEAR_10000_US).contains(&us) {
            out.push(b'"');
            let _ = std::io::Write::write_fmt(out, format_args!("{}", self.fallback.value(idx)));
            out.push(b'"');
            return;
        }
        let day = us / DAY_US;
        let prefix = match self.day {
            Some((d, p)) if d == day => p,
            _ => {
                let Some(date) = chrono::NaiveDate::from_num_days_from_ce_opt(day as i32 + 719_163)
                else {
                    out.extend_from_slice(b"null");
                    return;
                };
                let mut p = *b"\"0000-00-00T";
                put_digits(&mut p[1..5], date.year() as u32);
                put_digits(&mut p[6..8], date.month());
                put_digits(&mut p[9..11], date.day());
                self.day = Some((day, p));
                p
            }
        };
        out.extend_from_slice(&prefix);
        let in_day = us % DAY_US;
        let secs = (in_day / 1_000_000) as u32;
        let micros = (in_day % 1_000_000) as u32;
        let mut t = *b"00:00:00";
        put_digits(&mut t[0..2], secs / 3600);
        put_digits(&mut t[3..5], secs / 60 % 60);
        put_digits(&mut t[6..8], secs % 60);
        out.extend_from_slice(&t);
        if micros != 0 {
            let mut f = *b".000000";
            if micros.is_multiple_of(1000) {
                put_digits(&mut f[1..4], micros / 1000);
                out.extend_from_slice(&f[..4]);
            } else {
                put_digits(&mut f[1..7], micros);
                out.extend_from_slice(&f);
            }
        }
        out.extend_from_slice(b"Z\"");
    }
}

/// Writes `v` into `buf` right-aligned, zero-padded to its width.
fn put_digits(buf: &mut [u8], mut v: u32) {
    for b in buf.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Decimal types the factory does not write (other widths, negative
/// scales) as strings, so a JSON answer keeps every digit.
fn exact(batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
    let schema = batch.schema();
    let needs_cast = |t: &DataType| match t {
        DataType::Decimal128(_, s) => *s < 0,
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal256(..) => true,
        _ => false,
    };
    if !schema.fields().iter().any(|f| needs_cast(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if needs_cast(f.data_type()) {
            cols.push(cast(c, &DataType::Utf8).map_err(QueryError::internal)?);
            fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
        } else {
            cols.push(c.clone());
            fields.push(f.as_ref().clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(QueryError::internal)
}

/// Rows encoded before sizing the buffer from what they took.
const SAMPLE_ROWS: usize = 64;

/// The most asked of the pool in one step. Far above any pool, and far
/// below where its `used + asked` could overflow.
const MAX_ASK: usize = 1 << 48;

/// Counts `bytes` more against `budget`, or says why not.
pub(super) fn take(budget: &MemoryReservation, bytes: usize) -> Result<(), DataFusionError> {
    if bytes > MAX_ASK {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "{bytes} bytes asked for at once"
        )));
    }
    budget.try_grow(bytes)
}

/// The answer's bytes, counted against the query memory pool
/// (`api.max_memory_bytes`) as the buffer grows: an answer that would need
/// more fails with "resources exhausted" instead of growing the daemon
/// until an allocation aborts it.
struct Counted<'a> {
    buf: Vec<u8>,
    budget: &'a MemoryReservation,
}

impl Counted<'_> {
    /// Room for `more` bytes, the capacity it adds counted first. Grows by
    /// doubling, as `Vec` would, so appends stay amortized.
    fn reserve(&mut self, more: usize) -> Result<(), DataFusionError> {
        let need = self.buf.len().saturating_add(more);
        if need <= self.buf.capacity() {
            return Ok(());
        }
        let target = need.max(self.buf.capacity().saturating_mul(2));
        take(self.budget, target - self.buf.capacity())?;
        self.buf.reserve_exact(target - self.buf.len());
        // The allocator may round up; what it gave is what is held.
        self.budget.grow(self.buf.capacity() - target);
        Ok(())
    }

    /// Room for `more` bytes if the pool has it; a pre-sizing hint that
    /// the pool refuses is dropped, and the buffer grows as it is written.
    fn reserve_hint(&mut self, more: usize) {
        let _ = self.reserve(more);
    }
}

impl std::io::Write for Counted<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.reserve(data.len()).map_err(std::io::Error::other)?;
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A refusal of the pool, or any other failure, as the query's error.
fn encode_err(e: ArrowError) -> QueryError {
    let root = match &e {
        ArrowError::IoError(_, io) => io
            .get_ref()
            .and_then(|i| i.downcast_ref::<DataFusionError>())
            .map(|d| d.find_root()),
        ArrowError::ExternalError(x) => x.downcast_ref::<DataFusionError>().map(|d| d.find_root()),
        _ => None,
    };
    match root {
        Some(DataFusionError::ResourcesExhausted(m)) => too_large(m),
        _ => QueryError::internal(e),
    }
}

pub(super) fn too_large(why: &str) -> QueryError {
    QueryError::Unavailable(format!(
        "the answer needs more memory than the query engine may use (api.max_memory_bytes): {why}; ask for fewer rows or smaller values"
    ))
}

/// Writes `b` counting the worst case first. arrow-json hands its output
/// over every 8 KiB but encodes one row whole into a buffer of its own, and
/// one row can be gigabytes of JSON (a long list of booleans is 6 bytes per
/// bit); so the most the slice could take is reserved before it is
/// written, and a slice that does not fit is written in halves, down to a
/// single row that is refused.
fn write_bounded<W: std::io::Write>(
    w: &mut arrow::json::Writer<W, JsonArray>,
    b: &RecordBatch,
    budget: &MemoryReservation,
) -> Result<(), QueryError> {
    let worst = json_bound(&arrow::array::StructArray::from(b.clone()).into_data());
    match take(budget, worst) {
        Ok(()) => {
            let written = w.write(b).map_err(encode_err);
            budget.shrink(worst);
            written
        }
        Err(e) if b.num_rows() <= 1 => Err(too_large(&format!(
            "one row could take {worst} bytes of JSON ({e})"
        ))),
        Err(_) => {
            let half = b.num_rows() / 2;
            write_bounded(w, &b.slice(0, half), budget)?;
            write_bounded(w, &b.slice(half, b.num_rows() - half), budget)
        }
    }
}

/// An upper bound of the JSON text arrow-json writes for `d`'s rows, from
/// lengths and offsets only (nothing is read twice). Strings may grow six
/// times (`\u0000`), a boolean or a null is five characters plus a comma,
/// any fixed-width value fits in 96, and a dictionary or run-end encoded
/// value may repeat its whole value array per row.
fn json_bound(d: &ArrayData) -> usize {
    const PER_VALUE: usize = 8;
    const FIXED: usize = 96;
    let (o, n) = (d.offset(), d.len());
    let offsets32 = |i: usize| -> usize {
        let v: &[i32] = d.buffers().first().map_or(&[], |b| b.typed_data());
        v.get(i).map_or(0, |x| usize::try_from(*x).unwrap_or(0))
    };
    let offsets64 = |i: usize| -> usize {
        let v: &[i64] = d.buffers().first().map_or(&[], |b| b.typed_data());
        v.get(i).map_or(0, |x| usize::try_from(*x).unwrap_or(0))
    };
    let child = |i: usize, start: usize, len: usize| -> usize {
        d.child_data().get(i).map_or(0, |c| {
            json_bound(&c.slice(start, len.min(c.len().saturating_sub(start))))
        })
    };
    let per_row = n.saturating_mul(PER_VALUE);
    let bound = match d.data_type() {
        DataType::Null | DataType::Boolean => per_row,
        DataType::Utf8 | DataType::Binary => {
            (offsets32(o + n) - offsets32(o).min(offsets32(o + n))).saturating_mul(6)
        }
        DataType::LargeUtf8 | DataType::LargeBinary => {
            (offsets64(o + n) - offsets64(o).min(offsets64(o + n))).saturating_mul(6)
        }
        DataType::Utf8View | DataType::BinaryView => {
            let views: &[u128] = d.buffers().first().map_or(&[], |b| b.typed_data());
            views
                .get(o..o + n)
                .map_or(0, |v| v.iter().map(|v| (*v as u32) as usize).sum::<usize>())
                .saturating_mul(6)
        }
        DataType::FixedSizeBinary(w) => n.saturating_mul(*w as usize).saturating_mul(6),
        DataType::List(_) | DataType::Map(..) => {
            let (a, b) = (offsets32(o), offsets32(o + n));
            child(0, a, b.saturating_sub(a))
        }
        DataType::LargeList(_) => {
            let (a, b) = (offsets64(o), offsets64(o + n));
            child(0, a, b.saturating_sub(a))
        }
        DataType::FixedSizeList(_, k) => {
            let k = *k as usize;
            child(0, o.saturating_mul(k), n.saturating_mul(k))
        }
        DataType::Struct(fields) => fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                child(i, o, n).saturating_add(n.saturating_mul(f.name().len().saturating_mul(6)))
            })
            .fold(0usize, usize::saturating_add),
        DataType::Dictionary(..) => {
            let values = d.child_data().first().map_or(0, json_bound);
            n.saturating_mul(values)
        }
        DataType::RunEndEncoded(..) => {
            let values = d.child_data().get(1).map_or(0, json_bound);
            n.saturating_mul(values)
        }
        t if t.is_primitive() => n.saturating_mul(FIXED),
        // Anything else (unions, list views): the data it holds, at the
        // widest expansion of any type above, per row.
        _ => d
            .get_slice_memory_size()
            .unwrap_or(usize::MAX)
            .saturating_mul(48),
    };
    bound.saturating_add(per_row)
}

/// `batches` as one JSON array (`[...]`, or nothing when there is no row),
/// in a buffer sized for `room_for` rows like the first ones (a 3 MB answer
/// grown by doubling was copied several times over), every byte counted
/// against `budget`. Stops with `Timeout` between batches once the query
/// is cancelled.
fn encode(
    batches: &[RecordBatch],
    room_for: usize,
    budget: &MemoryReservation,
    cancel: &Cancel,
) -> Result<Vec<u8>, QueryError> {
    let mut w = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_encoder_factory(Arc::new(AnswerEncoders))
        .build::<_, JsonArray>(Counted {
            buf: Vec::new(),
            budget,
        });
    let mut sized = false;
    for b in batches {
        cancel.check()?;
        let b = exact(b)?;
        if !sized && b.num_rows() > SAMPLE_ROWS {
            write_bounded(&mut w, &b.slice(0, SAMPLE_ROWS), budget)?;
            let per_row = w.get_ref().buf.len() / SAMPLE_ROWS + 1;
            let more = room_for.saturating_sub(SAMPLE_ROWS).saturating_mul(per_row);
            w.get_mut().reserve_hint(more.saturating_add(more / 8));
            sized = true;
            write_bounded(
                &mut w,
                &b.slice(SAMPLE_ROWS, b.num_rows() - SAMPLE_ROWS),
                budget,
            )?;
        } else {
            write_bounded(&mut w, &b, budget)?;
        }
    }
    w.finish().map_err(encode_err)?;
    Ok(w.into_inner().buf)
}

/// `batches` split into the first `n` rows and the rest (zero-copy).
pub(super) fn split_rows(
    batches: &[RecordBatch],
    n: usize,
) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let (mut head, mut rest) = (Vec::new(), Vec::new());
    let mut left = n;
    for b in batches {
        let take = b.num_rows().min(left);
        left -= take;
        if take > 0 {
            head.push(b.slice(0, take));
        }
        if take < b.num_rows() {
            rest.push(b.slice(take, b.num_rows() - take));
        }
    }
    (head, rest)
}

/// Batches as a JSON array of row objects (nulls written out), the
/// text counted against `budget` (a reservation of the query memory pool,
/// which the caller keeps while it holds the answer), stopping with
/// `Timeout` once `cancel` says so.
pub fn json_rows(
    batches: &[RecordBatch],
    budget: &MemoryReservation,
    cancel: &Cancel,
) -> Result<JsonRows, QueryError> {
    let started = std::time::Instant::now();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut buf = if rows >= PARALLEL_ROWS {
        let (a, b) = split_rows(batches, rows / 2);
        let (a, b) = std::thread::scope(|s| {
            // Named as a query thread: a panic in the encoder fails this
            // answer (the panic hook knows the name), not the daemon.
            let second = std::thread::Builder::new()
                .name(format!("{}-json", super::pool::THREAD_NAME))
                .spawn_scoped(s, || encode(&b, rows - rows / 2, budget, cancel));
            // Room for both halves: the second is appended to it.
            let first = encode(&a, rows, budget, cancel);
            let second = match second {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(QueryError::Internal("json encoder panicked".into()))),
                Err(e) => Err(QueryError::internal(e)),
            };
            (first, second)
        });
        let (a, b) = (a?, b?);
        // "[x,y]" + "[z]" → "[x,y,z]"
        let mut a = Counted { buf: a, budget };
        if a.buf.pop() != Some(b']') || b.first() != Some(&b'[') {
            return Err(QueryError::Internal("json halves are not arrays".into()));
        }
        a.reserve(b.len()).map_err(|e| too_large(&e.to_string()))?;
        a.buf.push(b',');
        a.buf.extend_from_slice(&b[1..]);
        budget.shrink(b.capacity().min(budget.size()));
        drop(b);
        a.buf
    } else {
        encode(batches, rows, budget, cancel)?
    };
    if buf.is_empty() {
        buf.extend_from_slice(b"[]");
    }
    // With the query's own timings (trades_in_order), where a slow answer
    // spent its time, for `RUST_LOG=ticklake::api=debug`.
    tracing::debug!(
        json_ms = started.elapsed().as_secs_f64() * 1000.0,
        rows,
        bytes = buf.len(),
        "answer rows as json"
    );
    String::from_utf8(buf)
        .map(JsonRows)
        .map_err(QueryError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, BooleanArray, Int64Array, ListArray, StringArray};
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};
    use rand::{Rng, SeedableRng};

    /// A reservation of a pool of its own, `bytes` large.
    fn budget(bytes: usize) -> MemoryReservation {
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(bytes));
        MemoryConsumer::new("test").register(&pool)
    }

    fn roomy() -> MemoryReservation {
        budget(1 << 30)
    }

    /// No deadline near.
    fn far() -> Cancel {
        Cancel::after(3_600_000)
    }

    /// What arrow-json writes for `batches` with the decimals cast to Utf8
    /// first: the answers' format before the factory existed.
    fn reference(batches: &[RecordBatch]) -> String {
        let mut buf = Vec::new();
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, JsonArray>(&mut buf);
        for b in batches {
            let schema = b.schema();
            let mut fields = Vec::new();
            let mut cols = Vec::new();
            for (f, c) in schema.fields().iter().zip(b.columns()) {
                if matches!(f.data_type(), DataType::Decimal128(..)) {
                    cols.push(cast(c, &DataType::Utf8).unwrap());
                    fields.push(Field::new(f.name(), DataType::Utf8, true));
                } else {
                    cols.push(c.clone());
                    fields.push(f.as_ref().clone());
                }
            }
            w.write(&RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap())
                .unwrap();
        }
        w.finish().unwrap();
        if buf.is_empty() {
            return "[]".into();
        }
        String::from_utf8(buf).unwrap()
    }

    fn batch(n: usize, seed: u64) -> RecordBatch {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let ts: Vec<Option<i64>> = (0..n)
            .map(|i| match i % 7 {
                0 => None,
                // whole seconds, milliseconds, microseconds
                1 => Some(rng.random_range(0..4_000_000_000i64) * 1_000_000),
                2 => Some(rng.random_range(0..4_000_000_000_000i64) * 1000),
                // before 1970 and after 9999: arrow's own formatter
                3 => Some(rng.random_range(-100_000_000_000_000_000i64..0)),
                4 => Some(YEAR_10000_US + rng.random_range(0..1_000_000_000_000i64)),
                _ => Some(rng.random_range(0..YEAR_10000_US)),
            })
            .collect();
        let dec: Vec<Option<i128>> = (0..n)
            .map(|i| match i % 5 {
                0 => None,
                1 => Some(rng.random_range(-1000..1000)),
                2 => Some(i128::MAX / (i as i128 + 1)),
                3 => Some(-(rng.random_range(0..i64::MAX) as i128) * 1_000_000_000),
                _ => Some(rng.random_range(0..10_000_000_000_000_000i128)),
            })
            .collect();
        let cols: Vec<(&str, ArrayRef)> = vec![
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from(ts.clone()).with_timezone("+00:00")),
            ),
            (
                "ts_utc",
                Arc::new(TimestampMicrosecondArray::from(ts.clone()).with_timezone("UTC")),
            ),
            // Not UTC and not zoned: arrow's own encoders.
            (
                "ts_local",
                Arc::new(TimestampMicrosecondArray::from(ts.clone()).with_timezone("+05:30")),
            ),
            ("ts_naive", Arc::new(TimestampMicrosecondArray::from(ts))),
            (
                "price",
                Arc::new(
                    Decimal128Array::from(dec.clone())
                        .with_precision_and_scale(38, 8)
                        .unwrap(),
                ),
            ),
            (
                "whole",
                Arc::new(
                    Decimal128Array::from(dec)
                        .with_precision_and_scale(38, 0)
                        .unwrap(),
                ),
            ),
            (
                "s",
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| Some(format!("q\"{i}"))),
                )),
            ),
            ("n", Arc::new(Int64Array::from_iter_values(0..n as i64))),
        ];
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[test]
    fn the_encoders_write_what_arrow_writes() {
        for seed in 0..4 {
            let b = batch(2000, seed);
            let ours = json_rows(std::slice::from_ref(&b), &roomy(), &far()).unwrap();
            let theirs = reference(std::slice::from_ref(&b));
            assert_eq!(ours.as_str(), theirs, "seed {seed}");
        }
    }

    #[test]
    fn halves_join_into_the_same_array() {
        // Over the parallel threshold, split across uneven batches.
        let batches = vec![batch(3001, 7), batch(1, 8), batch(2500, 9)];
        let ours = json_rows(&batches, &roomy(), &far()).unwrap();
        assert_eq!(ours.as_str(), reference(&batches));
        let v: serde_json::Value = serde_json::from_str(ours.as_str()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 5502);
    }

    #[test]
    fn decimals_keep_sign_and_every_digit() {
        let w = |v: i128, s: u32| {
            let mut o = Vec::new();
            write_decimal(v, s, &mut o);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(w(0, 8), "0.00000000");
        assert_eq!(w(-1, 8), "-0.00000001");
        assert_eq!(w(123_456_789, 8), "1.23456789");
        assert_eq!(w(-120, 0), "-120");
        let s = i128::MIN.to_string();
        assert_eq!(
            w(i128::MIN, 2),
            format!("{}.{}", &s[..s.len() - 2], &s[s.len() - 2..])
        );
    }

    #[test]
    fn no_rows_are_an_empty_array() {
        assert_eq!(json_rows(&[], &roomy(), &far()).unwrap().as_str(), "[]");
        let b = batch(10, 1).slice(0, 0);
        assert_eq!(json_rows(&[b], &roomy(), &far()).unwrap().as_str(), "[]");
    }

    #[test]
    fn the_bound_is_never_below_what_is_written() {
        let strings = StringArray::from_iter_values((0..300).map(|i| "\u{1}\"".repeat(i % 17)));
        let lists = ListArray::from_iter_primitive::<arrow::datatypes::Int64Type, _, _>(
            (0..300).map(|i| Some((0..i % 23).map(|v| Some(-v * 1_000_000_007)))),
        );
        let dict: arrow::array::DictionaryArray<arrow::datatypes::Int8Type> =
            (0..300).map(|i| ["a", "\u{0}bc"][i % 2]).collect();
        let odd = RecordBatch::try_from_iter([
            ("s", Arc::new(strings) as ArrayRef),
            ("l", Arc::new(lists) as ArrayRef),
            ("d", Arc::new(dict) as ArrayRef),
            (
                "b",
                Arc::new(BooleanArray::from(vec![false; 300])) as ArrayRef,
            ),
        ])
        .unwrap();
        for b in [batch(2000, 3), odd] {
            for (o, n) in [(0, b.num_rows()), (1, 1), (17, 100)] {
                let slice = b.slice(o, n);
                let bound = json_bound(&arrow::array::StructArray::from(slice.clone()).into_data());
                let written = json_rows(&[slice], &roomy(), &far()).unwrap().0.len();
                assert!(bound >= written, "bound {bound} < written {written}");
            }
        }
    }

    #[test]
    fn the_first_rows_do_not_size_the_buffer_past_the_pool() {
        // 65 rows of 100 KB, then 9,935 short ones: extrapolated from the
        // first 64 rows, the buffer would be a gigabyte. Within a 64 MiB
        // pool the answer (6.5 MB) is still written, exactly.
        let s = StringArray::from_iter_values((0..10_000).map(|i| {
            if i < 65 {
                "x".repeat(100_000)
            } else {
                "y".into()
            }
        }));
        let b = RecordBatch::try_from_iter([("s", Arc::new(s) as ArrayRef)]).unwrap();
        let ours = json_rows(std::slice::from_ref(&b), &budget(64 << 20), &far()).unwrap();
        assert_eq!(ours.as_str(), reference(&[b]));
    }

    #[test]
    fn one_row_larger_than_the_pool_is_refused_before_it_is_encoded() {
        // One row: a list of 10 million booleans, 1.25 MB in arrow and 60 MB
        // of JSON, against a 16 MiB pool.
        let values = BooleanArray::from(vec![false; 10_000_000]);
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Boolean, false)),
            arrow::buffer::OffsetBuffer::from_lengths([10_000_000]),
            Arc::new(values),
            None,
        );
        let b = RecordBatch::try_from_iter([("l", Arc::new(list) as ArrayRef)]).unwrap();
        let Err(e) = json_rows(&[b], &budget(16 << 20), &far()) else {
            panic!("a 60 MB row was written within a 16 MiB pool");
        };
        assert_eq!(e.code(), "unavailable", "{e}");
        assert!(e.to_string().contains("one row could take"), "{e}");
    }

    #[test]
    fn encoding_stops_once_cancelled() {
        let cancel = far();
        cancel.cancel();
        let e = json_rows(&[batch(10, 1)], &roomy(), &cancel)
            .err()
            .expect("cancelled");
        assert!(matches!(e, QueryError::Timeout(_)), "{e:?}");
    }
}
