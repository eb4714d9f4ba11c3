//! Avro for exactly one schema, `TradeV2` (`avro::TRADE_SCHEMA_JSON`),
//! written and read straight between the struct and the bytes. The generic
//! path through apache-avro's `Value` tree costs dozens of allocations per
//! trade; this one appends to the caller's buffer and reads from a slice.
//! The tests below hold it to apache-avro's writer and reader, byte for
//! byte and value for value, and the fuzz target (`tests/fuzz.rs`) does
//! the same on mutated records.
//!
//! `AvroError` lives here rather than beside `Codec` in `avro`, which
//! builds on this module: the import then runs one way only.

use crate::model::{AssetClass, Dec8, Side, TradeV2, TradeView};

#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("record too short for the confluent wire format ({0} bytes)")]
    TooShort(usize),
    #[error("bad magic byte {0}; expected 0 (confluent wire format)")]
    Magic(u8),
    #[error("unknown schema id {0}")]
    UnknownSchema(u32),
    #[error("avro: {0}")]
    Avro(#[from] Box<apache_avro::Error>),
    #[error("field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

/// The record ends inside a field.
const CUT: &str = "the record ends inside this field";
const VARINT_TOO_LONG: &str = "a varint of more than 10 bytes";
/// The record ends where a union's branch index should be. apache-avro's
/// reader takes that union, and every one after it, as null; a record cut
/// short is not a record with nulls, so it is refused here.
pub const UNION_CUT: &str = "the record ends where this union begins";
/// The tenth byte of a varint carries bits past the 64th. apache-avro's
/// reader drops them and reads a different number than was written.
/// The record ends inside a nullable string's value: apache-avro's reader
/// takes the union as null there too, and loses the part that was read.
pub const UNION_BRANCH_CUT: &str = "the record ends inside this union's value";
pub const VARINT_OVERFLOW: &str = "a varint of more than 64 bits";
/// The reasons for which `decode_trade_body` refuses a record that
/// apache-avro's reader takes. Everywhere else the two agree.
pub const STRICTER_THAN_APACHE_AVRO: [&str; 3] = [UNION_CUT, UNION_BRANCH_CUT, VARINT_OVERFLOW];

fn fault(field: &'static str, reason: impl Into<String>) -> AvroError {
    AvroError::Field {
        field,
        reason: reason.into(),
    }
}

/// Appends a framed `TradeV2` to `buf`: the Confluent header (magic 0, the
/// schema id big-endian), then the Avro datum, the same bytes as
/// apache-avro's writer gives, except that `vendor_data`'s entries come in
/// key order (apache-avro's map is a `HashMap`, written in its own order).
pub fn encode_trade_into(buf: &mut Vec<u8>, schema_id: u32, t: &TradeV2) {
    // One reservation for the whole record, so a fresh buffer allocates
    // once and a reused one not at all.
    buf.reserve(encoded_len_bound(t));
    buf.push(0);
    buf.extend_from_slice(&schema_id.to_be_bytes());
    put_str(buf, &t.message_id);
    put_str(buf, &t.trade_id);
    put_str(buf, &t.symbol);
    put_str(buf, &t.exchange);
    put_long(buf, asset_index(t.asset_class));
    put_long(buf, t.timestamp_us);
    put_long(buf, t.ingestion_timestamp_us);
    put_decimal(buf, t.price);
    put_decimal(buf, t.quantity);
    put_str(buf, &t.currency);
    put_long(buf, side_index(t.side));
    // apache-avro writes an array as one block, and an empty one as the
    // end marker alone; so does this.
    if !t.trade_conditions.is_empty() {
        put_long(buf, t.trade_conditions.len() as i64);
        for c in &t.trade_conditions {
            put_str(buf, c);
        }
    }
    buf.push(0);
    put_nullable_long(buf, t.source_sequence);
    put_nullable_long(buf, t.platform_sequence);
    match &t.vendor_data {
        None => put_long(buf, 0),
        Some(m) => {
            put_long(buf, 1);
            if !m.is_empty() {
                put_long(buf, m.len() as i64);
                for (k, v) in m {
                    put_str(buf, k);
                    put_str(buf, v);
                }
            }
            buf.push(0);
        }
    }
    match &t.instrument {
        None => put_long(buf, 0),
        Some(i) => {
            put_long(buf, 1);
            put_str(buf, i);
        }
    }
}

/// At least the encoded size of `t`: every varint counted at its longest,
/// 10 bytes.
fn encoded_len_bound(t: &TradeV2) -> usize {
    let text = |s: &String| s.len() + 10;
    let ids = text(&t.message_id) + text(&t.trade_id) + text(&t.symbol);
    let strings = ids + text(&t.exchange) + text(&t.currency);
    // the header, two enums, two timestamps, two decimals of 8 bytes, the
    // array's count and end, two nullable longs, the map's index, count
    // and end, the instrument's index
    (5 + 2 * 10 + 2 * 10 + 2 * 9 + 11 + 2 * 11 + 12 + 1)
        + strings
        + t.instrument.as_ref().map_or(0, text)
        + t.trade_conditions.iter().map(text).sum::<usize>()
        + (t.vendor_data.iter().flatten())
            .map(|(k, v)| text(k) + text(v))
            .sum::<usize>()
}

fn put_long(buf: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z > 0x7f {
        buf.push(z as u8 | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_long(buf, s.len() as i64);
    buf.extend_from_slice(s.as_bytes());
}

/// Always 8 bytes: the reference writes `Decimal::from(unscaled.to_be_bytes())`,
/// and apache-avro writes a `bytes` decimal sign-extended to the length it
/// was made from, not at its shortest.
fn put_decimal(buf: &mut Vec<u8>, d: Dec8) {
    put_long(buf, 8);
    buf.extend_from_slice(&d.unscaled().to_be_bytes());
}

fn put_nullable_long(buf: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => put_long(buf, 0),
        Some(x) => {
            put_long(buf, 1);
            put_long(buf, x);
        }
    }
}

// Enum indexes are the positions of the symbols in the schema; the tests
// check both directions against apache-avro for every variant.

fn asset_index(a: AssetClass) -> i64 {
    match a {
        AssetClass::Crypto => 0,
        AssetClass::Equities => 1,
        AssetClass::Futures => 2,
        AssetClass::Fx => 3,
        AssetClass::Other => 4,
    }
}

fn asset_at(i: i64) -> Option<AssetClass> {
    Some(match i {
        0 => AssetClass::Crypto,
        1 => AssetClass::Equities,
        2 => AssetClass::Futures,
        3 => AssetClass::Fx,
        4 => AssetClass::Other,
        _ => return None,
    })
}

fn side_index(s: Side) -> i64 {
    match s {
        Side::Buy => 0,
        Side::Sell => 1,
        Side::SellShort => 2,
        Side::Unknown => 3,
    }
}

fn side_at(i: i64) -> Option<Side> {
    Some(match i {
        0 => Side::Buy,
        1 => Side::Sell,
        2 => Side::SellShort,
        3 => Side::Unknown,
        _ => return None,
    })
}

/// Reads a `TradeV2` datum: the body after the Confluent header, which
/// `unframe` strips. Bytes after the datum are ignored, as apache-avro's
/// reader (and Confluent's deserializers) ignore them.
///
/// Nothing is allocated before the bytes it stands for are known to be
/// there, so a hostile length or count costs an error, not memory.
///
/// `version` is the schema version the datum was written under: version 1
/// ends at `vendor_data`, version 2 adds `instrument`.
pub fn decode_trade_body(body: &[u8], version: u8) -> Result<TradeV2, AvroError> {
    decode_trade_view(body, version).map(|v| v.to_owned_trade())
}

/// Reads a `TradeV2` datum in place, as [`decode_trade_body`] does (which
/// is this, then a copy): the same checks, the same errors, and no text
/// copied.
pub fn decode_trade_view(body: &[u8], version: u8) -> Result<TradeView<'_>, AvroError> {
    let mut r = Reader { rest: body };
    // Struct fields are evaluated in the order written: the schema's.
    Ok(TradeView {
        message_id: r.string("message_id")?,
        trade_id: r.string("trade_id")?,
        symbol: r.string("symbol")?,
        exchange: r.string("exchange")?,
        asset_class: r.enum_of("asset_class", asset_at)?,
        timestamp_us: r.long("timestamp")?,
        ingestion_timestamp_us: r.long("ingestion_timestamp")?,
        price: r.decimal("price")?,
        quantity: r.decimal("quantity")?,
        currency: r.string("currency")?,
        side: r.enum_of("side", side_at)?,
        trade_conditions: r.conditions()?,
        source_sequence: r.nullable_long("source_sequence")?,
        platform_sequence: r.nullable_long("platform_sequence")?,
        vendor_data: r.vendor_data()?,
        instrument: if version >= 2 {
            r.nullable_string("instrument")?
        } else {
            None
        },
    })
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut z = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.rest.split_first().ok_or(CUT)?;
            self.rest = rest;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(VARINT_OVERFLOW);
            }
            z |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(z);
            }
        }
        Err(VARINT_TOO_LONG)
    }

    fn long(&mut self, field: &'static str) -> Result<i64, AvroError> {
        let z = self.varint().map_err(|r| fault(field, r))?;
        Ok(zag(z))
    }

    /// `n` bytes, if there are that many left.
    fn take(&mut self, n: i64, field: &'static str) -> Result<&'a [u8], AvroError> {
        let n = usize::try_from(n).map_err(|_| fault(field, format!("negative length {n}")))?;
        let (taken, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or_else(|| fault(field, CUT))?;
        self.rest = rest;
        Ok(taken)
    }

    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], AvroError> {
        let n = self.long(field)?;
        self.take(n, field)
    }

    fn string(&mut self, field: &'static str) -> Result<&'a str, AvroError> {
        let b = self.bytes(field)?;
        // Nearly all of a trade's text is ASCII (ids, symbols, names,
        // digits), and a row holds a dozen strings of a few bytes: checked
        // for ASCII a word at a time, one costs half of what the general
        // UTF-8 validation does (5 against 10.5 ns, measured on a trade's
        // strings); that validation was 7 % of the lake thread's samples.
        if b.is_ascii() {
            // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(b) });
        }
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s),
            Err(e) => Err(fault(field, format!("invalid UTF-8: {e}"))),
        }
    }

    fn enum_of<T>(
        &mut self,
        field: &'static str,
        at: fn(i64) -> Option<T>,
    ) -> Result<T, AvroError> {
        let i = self.long(field)?;
        at(i).ok_or_else(|| fault(field, format!("unknown enum index {i}")))
    }

    /// apache-avro sign-extends a decimal of any length and takes it if
    /// the value fits; so does this, up to the 16 bytes of an i128. An
    /// empty one it refuses (it cannot write zero back in zero bytes), and
    /// so does this.
    fn decimal(&mut self, field: &'static str) -> Result<Dec8, AvroError> {
        let b = self.bytes(field)?;
        let negative = match b.first() {
            None => return Err(fault(field, "decimal of 0 bytes")),
            Some(_) if b.len() > 16 => {
                return Err(fault(field, format!("decimal of {} bytes", b.len())));
            }
            Some(first) => first & 0x80 != 0,
        };
        // Bits shifted out of the top are the sign fill, never the value:
        // at most 16 bytes are shifted in.
        let unscaled = b.iter().fold(if negative { -1i128 } else { 0 }, |v, &x| {
            (v << 8) | i128::from(x)
        });
        let unscaled = i64::try_from(unscaled)
            .map_err(|_| fault(field, format!("{unscaled} overflows decimal(18,8)")))?;
        Dec8::from_unscaled(unscaled).map_err(|e| fault(field, e.to_string()))
    }

    /// The count of the next block of an array or map, 0 at the end. A
    /// negative count is followed by the block's size in bytes, for a
    /// reader that skips; this one decodes every item, so the size is read
    /// past, as apache-avro's reader does. A count that the bytes left
    /// cannot hold (`min_item` bytes an item) is refused before anything is
    /// reserved for it.
    fn block_count(&mut self, field: &'static str, min_item: usize) -> Result<usize, AvroError> {
        let n = self.long(field)?;
        let n = if n < 0 {
            self.long(field)?;
            n.checked_neg()
                .ok_or_else(|| fault(field, format!("block count {n} overflows")))?
        } else {
            n
        };
        match usize::try_from(n) {
            Ok(n) if n <= self.rest.len() / min_item => Ok(n),
            _ => Err(fault(field, CUT)),
        }
    }

    fn conditions(&mut self) -> Result<Vec<&'a str>, AvroError> {
        const FIELD: &str = "trade_conditions";
        let mut items = Vec::new();
        loop {
            // an item is a string: at least its length byte
            let n = self.block_count(FIELD, 1)?;
            if n == 0 {
                return Ok(items);
            }
            items.reserve(n);
            for _ in 0..n {
                items.push(self.string(FIELD)?);
            }
        }
    }

    fn union_index(&mut self, field: &'static str) -> Result<i64, AvroError> {
        match self.varint() {
            Ok(z) => Ok(zag(z)),
            Err(CUT) => Err(fault(field, UNION_CUT)),
            Err(r) => Err(fault(field, r)),
        }
    }

    fn nullable_long(&mut self, field: &'static str) -> Result<Option<i64>, AvroError> {
        match self.union_index(field)? {
            0 => Ok(None),
            1 => self.long(field).map(Some),
            i => Err(fault(field, format!("unknown union branch {i}"))),
        }
    }

    fn nullable_string(&mut self, field: &'static str) -> Result<Option<&'a str>, AvroError> {
        match self.union_index(field)? {
            0 => Ok(None),
            1 => match self.string(field) {
                Err(AvroError::Field { reason, .. }) if reason == CUT => {
                    Err(fault(field, UNION_BRANCH_CUT))
                }
                other => other.map(Some),
            },
            i => Err(fault(field, format!("unknown union branch {i}"))),
        }
    }

    fn vendor_data(&mut self) -> Result<Option<Vec<(&'a str, &'a str)>>, AvroError> {
        const FIELD: &str = "vendor_data";
        match self.union_index(FIELD)? {
            0 => return Ok(None),
            1 => {}
            i => return Err(fault(FIELD, format!("unknown union branch {i}"))),
        }
        let mut entries: Vec<(&'a str, &'a str)> = Vec::new();
        loop {
            // an entry is two strings: at least their two length bytes
            let n = self.block_count(FIELD, 2)?;
            if n == 0 {
                break;
            }
            entries.reserve(n);
            for _ in 0..n {
                let k = self.string(FIELD)?;
                let v = self.string(FIELD)?;
                entries.push((k, v));
            }
        }
        // Our encoder writes each key once, in order: taken as they are.
        // Any other writer's entries are sorted, in O(n log n) whatever
        // their order, a key written twice keeping its last value, as
        // apache-avro's reader keeps it.
        if entries.windows(2).all(|w| w[0].0 < w[1].0) {
            return Ok(Some(entries));
        }
        // Stable: a key's copies stay in the order written, the last kept.
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let mut unique: Vec<(&'a str, &'a str)> = Vec::with_capacity(entries.len());
        for e in entries {
            match unique.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => unique.push(e),
            }
        }
        Ok(Some(unique))
    }
}

fn zag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use apache_avro::writer::datum::GenericDatumWriter;
    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;
    use crate::kafka::avro::{Codec, trade_schema_v1};
    use crate::model::VendorData;

    const ID: u32 = 7;
    const HEADER: [u8; 5] = [0, 0, 0, 0, 7];
    /// decimal(18,8)'s ends: 10^18 - 1 unscaled.
    const MAX_UNSCALED: i64 = 999_999_999_999_999_999;

    static CODEC: LazyLock<Codec> = LazyLock::new(|| Codec::new(ID, ID + 1).unwrap());

    fn direct(t: &TradeV2) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_trade_into(&mut buf, ID, t);
        buf
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        [&HEADER[..], body].concat()
    }

    /// apache-avro's other writer, its serde one: it writes a map's entries
    /// in the order the map gives them (a `BTreeMap`'s, here), so unlike
    /// the `Value` writer it can be held to the direct bytes for maps of
    /// any size.
    fn serde_reference(t: &TradeV2) -> Vec<u8> {
        struct Decimal8(Dec8);
        impl Serialize for Decimal8 {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0.unscaled().to_be_bytes())
            }
        }
        // A record is written field by field in the schema's order, so a
        // tuple in that order serializes as one: version 1's fields, then
        // `instrument` on its own (a record's bytes are its fields' bytes
        // one after another). A tuple of all sixteen, or a struct, goes
        // through apache-avro's `Value`, whose map is a `HashMap`.
        // In key order, as the map's own order is.
        let vendor: Option<std::collections::BTreeMap<&String, &String>> =
            t.vendor_data.as_ref().map(|m| m.iter().collect());
        let row = (
            &t.message_id,
            &t.trade_id,
            &t.symbol,
            &t.exchange,
            t.asset_class,
            t.timestamp_us,
            t.ingestion_timestamp_us,
            Decimal8(t.price),
            Decimal8(t.quantity),
            &t.currency,
            t.side,
            &t.trade_conditions,
            t.source_sequence,
            t.platform_sequence,
            &vendor,
        );
        let v1 = GenericDatumWriter::builder(trade_schema_v1())
            .build()
            .unwrap();
        let mut body = v1.write_ser_to_vec(&row).unwrap();
        let union = apache_avro::Schema::parse_str(r#"["null", "string"]"#).unwrap();
        let instrument = GenericDatumWriter::builder(&union).build().unwrap();
        body.extend(instrument.write_ser_to_vec(&t.instrument).unwrap());
        framed(&body)
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[ -~]{1,12}",
            "[aé€中😀\u{0}\u{7f}]{1,6}",
            any::<String>(),
        ]
    }

    fn long() -> impl Strategy<Value = i64> {
        let edges = [i64::MIN, i64::MIN + 1, -65, -64, -1, 0, 63, 64, i64::MAX];
        prop_oneof![prop::sample::select(edges.to_vec()), any::<i64>()]
    }

    fn dec8() -> impl Strategy<Value = Dec8> {
        let m = MAX_UNSCALED;
        let ends = [-m, 1 - m, -1, 0, 1, m - 1, m];
        prop_oneof![prop::sample::select(ends.to_vec()), -m..=m]
            .prop_map(|u| Dec8::from_unscaled(u).unwrap())
    }

    fn vendor() -> impl Strategy<Value = Option<VendorData>> {
        prop_oneof![
            Just(None),
            Just(Some(VendorData::new())),
            prop::collection::btree_map(text(), text(), 1..=1)
                .prop_map(|m| Some(m.into_iter().collect())),
            prop::collection::btree_map(text(), text(), 2..8)
                .prop_map(|m| Some(m.into_iter().collect())),
        ]
    }

    prop_compose! {
        fn trade()(
            s in (text(), text(), text(), text(), text()),
            asset_class in prop::sample::select(AssetClass::ALL.to_vec()),
            side in prop::sample::select(Side::ALL.to_vec()),
            ts in (long(), long()),
            price in dec8(),
            quantity in dec8(),
            trade_conditions in prop::collection::vec(text(), 0..4),
            seq in (prop::option::of(long()), prop::option::of(long())),
            vendor_data in vendor(),
            instrument in prop::option::of(text()),
        ) -> TradeV2 {
            TradeV2 {
                message_id: s.0,
                trade_id: s.1,
                symbol: s.2,
                exchange: s.3,
                asset_class,
                timestamp_us: ts.0,
                ingestion_timestamp_us: ts.1,
                price,
                quantity,
                currency: s.4,
                side,
                trade_conditions,
                source_sequence: seq.0,
                platform_sequence: seq.1,
                vendor_data,
                instrument,
            }
        }
    }

    /// Both decoders on one body. Where apache-avro's reader refuses, the
    /// direct one must refuse; where both read, they must agree; the direct
    /// one may refuse more, for the reasons it lists and no others.
    fn agree(body: &[u8]) -> Result<Option<TradeV2>, TestCaseError> {
        let reference = CODEC.decode_trade_reference(&framed(body));
        match (reference, decode_trade_body(body, 2)) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a, &b);
                Ok(Some(b))
            }
            (Err(_), Err(_)) => Ok(None),
            (Err(e), Ok(t)) => Err(TestCaseError::fail(format!(
                "apache-avro refuses ({e}) what the direct decoder reads: {t:?}"
            ))),
            (Ok(t), Err(e)) => {
                let stricter = matches!(&e, AvroError::Field { reason, .. }
                    if STRICTER_THAN_APACHE_AVRO.contains(&reason.as_str()));
                prop_assert!(
                    stricter,
                    "direct refuses ({e}) what apache-avro reads: {t:?}"
                );
                Ok(None)
            }
        }
    }

    proptest! {
        #[test]
        fn direct_bytes_are_apache_avros_bytes(t in trade()) {
            let bytes = direct(&t);
            prop_assert!(bytes.len() <= encoded_len_bound(&t));
            prop_assert_eq!(&bytes, &serde_reference(&t));
            let reference = CODEC.encode_trade_reference(&t).unwrap();
            if t.vendor_data.as_ref().is_none_or(|m| m.len() < 2) {
                prop_assert_eq!(&bytes, &reference);
            } else {
                // The `Value` writer's map order is its HashMap's: the same
                // bytes up to the map's entries, the same length, the same
                // record.
                let mut entries = Vec::new();
                for (k, v) in t.vendor_data.iter().flatten() {
                    put_str(&mut entries, k);
                    put_str(&mut entries, v);
                }
                // The map's entries and end marker, then `instrument`.
                let mut after = Vec::new();
                match &t.instrument {
                    None => put_long(&mut after, 0),
                    Some(i) => {
                        put_long(&mut after, 1);
                        put_str(&mut after, i);
                    }
                }
                let at = bytes.len() - entries.len() - 1 - after.len();
                prop_assert_eq!(bytes.len(), reference.len());
                prop_assert_eq!(&bytes[..at], &reference[..at]);
                prop_assert_eq!(&bytes[bytes.len() - after.len()..], &after[..]);
                prop_assert_eq!(&reference[reference.len() - after.len()..], &after[..]);
                prop_assert_eq!(CODEC.decode_trade_reference(&reference).unwrap(), t);
            }
        }

        #[test]
        fn both_decoders_read_both_encoders_back(t in trade()) {
            for bytes in [direct(&t), CODEC.encode_trade_reference(&t).unwrap()] {
                prop_assert_eq!(agree(&bytes[5..])?, Some(t.clone()));
            }
        }

        /// What the lake's consumer reads in place is the trade's own view
        /// of itself, field for field, whichever encoder wrote it.
        #[test]
        fn a_record_read_in_place_is_the_trades_view(t in trade()) {
            for bytes in [direct(&t), CODEC.encode_trade_reference(&t).unwrap()] {
                prop_assert_eq!(CODEC.decode_trade_view(&bytes).unwrap(), t.view());
            }
        }

        #[test]
        fn broken_records_never_panic_and_errors_agree(
            t in trade(),
            ops in prop::collection::vec((0u8..4, any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut body = direct(&t).split_off(5);
            for (op, at, byte) in ops {
                let i = at % (body.len() + 1);
                match op {
                    0 if i < body.len() => body[i] ^= byte.max(1),
                    1 => body.insert(i, byte),
                    2 if i < body.len() => {
                        body.remove(i);
                    }
                    _ => body.truncate(i),
                }
            }
            agree(&body)?;
        }

        #[test]
        fn random_bodies_never_panic_and_errors_agree(
            body in prop::collection::vec(any::<u8>(), 0..96),
        ) {
            agree(&body)?;
        }
    }

    type Put = fn(&mut Vec<u8>);

    /// A small valid record field by field, so a test can put odd bytes in
    /// one field and keep the others.
    const FIELDS: [(&str, Put); 16] = [
        ("message_id", |b| put_str(b, "m")),
        ("trade_id", |b| put_str(b, "t")),
        ("symbol", |b| put_str(b, "BTCUSDT")),
        ("exchange", |b| put_str(b, "BINANCE")),
        ("asset_class", |b| put_long(b, 3)),
        ("timestamp", |b| put_long(b, -1)),
        ("ingestion_timestamp", |b| put_long(b, 2)),
        // 8 bytes, as the reference writes them: -5 and 6
        ("price", |b| {
            b.extend([16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb])
        }),
        ("quantity", |b| b.extend([16, 0, 0, 0, 0, 0, 0, 0, 6])),
        ("currency", |b| put_str(b, "USDT")),
        ("side", |b| put_long(b, 2)),
        ("trade_conditions", |b| b.push(0)),
        ("source_sequence", |b| b.push(0)),
        ("platform_sequence", |b| b.push(0)),
        ("vendor_data", |b| b.push(0)),
        ("instrument", |b| b.push(0)),
    ];

    /// The small record with `field`'s bytes replaced by `bytes`.
    fn with(field: &str, bytes: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, put) in FIELDS {
            if name == field {
                b.extend_from_slice(bytes);
            } else {
                put(&mut b);
            }
        }
        b
    }

    fn long_bytes(n: i64) -> Vec<u8> {
        let mut b = Vec::new();
        put_long(&mut b, n);
        b
    }

    /// Both decoders read `body` alike; the record.
    fn read(body: &[u8]) -> TradeV2 {
        agree(body).unwrap().expect("both decoders read the record")
    }

    /// The field and the reason for which the direct decoder refuses `body`.
    fn refusal(body: &[u8]) -> (&'static str, String) {
        match decode_trade_body(body, 2) {
            Err(AvroError::Field { field, reason }) => (field, reason),
            other => panic!("{other:?}"),
        }
    }

    /// Both decoders refuse `body`; the direct one names `field`.
    fn refused(body: &[u8], field: &str) {
        assert!(CODEC.decode_trade_reference(&framed(body)).is_err());
        assert_eq!(refusal(body).0, field, "{body:?}");
    }

    #[test]
    fn every_enum_variant_has_apache_avros_index() {
        let sides = Side::ALL.into_iter().cycle();
        for (asset_class, side) in AssetClass::ALL.into_iter().zip(sides) {
            let t = TradeV2::builder("X", "Y", "1", 0).asset_class(asset_class);
            let t = t.side(side).build();
            let bytes = CODEC.encode_trade_reference(&t).unwrap();
            assert_eq!(direct(&t), bytes);
            assert_eq!(decode_trade_body(&bytes[5..], 2).unwrap(), t);
        }
    }

    #[test]
    fn encode_appends_to_a_reused_buffer() {
        let a = TradeV2::builder("X", "Y", "1", 0).build();
        let b = TradeV2::builder("X", "Z", "2", i64::MIN).build();
        let mut buf = b"kept".to_vec();
        encode_trade_into(&mut buf, ID, &a);
        encode_trade_into(&mut buf, ID, &b);
        assert_eq!(buf, [&b"kept"[..], &direct(&a), &direct(&b)].concat());
        let capacity = buf.capacity();
        buf.clear();
        encode_trade_into(&mut buf, ID, &b);
        assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn negative_block_counts_are_read_with_their_byte_size() {
        let strs = |b: &mut Vec<u8>, ss: &[&str]| ss.iter().for_each(|s| put_str(b, s));
        // array: a block of -2 items (their 12 bytes said, and not needed),
        // a block of 1, the end
        let mut conditions = [long_bytes(-2), long_bytes(12)].concat();
        strs(&mut conditions, &["a", "bé"]);
        put_long(&mut conditions, 1);
        strs(&mut conditions, &["c"]);
        conditions.push(0);
        // map: a block of -2 entries, then one whose key repeats: the last
        // value stays
        let mut vendor = [long_bytes(1), long_bytes(-2), long_bytes(999)].concat();
        strs(&mut vendor, &["k", "1", "x", "y"]);
        put_long(&mut vendor, 1);
        strs(&mut vendor, &["k", "2"]);
        vendor.push(0);
        let t = read(&with("trade_conditions", &conditions));
        assert_eq!(t.trade_conditions, ["a", "bé", "c"]);
        let t = read(&with("vendor_data", &vendor));
        let expected = VendorData::from_iter([("k".into(), "2".into()), ("x".into(), "y".into())]);
        assert_eq!(t.vendor_data, Some(expected));
        // keys in reverse order come back sorted
        let mut reversed = [long_bytes(1), long_bytes(3)].concat();
        strs(&mut reversed, &["z", "1", "y", "2", "x", "3"]);
        reversed.push(0);
        let t = read(&with("vendor_data", &reversed));
        let keys: Vec<&str> = t
            .vendor_data
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["x", "y", "z"]);
        assert_eq!(t.vendor_data.unwrap().get("z").unwrap(), "1");
        // a count of i64::MIN has no positive twin
        let min = [long_bytes(i64::MIN), long_bytes(0), vec![0]].concat();
        refused(&with("trade_conditions", &min), "trade_conditions");
    }

    #[test]
    fn trailing_bytes_are_ignored_as_apache_avro_ignores_them() {
        let body = with("", &[]);
        let t = read(&body);
        assert_eq!(read(&[&body[..], b"\x00garbage\xff"].concat()), t);
        assert_eq!(
            (t.timestamp_us, t.price.unscaled(), t.side),
            (-1, -5, Side::SellShort)
        );
    }

    #[test]
    fn only_cut_unions_and_varints_past_64_bits_are_refused_where_apache_avro_reads() {
        let body = with("", &[]);
        for (unions, field) in [
            (4, "source_sequence"),
            (3, "platform_sequence"),
            (2, "vendor_data"),
            (1, "instrument"),
        ] {
            let cut = &body[..body.len() - unions];
            // apache-avro's reader takes the missing unions as nulls
            let t = CODEC.decode_trade_reference(&framed(cut)).unwrap();
            assert_eq!(t, read(&body));
            assert_eq!(refusal(cut), (field, UNION_CUT.to_string()));
        }
        let overflow = [vec![0x80; 9], vec![2]].concat();
        let body = with("timestamp", &overflow);
        // apache-avro's reader drops the bit past the 64th: a timestamp of 0
        let t = CODEC.decode_trade_reference(&framed(&body)).unwrap();
        assert_eq!(t.timestamp_us, 0);
        assert_eq!(refusal(&body), ("timestamp", VARINT_OVERFLOW.to_string()));
    }

    #[test]
    fn decimals_of_1_to_16_bytes_sign_extend() {
        let minus_five = [[0xff; 8], (-5i64).to_be_bytes()].concat();
        let max = [[0; 8], MAX_UNSCALED.to_be_bytes()].concat();
        for (bytes, unscaled) in [
            (&[0xff][..], -1),
            (&[0x7f], 127),
            (&[0x00, 0x80], 128),
            (&minus_five, -5),
            (&max, MAX_UNSCALED),
        ] {
            let body = with(
                "price",
                &[&long_bytes(bytes.len() as i64)[..], bytes].concat(),
            );
            assert_eq!(read(&body).price.unscaled(), unscaled, "{bytes:?}");
        }
    }

    #[test]
    fn malformed_fields_are_refused_by_both_and_named() {
        let decimal = |b: &[u8]| [&long_bytes(b.len() as i64)[..], b].concat();
        let ten = [vec![0xff; 9], vec![1]].concat();
        let eleven = [vec![0xff; 10], vec![1]].concat();
        for (field, bytes) in [
            ("timestamp", eleven),
            ("symbol", long_bytes(-1)),
            ("symbol", long_bytes(1 << 40)),
            ("symbol", long_bytes(200)),
            ("currency", vec![4, 0xc3, 0x28]),
            ("asset_class", long_bytes(5)),
            ("asset_class", long_bytes(-1)),
            ("side", long_bytes(4)),
            ("side", ten),
            ("price", decimal(&[])),
            ("price", decimal(&[0; 17])),
            ("price", decimal(&[1, 0, 0, 0, 0, 0, 0, 0, 0])),
            ("price", decimal(&i64::MAX.to_be_bytes())),
            ("quantity", decimal(&(-MAX_UNSCALED - 1).to_be_bytes())),
            ("trade_conditions", long_bytes(1 << 30)),
            ("trade_conditions", [long_bytes(1), vec![20, b'a']].concat()),
            ("source_sequence", long_bytes(2)),
            ("platform_sequence", long_bytes(-1)),
            (
                "vendor_data",
                [long_bytes(1), long_bytes(1), vec![2, b'k']].concat(),
            ),
            ("vendor_data", [long_bytes(1), long_bytes(-1)].concat()),
        ] {
            refused(&with(field, &bytes), field);
        }
    }
}
