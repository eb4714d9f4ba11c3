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
//! The text is written in parts of about `PART_BYTES`, and each part's
//! memory is reserved on the query memory (`super::budget`) before it is
//! allocated, from an upper bound of its rows' encoded size (`bounds`): an
//! answer never allocates past `api.max_memory_bytes`, however large its
//! values. The parts are sent as they are (HTTP streams them), so the
//! answer is never copied into one buffer. Between parts the encoder checks
//! the query's deadline.
//!
//! A 10,000-row answer is about 3 MB of text, so large answers are encoded
//! in two halves on two threads.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Decimal128Array, RecordBatch, StructArray, TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, TimeUnit};
use arrow::error::ArrowError;
use arrow::json::writer::{NullableEncoder, make_encoder};
use arrow::json::{Encoder, EncoderFactory, EncoderOptions};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::Datelike;
use datafusion::execution::memory_pool::MemoryReservation;

use super::budget::AnswerMemory;
use super::cancel::Cancel;
use crate::messages::query::QueryError;

/// Rows from which an answer is encoded on two threads.
const PARALLEL_ROWS: usize = 4096;

/// The most a part of the text may need by its rows' bounds, unless one
/// row alone needs more. Small enough that a part's worst case is a small
/// reservation; large enough that the parts are few.
const PART_BYTES: usize = 1 << 20;

/// A JSON array of row objects, as text in parts (to be concatenated), and
/// the reservation that counts them on the query memory.
pub struct JsonRows {
    pub(super) parts: Vec<Vec<u8>>,
    pub(super) memory: MemoryReservation,
}

impl JsonRows {
    /// The text in one string (a copy), for tests and tools.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.parts.concat()).into_owned()
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

/// What a JSON value takes at most, by type, when it is one of fixed width:
/// `false`, 20 digits of an i64 or u64, a float as arrow-json writes it,
/// a quoted decimal of up to 77 digits with sign and point, and temporal
/// values (or arrow's error text for one it cannot format), quoted.
fn fixed_bound(t: &DataType) -> Option<usize> {
    Some(match t {
        DataType::Null => 4,
        DataType::Boolean => 5,
        t if t.is_integer() => 20,
        t if t.is_floating() => 32,
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => 96,
        t if t.is_temporal() => 256,
        _ => return None,
    })
}

/// Bytes `b` takes inside a JSON string, as serde_json escapes it.
const fn escaped(b: u8) -> usize {
    match b {
        b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 2,
        0..0x20 => 6,
        _ => 1,
    }
}

const ESCAPED: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = escaped(i as u8) as u8;
        i += 1;
    }
    t
};

/// Strings up to this long are bounded at six bytes a byte (as if every
/// byte were escaped as `\u00XX`) without reading them, which keeps the
/// bounds cheap for an answer of many short values; longer ones are read,
/// so that a large value is not refused for escapes it does not have.
const SCAN_STRINGS_FROM: usize = 4096;

/// `s` as a JSON string, quotes included, at most.
fn string_bound(s: &[u8]) -> usize {
    if s.len() <= SCAN_STRINGS_FROM {
        2 + 6 * s.len()
    } else {
        2 + s
            .iter()
            .map(|&b| ESCAPED[b as usize] as usize)
            .sum::<usize>()
    }
}

/// Per row of `array`, at most how many bytes arrow-json (with this
/// module's encoders) writes for it: strings with their escapes
/// (`string_bound`), twice the bytes of binary (hex), the elements of lists, maps
/// and structs with their separators, and `fixed_bound` for the rest. A
/// null takes 4 (`null`).
fn bounds(array: &dyn Array) -> Result<Vec<usize>, QueryError> {
    let n = array.len();
    let null_or = |i: usize, v: usize| if array.is_null(i) { 4 } else { v };
    if let Some(w) = fixed_bound(array.data_type()) {
        return Ok(vec![w; n]);
    }
    // Per row, the sum over its range of child elements, each plus a comma.
    let elements = |child: &[usize], ranges: &mut dyn Iterator<Item = (usize, usize)>| {
        ranges
            .enumerate()
            .map(|(i, (from, to))| {
                null_or(i, 2 + child[from..to].iter().map(|b| b + 1).sum::<usize>())
            })
            .collect::<Vec<usize>>()
    };
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            (0..n)
                .map(|i| null_or(i, string_bound(a.value(i).as_bytes())))
                .collect()
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            (0..n)
                .map(|i| null_or(i, string_bound(a.value(i).as_bytes())))
                .collect()
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            (0..n)
                .map(|i| null_or(i, string_bound(a.value(i).as_bytes())))
                .collect()
        }
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            (0..n)
                .map(|i| null_or(i, 2 + 2 * a.value(i).len()))
                .collect()
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            (0..n)
                .map(|i| null_or(i, 2 + 2 * a.value(i).len()))
                .collect()
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            (0..n)
                .map(|i| null_or(i, 2 + 2 * a.value(i).len()))
                .collect()
        }
        DataType::FixedSizeBinary(w) => vec![(2 + 2 * (*w).max(0) as usize).max(4); n],
        DataType::List(_) => {
            let a = array.as_list::<i32>();
            let child = bounds(a.values().as_ref())?;
            let o = a.value_offsets();
            elements(
                &child,
                &mut o.windows(2).map(|w| (w[0] as usize, w[1] as usize)),
            )
        }
        DataType::LargeList(_) => {
            let a = array.as_list::<i64>();
            let child = bounds(a.values().as_ref())?;
            let o = a.value_offsets();
            elements(
                &child,
                &mut o.windows(2).map(|w| (w[0] as usize, w[1] as usize)),
            )
        }
        DataType::ListView(_) => {
            let a = array.as_list_view::<i32>();
            let child = bounds(a.values().as_ref())?;
            let (o, l) = (a.value_offsets(), a.value_sizes());
            elements(
                &child,
                &mut o
                    .iter()
                    .zip(l)
                    .map(|(&o, &l)| (o as usize, (o + l) as usize)),
            )
        }
        DataType::LargeListView(_) => {
            let a = array.as_list_view::<i64>();
            let child = bounds(a.values().as_ref())?;
            let (o, l) = (a.value_offsets(), a.value_sizes());
            elements(
                &child,
                &mut o
                    .iter()
                    .zip(l)
                    .map(|(&o, &l)| (o as usize, (o + l) as usize)),
            )
        }
        DataType::FixedSizeList(_, w) => {
            let a = array.as_fixed_size_list();
            let child = bounds(a.values().as_ref())?;
            let w = (*w).max(0) as usize;
            let start = a.offset() * w;
            elements(
                &child,
                &mut (0..n).map(|i| (start + i * w, start + (i + 1) * w)),
            )
        }
        DataType::Struct(fields) => {
            let a = array.as_struct();
            let mut total = vec![2usize; n];
            for (f, c) in fields.iter().zip(a.columns()) {
                // `"name":value,`
                let name = string_bound(f.name().as_bytes()) + 2;
                for (t, b) in total.iter_mut().zip(bounds(c.as_ref())?) {
                    *t += name + b;
                }
            }
            (0..n).map(|i| null_or(i, total[i])).collect()
        }
        DataType::Map(..) => {
            let a = array.as_map();
            let (k, v) = (bounds(a.keys().as_ref())?, bounds(a.values().as_ref())?);
            let entries: Vec<usize> = k.iter().zip(&v).map(|(k, v)| k + 1 + v).collect();
            let o = a.value_offsets();
            elements(
                &entries,
                &mut o.windows(2).map(|w| (w[0] as usize, w[1] as usize)),
            )
        }
        DataType::Dictionary(..) => {
            let a = array.as_any_dictionary();
            let values = bounds(a.values().as_ref())?;
            let keys = a.normalized_keys();
            (0..n)
                .map(|i| null_or(i, values.get(keys[i]).copied().unwrap_or(4)))
                .collect()
        }
        DataType::RunEndEncoded(..) => {
            // The second child holds the runs' values, whatever the type
            // of the run ends.
            let data = array.to_data();
            let values = match data.child_data().get(1) {
                Some(v) => bounds(arrow::array::make_array(v.clone()).as_ref())?,
                None => Vec::new(),
            };
            // Any row may be any run's value.
            vec![values.into_iter().max().unwrap_or(0).max(4); n]
        }
        other => {
            return Err(QueryError::Internal(format!(
                "no JSON size bound for a column of type {other}"
            )));
        }
    })
}

/// `batches`' rows as JSON objects separated by commas, in parts, each
/// part's bound reserved in `held` before it is allocated and the reserve
/// set to what it took after. Stops with `Timeout` between parts once the
/// query is cancelled.
fn encode(
    batches: &[RecordBatch],
    memory: &AnswerMemory,
    held: &MemoryReservation,
    cancel: &Cancel,
) -> Result<Vec<Vec<u8>>, QueryError> {
    let options = EncoderOptions::default()
        .with_explicit_nulls(true)
        .with_encoder_factory(Arc::new(AnswerEncoders));
    let mut parts = Vec::new();
    let mut first = true;
    for b in batches {
        let b = exact(b)?;
        if b.num_rows() == 0 {
            continue;
        }
        let rows = StructArray::from(b.clone());
        let field = Arc::new(Field::new_struct("", b.schema().fields().clone(), false));
        let mut encoder = make_encoder(&field, &rows, &options).map_err(QueryError::internal)?;
        let bounds = bounds(&rows)?;
        let mut i = 0;
        while i < bounds.len() {
            cancel.check()?;
            // Rows i..j, a comma each.
            let (mut j, mut need) = (i, 0usize);
            while j < bounds.len() && (j == i || need + bounds[j] < PART_BYTES) {
                need += bounds[j] + 1;
                j += 1;
            }
            memory.grow(held, need, "the answer's JSON text")?;
            let mut part = Vec::with_capacity(need);
            for idx in i..j {
                if !first {
                    part.push(b',');
                }
                first = false;
                encoder.encode(idx, &mut part);
            }
            debug_assert!(part.len() <= need, "a row outgrew its JSON bound");
            part.shrink_to_fit();
            match part.capacity().cmp(&need) {
                std::cmp::Ordering::Less => held.shrink(need - part.capacity()),
                std::cmp::Ordering::Greater => held.grow(part.capacity() - need),
                std::cmp::Ordering::Equal => {}
            }
            parts.push(part);
            i = j;
        }
    }
    Ok(parts)
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

/// Batches as a JSON array of row objects (nulls written out), counted on
/// the query memory, stopping with `Timeout` once `cancel` says so.
pub fn json_rows(
    batches: &[RecordBatch],
    memory: &AnswerMemory,
    cancel: &Cancel,
) -> Result<JsonRows, QueryError> {
    let started = std::time::Instant::now();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let held = memory.empty();
    let mut parts = vec![b"[".to_vec()];
    if rows >= PARALLEL_ROWS {
        let (a, b) = split_rows(batches, rows / 2);
        let (a, b) = std::thread::scope(|s| {
            // Named as a query thread: a panic in it fails this query only.
            let second = std::thread::Builder::new()
                .name(format!("{}-json", super::pool::THREAD_NAME))
                .spawn_scoped(s, || encode(&b, memory, &held, cancel));
            let first = encode(&a, memory, &held, cancel);
            let second = match second {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(QueryError::Internal("json encoder panicked".into()))),
                // No thread to be had: this one does both halves.
                Err(_) => encode(&b, memory, &held, cancel),
            };
            (first, second)
        });
        let (a, b) = (a?, b?);
        let both = !a.is_empty() && !b.is_empty();
        parts.extend(a);
        if both {
            parts.push(b",".to_vec());
        }
        parts.extend(b);
    } else {
        parts.extend(encode(batches, memory, &held, cancel)?);
    }
    parts.push(b"]".to_vec());
    // With the query's own timings (trades_in_order), where a slow answer
    // spent its time, for `RUST_LOG=ticklake::api=debug`.
    tracing::debug!(
        json_ms = started.elapsed().as_secs_f64() * 1000.0,
        rows,
        bytes = parts.iter().map(Vec::len).sum::<usize>(),
        "answer rows as json"
    );
    Ok(JsonRows {
        parts,
        memory: held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::json::writer::JsonArray;
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
    use rand::{Rng, SeedableRng};

    /// `batches` as text, with room to spare and no deadline near.
    fn json_text(batches: &[RecordBatch]) -> String {
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(usize::MAX / 2));
        let memory = AnswerMemory::new(&pool, usize::MAX / 2);
        let rows = json_rows(batches, &memory, &Cancel::after(3_600_000)).unwrap();
        assert_eq!(
            rows.memory.size(),
            rows.parts
                .iter()
                .filter(|p| !matches!(p.as_slice(), b"[" | b"," | b"]"))
                .map(Vec::capacity)
                .sum::<usize>(),
            "the reservation is what the rows' parts hold"
        );
        rows.text()
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
            let ours = json_text(std::slice::from_ref(&b));
            let theirs = reference(std::slice::from_ref(&b));
            assert_eq!(ours, theirs, "seed {seed}");
        }
    }

    #[test]
    fn halves_join_into_the_same_array() {
        // Over the parallel threshold, split across uneven batches.
        let batches = vec![batch(3001, 7), batch(1, 8), batch(2500, 9)];
        let ours = json_text(&batches);
        assert_eq!(ours, reference(&batches));
        let v: serde_json::Value = serde_json::from_str(&ours).unwrap();
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
        assert_eq!(json_text(&[]), "[]");
        let b = batch(10, 1).slice(0, 0);
        assert_eq!(json_text(&[b]), "[]");
    }

    /// Columns of every kind an answer can hold, nested ones too, with
    /// nulls, escapes and sliced offsets.
    fn wide_batch(n: usize, seed: u64) -> RecordBatch {
        use arrow::array::{
            BinaryArray, BooleanArray, DictionaryArray, Float64Array, ListArray, MapBuilder,
            StringBuilder, StructArray as Struct,
        };
        use arrow::datatypes::{Int8Type, Int32Type};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let text = |rng: &mut rand::rngs::StdRng| -> String {
            let len = rng.random_range(0..12);
            (0..len)
                .map(|_| match rng.random_range(0..6) {
                    0 => '"',
                    1 => '\\',
                    2 => char::from(rng.random_range(0u8..0x20)),
                    3 => 'é',
                    _ => 'x',
                })
                .collect()
        };
        let strings: Vec<Option<String>> = (0..n)
            .map(|i| (i % 4 != 0).then(|| text(&mut rng)))
            .collect();
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>((0..n).map(|i| {
            (i % 5 != 0).then(|| {
                (0..i % 4)
                    .map(|j| (j % 3 != 0).then_some(j as i32 * -7))
                    .collect::<Vec<_>>()
            })
        }));
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for i in 0..n {
            for j in 0..i % 3 {
                map.keys().append_value(format!("k\"{j}"));
                map.values().append_option((j != 1).then(|| text(&mut rng)));
            }
            map.append(i % 7 != 0).unwrap();
        }
        let dict: DictionaryArray<Int8Type> = (0..n)
            .map(|i| (i % 3 != 0).then(|| ["a", "b\n", "\u{1}"][i % 3]))
            .collect();
        let structs = Struct::from(vec![
            (
                Arc::new(Field::new("f\"", DataType::Float64, true)),
                Arc::new(Float64Array::from_iter(
                    (0..n).map(|i| (i % 2 == 0).then(|| -1.0e-300 * i as f64)),
                )) as ArrayRef,
            ),
            (
                Arc::new(Field::new("b", DataType::Boolean, true)),
                Arc::new(BooleanArray::from_iter(
                    (0..n).map(|i| (i % 3 != 1).then_some(i % 2 == 0)),
                )),
            ),
        ]);
        let cols: Vec<(&str, ArrayRef)> = vec![
            ("s", Arc::new(StringArray::from(strings))),
            ("list", Arc::new(list)),
            ("map", Arc::new(map.finish())),
            ("dict", Arc::new(dict)),
            ("struct", Arc::new(structs)),
            (
                "bin",
                Arc::new(BinaryArray::from_iter(
                    (0..n).map(|i| (i % 6 != 0).then(|| vec![0xffu8; i % 9])),
                )),
            ),
        ];
        let b = RecordBatch::try_from_iter(cols).unwrap();
        // Sliced: offsets that do not start at zero.
        b.slice(1, n - 2)
    }

    /// No row's JSON text is longer than its bound, for every column type,
    /// so a part never outgrows the memory reserved for it.
    #[test]
    fn every_row_fits_its_bound() {
        let options = EncoderOptions::default()
            .with_explicit_nulls(true)
            .with_encoder_factory(Arc::new(AnswerEncoders));
        let runs = RecordBatch::try_from_iter(vec![(
            "r",
            Arc::new(
                arrow::array::RunArray::<arrow::datatypes::Int32Type>::try_new(
                    &arrow::array::Int32Array::from(vec![2, 5, 9]),
                    &StringArray::from(vec![Some("\"q\""), None, Some("long\u{1}")]),
                )
                .unwrap(),
            ) as ArrayRef,
        )])
        .unwrap();
        for b in [wide_batch(300, 1), wide_batch(300, 2), batch(500, 3), runs] {
            let b = exact(&b).unwrap();
            let rows = StructArray::from(b.clone());
            let field = Arc::new(Field::new_struct("", b.schema().fields().clone(), false));
            let mut encoder = make_encoder(&field, &rows, &options).unwrap();
            let bounds = bounds(&rows).unwrap();
            assert_eq!(bounds.len(), b.num_rows());
            for (i, bound) in bounds.iter().enumerate() {
                let mut out = Vec::new();
                encoder.encode(i, &mut out);
                assert!(
                    out.len() <= *bound,
                    "row {i}: {} bytes over a bound of {bound}: {}",
                    out.len(),
                    String::from_utf8_lossy(&out)
                );
            }
        }
        // The text is still what arrow writes.
        let b = wide_batch(50, 4);
        assert_eq!(json_text(std::slice::from_ref(&b)), reference(&[b]));
    }

    /// An answer larger than what is left of the query memory fails with
    /// the limit named, before its text is allocated, and gives back what
    /// it had reserved.
    #[test]
    fn an_answer_past_the_memory_limit_fails_and_frees_its_reservation() {
        // One row of 3 MB: one part, reserved whole before it is written.
        let big = RecordBatch::try_from_iter(vec![(
            "s",
            Arc::new(StringArray::from(vec!["x".repeat(3 << 20)])) as ArrayRef,
        )])
        .unwrap();
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(2 << 20));
        let memory = AnswerMemory::new(&pool, 2 << 20);
        let cancel = Cancel::after(3_600_000);
        let e = json_rows(std::slice::from_ref(&big), &memory, &cancel)
            .err()
            .expect("over the limit");
        assert!(
            matches!(&e, QueryError::OverMemory(m) if m.contains("api.max_memory_bytes")),
            "{e:?}"
        );
        assert_eq!(pool.reserved(), 0);
        // With room, the same answer is written and counted.
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(8 << 20));
        let memory = AnswerMemory::new(&pool, 8 << 20);
        let rows = json_rows(std::slice::from_ref(&big), &memory, &cancel).unwrap();
        assert!(pool.reserved() >= (3 << 20) + 8);
        drop(rows);
        assert_eq!(pool.reserved(), 0);
    }

    /// A pool that cancels the query when the answer reserves its `at`-th
    /// part: the encoder must stop at the next part.
    #[derive(Debug)]
    struct CancelOnGrow {
        inner: GreedyMemoryPool,
        grows: std::sync::atomic::AtomicUsize,
        at: usize,
        cancel: Cancel,
    }

    impl MemoryPool for CancelOnGrow {
        fn grow(&self, r: &MemoryReservation, n: usize) {
            self.inner.grow(r, n)
        }

        fn shrink(&self, r: &MemoryReservation, n: usize) {
            self.inner.shrink(r, n)
        }

        fn try_grow(&self, r: &MemoryReservation, n: usize) -> datafusion::error::Result<()> {
            use std::sync::atomic::Ordering;
            if self.grows.fetch_add(1, Ordering::Relaxed) + 1 == self.at {
                self.cancel.cancel();
            }
            self.inner.try_grow(r, n)
        }

        fn reserved(&self) -> usize {
            self.inner.reserved()
        }
    }

    #[test]
    fn encoding_stops_at_the_next_part_once_cancelled() {
        // Ten rows of 600 KB: a part each.
        let rows: Vec<RecordBatch> = (0..10)
            .map(|_| {
                RecordBatch::try_from_iter(vec![(
                    "s",
                    Arc::new(StringArray::from(vec!["y".repeat(600 << 10)])) as ArrayRef,
                )])
                .unwrap()
            })
            .collect();
        let cancel = Cancel::after(3_600_000);
        let pool = Arc::new(CancelOnGrow {
            inner: GreedyMemoryPool::new(1 << 30),
            grows: Default::default(),
            at: 3,
            cancel: cancel.clone(),
        });
        let dyn_pool: Arc<dyn MemoryPool> = pool.clone();
        let memory = AnswerMemory::new(&dyn_pool, 1 << 30);
        let e = json_rows(&rows, &memory, &cancel).err().expect("cancelled");
        assert!(matches!(e, QueryError::Timeout(_)), "{e:?}");
        assert_eq!(
            pool.grows.load(std::sync::atomic::Ordering::Relaxed),
            3,
            "the part reserved when the query was cancelled is the last"
        );
        assert_eq!(dyn_pool.reserved(), 0, "what was written is given back");
    }

    /// Rows that take little in arrow and much in JSON, sliced: each row's
    /// bound covers what is written for it.
    #[test]
    fn escapes_lists_and_dictionaries_fit_their_bounds() {
        use arrow::array::{BooleanArray, DictionaryArray, ListArray};
        let strings = StringArray::from_iter_values((0..300).map(|i| "\u{1}\"".repeat(i % 17)));
        let lists = ListArray::from_iter_primitive::<arrow::datatypes::Int64Type, _, _>(
            (0..300).map(|i| Some((0..i % 23).map(|v| Some(-v * 1_000_000_007)))),
        );
        let dict: DictionaryArray<arrow::datatypes::Int8Type> =
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
        for (o, n) in [(0, 300), (1, 1), (17, 100)] {
            let slice = odd.slice(o, n);
            let rows = StructArray::from(slice.clone());
            let bound: usize = bounds(&rows).unwrap().iter().map(|b| b + 1).sum();
            let written = json_text(std::slice::from_ref(&slice)).len();
            assert!(bound + 2 >= written, "bound {bound} < written {written}");
            assert_eq!(json_text(std::slice::from_ref(&slice)), reference(&[slice]));
        }
    }

    /// 65 rows of 100 KB, then 9,935 short ones (an answer buffer once
    /// sized from its first 64 rows asked for a gigabyte): within a 64 MiB
    /// pool the 6.5 MB answer is written, exactly.
    #[test]
    fn large_first_rows_do_not_size_the_answer() {
        let s = StringArray::from_iter_values((0..10_000).map(|i| {
            if i < 65 {
                "x".repeat(100_000)
            } else {
                "y".into()
            }
        }));
        let b = RecordBatch::try_from_iter([("s", Arc::new(s) as ArrayRef)]).unwrap();
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(64 << 20));
        let memory = AnswerMemory::new(&pool, 64 << 20);
        let rows = json_rows(std::slice::from_ref(&b), &memory, &Cancel::after(3_600_000)).unwrap();
        assert_eq!(rows.text(), reference(&[b]));
    }

    /// One row whose JSON is far larger than its arrow (a list of ten
    /// million booleans: 1.25 MB, and 60 MB of text) is refused before it
    /// is encoded when the pool cannot hold its text.
    #[test]
    fn one_row_past_the_pool_is_refused_before_it_is_encoded() {
        use arrow::array::{BooleanArray, ListArray};
        let values = BooleanArray::from(vec![false; 10_000_000]);
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Boolean, false)),
            arrow::buffer::OffsetBuffer::from_lengths([10_000_000]),
            Arc::new(values),
            None,
        );
        let b = RecordBatch::try_from_iter([("l", Arc::new(list) as ArrayRef)]).unwrap();
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(16 << 20));
        let memory = AnswerMemory::new(&pool, 16 << 20);
        let Err(e) = json_rows(&[b], &memory, &Cancel::after(3_600_000)) else {
            panic!("a 60 MB row was written within a 16 MiB pool");
        };
        assert_eq!(e.code(), "memory_limit", "{e}");
        assert!(e.to_string().contains("JSON text"), "{e}");
        assert_eq!(pool.reserved(), 0);
    }
}
