//! Avro encoding of `TradeV2` and dead letters in the Confluent wire format:
//! magic byte 0, a 4-byte big-endian schema id, then the Avro datum.
//!
//! Trades, the hot path, go through the hand-written codec in
//! `avro_direct`; dead letters, which are rare, through apache-avro. The
//! apache-avro path for trades is kept as the reference the direct one is
//! tested against.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Decimal, Schema};

use crate::kafka::avro_direct;
use crate::model::{AssetClass, DeadLetter, Dec8, Side, TradeV2, TradeView, VendorData};

pub use crate::kafka::avro_direct::AvroError;

/// Subject under which the trade schema is registered (Confluent's
/// TopicRecordNameStrategy style, independent of the topic name).
pub const TRADE_SUBJECT: &str = "io.ticklake.market.TradeV2";
/// Subject of the dead-letter schema.
pub const DEAD_LETTER_SUBJECT: &str = "io.ticklake.market.DeadLetterV1";

/// The fields of version 1 of the trade schema, which version 2 keeps as
/// they are.
macro_rules! trade_fields_v1 {
    () => {
        r#"{"name": "message_id", "type": "string"},
    {"name": "trade_id", "type": "string"},
    {"name": "symbol", "type": "string"},
    {"name": "exchange", "type": "string"},
    {"name": "asset_class", "type": {"type": "enum", "name": "AssetClass",
      "symbols": ["CRYPTO", "EQUITIES", "FUTURES", "FX", "OTHER"]}},
    {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "ingestion_timestamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 8}},
    {"name": "quantity", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 8}},
    {"name": "currency", "type": "string"},
    {"name": "side", "type": {"type": "enum", "name": "Side",
      "symbols": ["BUY", "SELL", "SELL_SHORT", "UNKNOWN"]}},
    {"name": "trade_conditions", "type": {"type": "array", "items": "string"}},
    {"name": "source_sequence", "type": ["null", "long"], "default": null},
    {"name": "platform_sequence", "type": ["null", "long"], "default": null},
    {"name": "vendor_data", "type": ["null", {"type": "map", "values": "string"}], "default": null}"#
    };
}

/// The trade schema as first released, without `instrument`. Records written
/// under it may still be in Kafka when a newer build starts; they are read
/// with `instrument` null.
pub const TRADE_SCHEMA_V1_JSON: &str = concat!(
    r#"{
  "type": "record", "name": "TradeV2", "namespace": "io.ticklake.market",
  "fields": [
    "#,
    trade_fields_v1!(),
    r#"
  ]
}"#
);

/// The trade schema written today: version 1 plus `instrument`, an optional
/// field with a default, so it reads every version-1 record (backward
/// compatible, which the registry checks when it registers it).
pub const TRADE_SCHEMA_JSON: &str = concat!(
    r#"{
  "type": "record", "name": "TradeV2", "namespace": "io.ticklake.market",
  "fields": [
    "#,
    trade_fields_v1!(),
    r#",
    {"name": "instrument", "type": ["null", "string"], "default": null}
  ]
}"#
);

pub const DEAD_LETTER_SCHEMA_JSON: &str = r#"{
  "type": "record", "name": "DeadLetterV1", "namespace": "io.ticklake.market",
  "fields": [
    {"name": "dead_letter_id", "type": "string"},
    {"name": "exchange", "type": "string"},
    {"name": "source", "type": "string"},
    {"name": "received_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "reason", "type": "string"},
    {"name": "raw", "type": "bytes"}
  ]
}"#;

// The schemas are compile-time constants checked by the tests below, so a
// parse failure is a build defect, not a runtime condition.
static TRADE_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(TRADE_SCHEMA_JSON).expect("TradeV2 schema is valid"));
static TRADE_SCHEMA_V1: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(TRADE_SCHEMA_V1_JSON).expect("TradeV2 version 1 schema is valid")
});
static DEAD_LETTER_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(DEAD_LETTER_SCHEMA_JSON).expect("DeadLetterV1 schema is valid")
});

impl From<apache_avro::Error> for AvroError {
    fn from(e: apache_avro::Error) -> Self {
        AvroError::Avro(Box::new(e))
    }
}

/// Which record a schema id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Trade,
    DeadLetter,
}

/// Encodes and decodes framed records, given the ids the registry assigned.
pub struct Codec {
    trade_id: u32,
    /// The id of version 1 of the trade schema, when the registry has one:
    /// records written under it by an older build are still read.
    trade_v1_id: Option<u32>,
    dead_letter_id: u32,
    trade_writer: GenericDatumWriter<'static>,
    dead_letter_writer: GenericDatumWriter<'static>,
    trade_reader: GenericDatumReader<'static>,
    trade_v1_reader: GenericDatumReader<'static>,
    dead_letter_reader: GenericDatumReader<'static>,
}

pub fn trade_schema() -> &'static Schema {
    &TRADE_SCHEMA
}

pub fn trade_schema_v1() -> &'static Schema {
    &TRADE_SCHEMA_V1
}

pub fn dead_letter_schema() -> &'static Schema {
    &DEAD_LETTER_SCHEMA
}

impl Codec {
    pub fn new(trade_id: u32, dead_letter_id: u32) -> Result<Self, AvroError> {
        Ok(Self {
            trade_id,
            trade_v1_id: None,
            dead_letter_id,
            trade_writer: GenericDatumWriter::builder(&TRADE_SCHEMA).build()?,
            dead_letter_writer: GenericDatumWriter::builder(&DEAD_LETTER_SCHEMA).build()?,
            trade_reader: GenericDatumReader::builder(&TRADE_SCHEMA).build()?,
            // Version 1 records resolved to today's schema, as a reader
            // that follows the Avro spec resolves them.
            trade_v1_reader: GenericDatumReader::builder(&TRADE_SCHEMA_V1)
                .reader_schema(&TRADE_SCHEMA)
                .build()?,
            dead_letter_reader: GenericDatumReader::builder(&DEAD_LETTER_SCHEMA).build()?,
        })
    }

    /// Also reads trades framed with `id`, version 1 of the schema.
    pub fn with_trade_v1_id(mut self, id: Option<u32>) -> Self {
        self.trade_v1_id = id.filter(|i| *i != self.trade_id);
        self
    }

    /// The schema version a trade framed with `id` was written under.
    fn trade_version(&self, id: u32) -> Option<u8> {
        if id == self.trade_id {
            Some(2)
        } else if Some(id) == self.trade_v1_id {
            Some(1)
        } else {
            None
        }
    }

    /// Never fails; the `Result` stays so that callers written for the
    /// apache-avro path, which could, need not change.
    pub fn encode_trade(&self, t: &TradeV2) -> Result<Vec<u8>, AvroError> {
        let mut buf = Vec::new();
        self.encode_trade_into(&mut buf, t);
        Ok(buf)
    }

    /// Appends a framed trade to `buf`, for a caller that reuses a buffer.
    pub fn encode_trade_into(&self, buf: &mut Vec<u8>, t: &TradeV2) {
        avro_direct::encode_trade_into(buf, self.trade_id, t);
    }

    /// apache-avro's encoding of a trade, through its `Value` tree: the
    /// reference the direct codec is checked against, for tests only.
    /// `vendor_data` goes through a `HashMap`, so a map of two or more
    /// entries comes out in an order that changes from run to run.
    pub fn encode_trade_reference(&self, t: &TradeV2) -> Result<Vec<u8>, AvroError> {
        let body = self.trade_writer.write_value_to_vec(trade_to_value(t))?;
        Ok(frame(self.trade_id, body))
    }

    pub fn encode_dead_letter(&self, d: &DeadLetter) -> Result<Vec<u8>, AvroError> {
        let v = Value::Record(vec![
            (
                "dead_letter_id".into(),
                Value::String(d.dead_letter_id.clone()),
            ),
            ("exchange".into(), Value::String(d.exchange.clone())),
            ("source".into(), Value::String(d.source.clone())),
            (
                "received_at".into(),
                Value::TimestampMicros(d.received_at_us),
            ),
            ("reason".into(), Value::String(d.reason.clone())),
            ("raw".into(), Value::Bytes(d.raw.clone())),
        ]);
        Ok(frame(
            self.dead_letter_id,
            self.dead_letter_writer.write_value_to_vec(v)?,
        ))
    }

    /// Which record kind a framed payload holds, from its schema id.
    pub fn kind_of(&self, bytes: &[u8]) -> Result<RecordKind, AvroError> {
        let (id, _) = unframe(bytes)?;
        if self.trade_version(id).is_some() {
            Ok(RecordKind::Trade)
        } else if id == self.dead_letter_id {
            Ok(RecordKind::DeadLetter)
        } else {
            Err(AvroError::UnknownSchema(id))
        }
    }

    pub fn decode_trade(&self, bytes: &[u8]) -> Result<TradeV2, AvroError> {
        let (id, body) = unframe(bytes)?;
        match self.trade_version(id) {
            Some(version) => avro_direct::decode_trade_body(body, version),
            None => Err(AvroError::UnknownSchema(id)),
        }
    }

    /// A trade read in place (`avro_direct::decode_trade_view`): what
    /// `decode_trade` reads, without copying its text.
    pub fn decode_trade_view<'a>(&self, bytes: &'a [u8]) -> Result<TradeView<'a>, AvroError> {
        let (id, body) = unframe(bytes)?;
        match self.trade_version(id) {
            Some(version) => avro_direct::decode_trade_view(body, version),
            None => Err(AvroError::UnknownSchema(id)),
        }
    }

    /// apache-avro's decoding of a trade, through its `Value` tree: the
    /// reference the direct codec is checked against, for tests only.
    pub fn decode_trade_reference(&self, bytes: &[u8]) -> Result<TradeV2, AvroError> {
        let (id, mut body) = unframe(bytes)?;
        let reader = match self.trade_version(id) {
            Some(2) => &self.trade_reader,
            Some(_) => &self.trade_v1_reader,
            None => return Err(AvroError::UnknownSchema(id)),
        };
        value_to_trade(reader.read_value(&mut body)?)
    }

    pub fn decode_dead_letter(&self, bytes: &[u8]) -> Result<DeadLetter, AvroError> {
        let (id, mut body) = unframe(bytes)?;
        if id != self.dead_letter_id {
            return Err(AvroError::UnknownSchema(id));
        }
        let mut f = fields(self.dead_letter_reader.read_value(&mut body)?)?;
        Ok(DeadLetter {
            dead_letter_id: take_string(&mut f, "dead_letter_id")?,
            exchange: take_string(&mut f, "exchange")?,
            source: take_string(&mut f, "source")?,
            received_at_us: take_micros(&mut f, "received_at")?,
            reason: take_string(&mut f, "reason")?,
            raw: match f.remove("raw") {
                Some(Value::Bytes(b)) => b,
                other => return Err(unexpected("raw", other)),
            },
        })
    }
}

fn frame(schema_id: u32, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), AvroError> {
    if bytes.len() < 5 {
        return Err(AvroError::TooShort(bytes.len()));
    }
    if bytes[0] != 0 {
        return Err(AvroError::Magic(bytes[0]));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[5..]))
}

fn decimal(d: Dec8) -> Value {
    // Avro decimals are big-endian two's complement of the unscaled value.
    Value::Decimal(Decimal::from(d.unscaled().to_be_bytes().to_vec()))
}

fn enum_value(symbols: &[&str], s: &str) -> Value {
    let idx = symbols.iter().position(|x| *x == s).unwrap_or(0) as u32;
    Value::Enum(idx, s.to_string())
}

const ASSET_SYMBOLS: [&str; 5] = ["CRYPTO", "EQUITIES", "FUTURES", "FX", "OTHER"];
const SIDE_SYMBOLS: [&str; 4] = ["BUY", "SELL", "SELL_SHORT", "UNKNOWN"];

fn nullable_long(v: Option<i64>) -> Value {
    match v {
        Some(x) => Value::Union(1, Box::new(Value::Long(x))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn trade_to_value(t: &TradeV2) -> Value {
    let vendor = match &t.vendor_data {
        Some(m) => Value::Union(
            1,
            Box::new(Value::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect::<HashMap<_, _>>(),
            )),
        ),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    Value::Record(vec![
        ("message_id".into(), Value::String(t.message_id.clone())),
        ("trade_id".into(), Value::String(t.trade_id.clone())),
        ("symbol".into(), Value::String(t.symbol.clone())),
        ("exchange".into(), Value::String(t.exchange.clone())),
        (
            "asset_class".into(),
            enum_value(&ASSET_SYMBOLS, &t.asset_class.as_str().to_ascii_uppercase()),
        ),
        ("timestamp".into(), Value::TimestampMicros(t.timestamp_us)),
        (
            "ingestion_timestamp".into(),
            Value::TimestampMicros(t.ingestion_timestamp_us),
        ),
        ("price".into(), decimal(t.price)),
        ("quantity".into(), decimal(t.quantity)),
        ("currency".into(), Value::String(t.currency.clone())),
        ("side".into(), enum_value(&SIDE_SYMBOLS, t.side.as_str())),
        (
            "trade_conditions".into(),
            Value::Array(
                t.trade_conditions
                    .iter()
                    .map(|c| Value::String(c.clone()))
                    .collect(),
            ),
        ),
        ("source_sequence".into(), nullable_long(t.source_sequence)),
        (
            "platform_sequence".into(),
            nullable_long(t.platform_sequence),
        ),
        ("vendor_data".into(), vendor),
        (
            "instrument".into(),
            match &t.instrument {
                Some(i) => Value::Union(1, Box::new(Value::String(i.clone()))),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        ),
    ])
}

type Fields = HashMap<String, Value>;

fn fields(v: Value) -> Result<Fields, AvroError> {
    match v {
        Value::Record(f) => Ok(f.into_iter().collect()),
        other => Err(unexpected("record", Some(other))),
    }
}

fn unexpected(field: &'static str, v: Option<Value>) -> AvroError {
    AvroError::Field {
        field,
        reason: format!("unexpected value {v:?}"),
    }
}

fn take_string(f: &mut Fields, field: &'static str) -> Result<String, AvroError> {
    match f.remove(field) {
        Some(Value::String(s)) => Ok(s),
        other => Err(unexpected(field, other)),
    }
}

fn take_micros(f: &mut Fields, field: &'static str) -> Result<i64, AvroError> {
    match f.remove(field) {
        Some(Value::TimestampMicros(x)) | Some(Value::Long(x)) => Ok(x),
        other => Err(unexpected(field, other)),
    }
}

fn take_decimal(f: &mut Fields, field: &'static str) -> Result<Dec8, AvroError> {
    match f.remove(field) {
        Some(Value::Decimal(d)) => {
            let b: Vec<u8> = Vec::<u8>::try_from(&d).map_err(|e| AvroError::Field {
                field,
                reason: e.to_string(),
            })?;
            if b.len() > 16 {
                return Err(AvroError::Field {
                    field,
                    reason: format!("decimal of {} bytes", b.len()),
                });
            }
            let fill = if b.first().is_some_and(|x| x & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut buf = [fill; 16];
            buf[16 - b.len()..].copy_from_slice(&b);
            let unscaled = i128::from_be_bytes(buf);
            let unscaled = i64::try_from(unscaled).map_err(|_| AvroError::Field {
                field,
                reason: format!("{unscaled} overflows decimal(18,8)"),
            })?;
            Dec8::from_unscaled(unscaled).map_err(|e| AvroError::Field {
                field,
                reason: e.to_string(),
            })
        }
        other => Err(unexpected(field, other)),
    }
}

fn take_enum(f: &mut Fields, field: &'static str) -> Result<String, AvroError> {
    match f.remove(field) {
        Some(Value::Enum(_, s)) => Ok(s),
        other => Err(unexpected(field, other)),
    }
}

fn take_nullable_long(f: &mut Fields, field: &'static str) -> Result<Option<i64>, AvroError> {
    match f.remove(field) {
        Some(Value::Union(_, b)) => match *b {
            Value::Null => Ok(None),
            Value::Long(x) => Ok(Some(x)),
            other => Err(unexpected(field, Some(other))),
        },
        other => Err(unexpected(field, other)),
    }
}

fn value_to_trade(v: Value) -> Result<TradeV2, AvroError> {
    let mut f = fields(v)?;
    let asset = take_enum(&mut f, "asset_class")?;
    let side = take_enum(&mut f, "side")?;
    let trade_conditions = match f.remove("trade_conditions") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                other => Err(unexpected("trade_conditions", Some(other))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(unexpected("trade_conditions", other)),
    };
    let vendor_data = match f.remove("vendor_data") {
        Some(Value::Union(_, b)) => match *b {
            Value::Null => None,
            Value::Map(m) => Some(
                m.into_iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => Ok((k, s)),
                        other => Err(unexpected("vendor_data", Some(other))),
                    })
                    .collect::<Result<VendorData, _>>()?,
            ),
            other => return Err(unexpected("vendor_data", Some(other))),
        },
        other => return Err(unexpected("vendor_data", other)),
    };
    Ok(TradeV2 {
        message_id: take_string(&mut f, "message_id")?,
        trade_id: take_string(&mut f, "trade_id")?,
        symbol: take_string(&mut f, "symbol")?,
        exchange: take_string(&mut f, "exchange")?,
        asset_class: AssetClass::parse(&asset.to_ascii_lowercase()).ok_or(AvroError::Field {
            field: "asset_class",
            reason: format!("unknown symbol {asset}"),
        })?,
        timestamp_us: take_micros(&mut f, "timestamp")?,
        ingestion_timestamp_us: take_micros(&mut f, "ingestion_timestamp")?,
        price: take_decimal(&mut f, "price")?,
        quantity: take_decimal(&mut f, "quantity")?,
        currency: take_string(&mut f, "currency")?,
        side: Side::parse(&side).ok_or(AvroError::Field {
            field: "side",
            reason: format!("unknown symbol {side}"),
        })?,
        trade_conditions,
        source_sequence: take_nullable_long(&mut f, "source_sequence")?,
        platform_sequence: take_nullable_long(&mut f, "platform_sequence")?,
        vendor_data,
        instrument: match f.remove("instrument") {
            Some(Value::Union(_, v)) => match *v {
                Value::Null => None,
                Value::String(s) => Some(s),
                other => return Err(unexpected("instrument", Some(other))),
            },
            other => return Err(unexpected("instrument", other)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TradeV2 {
        TradeV2::builder("BINANCE", "BTCUSDT", "1", 1_700_000_000_123_000)
            .ingested_at(1_700_000_000_200_000)
            .price(Dec8::parse("58792.76").unwrap())
            .quantity(Dec8::parse("-0.00000001").unwrap())
            .side(Side::SellShort)
            .conditions(vec!["X".into(), "Y".into()])
            .source_sequence(Some(42))
            .vendor_data(Some(VendorData::from_iter([(
                "stream".into(),
                "trade".into(),
            )])))
            .instrument(Some("BTC-USDT"))
            .build()
    }

    /// Version 2 is version 1 plus `instrument`, optional with a default,
    /// so a reader of version 2 reads what version 1 wrote.
    #[test]
    fn version_two_adds_instrument_and_reads_version_one() {
        use apache_avro::schema_compatibility::SchemaCompatibility;
        let names = |s: &Schema| match s {
            Schema::Record(r) => r.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
            _ => panic!("not a record"),
        };
        let mut v1 = names(&TRADE_SCHEMA_V1);
        v1.push("instrument".into());
        assert_eq!(names(&TRADE_SCHEMA), v1);
        SchemaCompatibility::can_read(&TRADE_SCHEMA_V1, &TRADE_SCHEMA)
            .expect("version 2 reads version 1");
    }

    /// A record an older build wrote under version 1's id, still in Kafka,
    /// decodes with `instrument` null, through both decoders.
    #[test]
    fn a_version_one_record_decodes_with_no_instrument() {
        let c = Codec::new(7, 8).unwrap().with_trade_v1_id(Some(3));
        let mut t = sample();
        // version 1's bytes: apache-avro's writer on the version 1 schema
        let mut v = trade_to_value(&t);
        if let Value::Record(f) = &mut v {
            f.retain(|(name, _)| name != "instrument");
        }
        let body = GenericDatumWriter::builder(&TRADE_SCHEMA_V1)
            .build()
            .unwrap()
            .write_value_to_vec(v)
            .unwrap();
        let bytes = frame(3, body);
        t.instrument = None;
        assert_eq!(c.kind_of(&bytes).unwrap(), RecordKind::Trade);
        assert_eq!(c.decode_trade(&bytes).unwrap(), t);
        assert_eq!(c.decode_trade_reference(&bytes).unwrap(), t);
        // without the old id known, it is an unknown schema, not a misread
        let plain = Codec::new(7, 8).unwrap();
        assert!(matches!(
            plain.decode_trade(&bytes),
            Err(AvroError::UnknownSchema(3))
        ));
    }

    #[test]
    fn trade_round_trips_in_confluent_framing() {
        let c = Codec::new(7, 8).unwrap();
        let t = sample();
        let bytes = c.encode_trade(&t).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(c.kind_of(&bytes).unwrap(), RecordKind::Trade);
        assert_eq!(c.decode_trade(&bytes).unwrap(), t);
    }

    #[test]
    fn dead_letter_round_trips() {
        let c = Codec::new(1, 2).unwrap();
        let d = DeadLetter::new("BINANCE", "ws://x", 5, "empty frame".into(), vec![0xff, 0]);
        let bytes = c.encode_dead_letter(&d).unwrap();
        assert_eq!(c.kind_of(&bytes).unwrap(), RecordKind::DeadLetter);
        assert_eq!(c.decode_dead_letter(&bytes).unwrap(), d);
    }

    #[test]
    fn bad_framing_is_an_error_not_a_panic() {
        let c = Codec::new(1, 2).unwrap();
        assert!(matches!(
            c.decode_trade(&[0, 0]),
            Err(AvroError::TooShort(2))
        ));
        assert!(matches!(
            c.decode_trade(&[1, 0, 0, 0, 1]),
            Err(AvroError::Magic(1))
        ));
        assert!(matches!(
            c.kind_of(&[0, 0, 0, 0, 9]),
            Err(AvroError::UnknownSchema(9))
        ));
        assert!(c.decode_trade(&[0, 0, 0, 0, 1, 0xff]).is_err());
    }
}
