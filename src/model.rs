//! The normalized records ticklake carries end to end: `TradeV2` and the
//! dead-letter record. The same fields appear in Avro (Kafka) and Iceberg.

use std::fmt;

use rust_decimal::Decimal;
use serde::Serialize;

/// Precision of every price and quantity column: decimal(18,8).
pub const DECIMAL_PRECISION: u8 = 18;
/// Scale of every price and quantity column.
pub const DECIMAL_SCALE: u32 = 8;
/// Largest unscaled magnitude that fits in decimal(18,8): 10^18 - 1.
const MAX_UNSCALED: i128 = 999_999_999_999_999_999;

/// Namespace for deterministic message ids. A fixed v5 namespace means the same
/// trade gets the same id in every process and every replay.
const MESSAGE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1c_5d0e_8a8b_4b7e_9f3a_1c2d_3e4f_5a6b);

/// Why a decimal string was refused. Kept apart from the frame parser's errors
/// so the reason in the dead-letter table says exactly what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("not a decimal number: {0:?}")]
    Invalid(String),
    #[error("{0:?} has more than 8 decimal places")]
    TooManyPlaces(String),
    #[error("{0:?} overflows decimal(18,8)")]
    Overflow(String),
}

/// An exact decimal(18,8): the unscaled value, scale 8. Never a float, so
/// prices round-trip bit for bit from the exchange's string to Iceberg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dec8(i64);

impl Dec8 {
    pub fn from_unscaled(unscaled: i64) -> Result<Self, DecimalError> {
        if (unscaled as i128).abs() > MAX_UNSCALED {
            return Err(DecimalError::Overflow(unscaled.to_string()));
        }
        Ok(Self(unscaled))
    }

    pub fn unscaled(self) -> i64 {
        self.0
    }

    /// Parses an exchange decimal string exactly. Trailing zeros beyond the
    /// eighth place are fine; any other digit there would be rounded away, so
    /// it is refused instead.
    pub fn parse(s: &str) -> Result<Self, DecimalError> {
        let t = s.trim();
        if let Some(d) = Self::parse_plain(t) {
            return Ok(d);
        }
        Self::parse_general(s, t)
    }

    /// The form exchanges send nearly always: an optional `-`, 1 to 10
    /// digits, and optionally a point and 1 to 8 digits. Read digit by
    /// digit; `None` sends anything else (a sign `+`, more places, more
    /// digits, a bare point, garbage) to [`parse_general`](Self::parse_general),
    /// which decides it as it always did. Twice per trade on the feed's
    /// thread, where the general path (rust_decimal's parse, normalize and
    /// rescale) took ~65 to 100 ns a number and this one ~25.
    fn parse_plain(t: &str) -> Option<Self> {
        let (neg, b) = match t.as_bytes() {
            [b'-', rest @ ..] => (true, rest),
            b => (false, b),
        };
        let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        if int_len == 0 || int_len > 10 {
            return None;
        }
        let mut v: i64 = 0;
        for &c in &b[..int_len] {
            v = v * 10 + i64::from(c - b'0');
        }
        let mut places = 0;
        if let [b'.', frac @ ..] = &b[int_len..] {
            if frac.is_empty() || frac.len() > 8 || !frac.iter().all(u8::is_ascii_digit) {
                return None;
            }
            for &c in frac {
                v = v * 10 + i64::from(c - b'0');
            }
            places = frac.len() as u32;
        } else if int_len != b.len() {
            return None;
        }
        // At most 18 digits in all: no overflow of i64, and within
        // decimal(18,8)'s 10^18 - 1.
        let v = v * 10i64.pow(8 - places);
        Some(Self(if neg { -v } else { v }))
    }

    fn parse_general(s: &str, t: &str) -> Result<Self, DecimalError> {
        if t.is_empty() || t.contains(['e', 'E']) {
            return Err(DecimalError::Invalid(s.to_string()));
        }
        let d: Decimal = match t.parse() {
            Ok(d) => d,
            Err(rust_decimal::Error::ExceedsMaximumPossibleValue)
            | Err(rust_decimal::Error::LessThanMinimumPossibleValue) => {
                return Err(DecimalError::Overflow(s.to_string()));
            }
            Err(_) => {
                // rust_decimal refuses more than 28 significant digits with a
                // generic error; a string of only digits and one dot is a
                // number that is too large or too precise, not garbage.
                let numeric = t
                    .trim_start_matches(['-', '+'])
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.');
                if numeric && t.chars().filter(|c| *c == '.').count() <= 1 {
                    let int_digits = t
                        .trim_start_matches(['-', '+'])
                        .split('.')
                        .next()
                        .unwrap_or("")
                        .trim_start_matches('0')
                        .len();
                    return Err(if int_digits > 10 {
                        DecimalError::Overflow(s.to_string())
                    } else {
                        DecimalError::TooManyPlaces(s.to_string())
                    });
                }
                return Err(DecimalError::Invalid(s.to_string()));
            }
        };
        let n = d.normalize();
        if n.scale() > DECIMAL_SCALE {
            return Err(DecimalError::TooManyPlaces(s.to_string()));
        }
        let mut r = n;
        r.rescale(DECIMAL_SCALE);
        if r.scale() != DECIMAL_SCALE {
            // rescale saturates silently when the value cannot carry 8 places
            return Err(DecimalError::Overflow(s.to_string()));
        }
        let m = r.mantissa();
        if m.abs() > MAX_UNSCALED {
            return Err(DecimalError::Overflow(s.to_string()));
        }
        Ok(Self(m as i64))
    }
}

impl fmt::Display for Dec8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let abs = (self.0 as i128).unsigned_abs();
        let int = abs / 100_000_000;
        let frac = abs % 100_000_000;
        write!(f, "{}{int}.{frac:08}", if neg { "-" } else { "" })
    }
}

impl Serialize for Dec8 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The aggressor side of a trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Side {
    Buy,
    Sell,
    SellShort,
    Unknown,
}

impl Side {
    pub const ALL: [Side; 4] = [Side::Buy, Side::Sell, Side::SellShort, Side::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
            Side::SellShort => "SELL_SHORT",
            Side::Unknown => "UNKNOWN",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Asset class of the instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AssetClass {
    Crypto,
    Equities,
    Futures,
    Fx,
    Other,
}

impl AssetClass {
    pub const ALL: [AssetClass; 5] = [
        AssetClass::Crypto,
        AssetClass::Equities,
        AssetClass::Futures,
        AssetClass::Fx,
        AssetClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AssetClass::Crypto => "crypto",
            AssetClass::Equities => "equities",
            AssetClass::Futures => "futures",
            AssetClass::Fx => "fx",
            AssetClass::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One normalized trade (TradeV2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TradeV2 {
    /// UUIDv5 of exchange, stream kind, symbol and exchange trade id.
    pub message_id: String,
    pub trade_id: String,
    pub symbol: String,
    pub exchange: String,
    pub asset_class: AssetClass,
    /// Trade time at the exchange, microseconds since the Unix epoch (UTC).
    pub timestamp_us: i64,
    /// When ticklake received the frame, microseconds since the Unix epoch.
    pub ingestion_timestamp_us: i64,
    pub price: Dec8,
    pub quantity: Dec8,
    pub currency: String,
    pub side: Side,
    pub trade_conditions: Vec<String>,
    pub source_sequence: Option<i64>,
    pub platform_sequence: Option<i64>,
    #[serde(serialize_with = "vendor_as_map")]
    pub vendor_data: Option<VendorData>,
    /// The normalized instrument, `BASE-QUOTE` (`BTC-USDT`, `BTC-USD`),
    /// the same for one pair on every venue, beside the venue's own
    /// `symbol`. Added in schema version 2: records written before it, and
    /// rows committed before it, have none.
    pub instrument: Option<String>,
}

/// A trade's venue-specific fields (`vendor_data`): a few entries, kept
/// sorted by key, as a `BTreeMap` would be. A sorted vector, not a
/// `BTreeMap`: a `BTreeMap` allocates a whole node (544 bytes for `String`
/// pairs) for a single entry, on the feed's thread for every trade and
/// again on the lake arbiter for every row it decodes; a profile of the
/// full path put the decoding of this map at a seventh of that arbiter's
/// time, most of it the kernel zeroing fresh pages for those nodes.
pub type VendorData = litemap::LiteMap<String, String>;

/// `vendor_data` in JSON: an object, as the `BTreeMap` it once was gave.
/// (litemap's own serde support is behind a feature that rebuilds much of
/// the dependency tree, for this one use.)
fn vendor_as_map<S: serde::Serializer>(v: &Option<VendorData>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(m) => s.collect_map(m.iter()),
        None => s.serialize_none(),
    }
}

/// A `TradeV2` read in place: its text borrows the bytes it was read
/// from. The lake's consumer reads each record this way straight into the
/// Arrow columns of its chunk, so a row costs no allocation of its own
/// (a decoded `TradeV2` is a dozen, freed again on another thread).
///
/// `vendor_data`'s entries are sorted by key, each key once, as in
/// [`VendorData`].
#[derive(Debug, Clone, PartialEq)]
pub struct TradeView<'a> {
    pub message_id: &'a str,
    pub trade_id: &'a str,
    pub symbol: &'a str,
    pub exchange: &'a str,
    pub asset_class: AssetClass,
    pub timestamp_us: i64,
    pub ingestion_timestamp_us: i64,
    pub price: Dec8,
    pub quantity: Dec8,
    pub currency: &'a str,
    pub side: Side,
    pub trade_conditions: Vec<&'a str>,
    pub source_sequence: Option<i64>,
    pub platform_sequence: Option<i64>,
    pub vendor_data: Option<Vec<(&'a str, &'a str)>>,
    pub instrument: Option<&'a str>,
}

impl TradeView<'_> {
    pub fn to_owned_trade(&self) -> TradeV2 {
        TradeV2 {
            message_id: self.message_id.to_owned(),
            trade_id: self.trade_id.to_owned(),
            symbol: self.symbol.to_owned(),
            exchange: self.exchange.to_owned(),
            asset_class: self.asset_class,
            timestamp_us: self.timestamp_us,
            ingestion_timestamp_us: self.ingestion_timestamp_us,
            price: self.price,
            quantity: self.quantity,
            currency: self.currency.to_owned(),
            side: self.side,
            trade_conditions: self
                .trade_conditions
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            source_sequence: self.source_sequence,
            platform_sequence: self.platform_sequence,
            // Sorted and unique already (the type's promise).
            vendor_data: self.vendor_data.as_ref().map(|m| {
                VendorData::from_sorted_store_unchecked(
                    m.iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                )
            }),
            instrument: self.instrument.map(str::to_owned),
        }
    }
}

impl TradeV2 {
    /// This trade as a view of its own fields.
    pub fn view(&self) -> TradeView<'_> {
        TradeView {
            message_id: &self.message_id,
            trade_id: &self.trade_id,
            symbol: &self.symbol,
            exchange: &self.exchange,
            asset_class: self.asset_class,
            timestamp_us: self.timestamp_us,
            ingestion_timestamp_us: self.ingestion_timestamp_us,
            price: self.price,
            quantity: self.quantity,
            currency: &self.currency,
            side: self.side,
            trade_conditions: self.trade_conditions.iter().map(String::as_str).collect(),
            source_sequence: self.source_sequence,
            platform_sequence: self.platform_sequence,
            vendor_data: self
                .vendor_data
                .as_ref()
                .map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()),
            instrument: self.instrument.as_deref(),
        }
    }
}

/// Writes a `TradeV2` out field by field, starting from plain defaults, for
/// the tests, benchmarks and fixtures that make trades of their own.
///
/// `TradeV2::builder("X", "BTCUSDT", "7", ts)` is a crypto trade with the
/// message id a feed would give trade `7` of `trade` stream, trade id
/// `X-7`, arrival at `ts`, zero price and quantity, currency USDT, side
/// BUY, and no conditions, sequences or vendor data.
#[derive(Debug, Clone)]
pub struct TradeBuilder(TradeV2);

impl TradeV2 {
    pub fn builder(exchange: &str, symbol: &str, id: &str, timestamp_us: i64) -> TradeBuilder {
        TradeBuilder(TradeV2 {
            message_id: message_id(exchange, "trade", symbol, id),
            trade_id: format!("{exchange}-{id}"),
            symbol: symbol.to_string(),
            exchange: exchange.to_string(),
            asset_class: AssetClass::Crypto,
            timestamp_us,
            ingestion_timestamp_us: timestamp_us,
            price: Dec8::default(),
            quantity: Dec8::default(),
            currency: "USDT".to_string(),
            side: Side::Buy,
            trade_conditions: Vec::new(),
            source_sequence: None,
            platform_sequence: None,
            vendor_data: None,
            instrument: None,
        })
    }
}

impl TradeBuilder {
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.0.message_id = id.into();
        self
    }

    pub fn trade_id(mut self, id: impl Into<String>) -> Self {
        self.0.trade_id = id.into();
        self
    }

    pub fn asset_class(mut self, c: AssetClass) -> Self {
        self.0.asset_class = c;
        self
    }

    pub fn ingested_at(mut self, us: i64) -> Self {
        self.0.ingestion_timestamp_us = us;
        self
    }

    pub fn price(mut self, p: Dec8) -> Self {
        self.0.price = p;
        self
    }

    pub fn quantity(mut self, q: Dec8) -> Self {
        self.0.quantity = q;
        self
    }

    pub fn currency(mut self, c: &str) -> Self {
        self.0.currency = c.to_string();
        self
    }

    pub fn side(mut self, s: Side) -> Self {
        self.0.side = s;
        self
    }

    pub fn conditions(mut self, c: Vec<String>) -> Self {
        self.0.trade_conditions = c;
        self
    }

    pub fn source_sequence(mut self, n: Option<i64>) -> Self {
        self.0.source_sequence = n;
        self
    }

    pub fn platform_sequence(mut self, n: Option<i64>) -> Self {
        self.0.platform_sequence = n;
        self
    }

    pub fn vendor_data(mut self, v: Option<VendorData>) -> Self {
        self.0.vendor_data = v;
        self
    }

    pub fn instrument(mut self, i: Option<&str>) -> Self {
        self.0.instrument = i.map(str::to_string);
        self
    }

    pub fn build(self) -> TradeV2 {
        self.0
    }
}

/// Deterministic message id: the same (exchange, id space, symbol, trade id)
/// always yields the same UUID, so a replay or reconnect overlap can be
/// de-duplicated downstream. The id space matters because Binance `trade` and
/// `aggTrade` ids are separate sequences, and both are per symbol.
pub fn message_id(exchange: &str, id_space: &str, symbol: &str, trade_id: &str) -> String {
    // Built on the stack: this runs once per trade on the feed's thread.
    let parts = [exchange, id_space, symbol, trade_id];
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + 3;
    let mut stack = [0u8; 160];
    let mut heap = Vec::new();
    let key: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            key[at] = 0x1f;
            at += 1;
        }
        key[at..at + p.len()].copy_from_slice(p.as_bytes());
        at += p.len();
    }
    let mut out = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid_v5(key).hyphenated().encode_lower(&mut out).to_string()
}

/// `Uuid::new_v5(&MESSAGE_NAMESPACE, name)`, byte for byte (RFC 9562: the
/// first 16 bytes of SHA-1 over namespace and name, version and variant
/// set), hashed with the CPU's SHA instructions where it has them.
fn uuid_v5(name: &[u8]) -> uuid::Uuid {
    use sha1::Digest;
    let mut hasher = sha1::Sha1::new();
    hasher.update(MESSAGE_NAMESPACE.as_bytes());
    hasher.update(name);
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// A frame that could not be turned into a record, kept with its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Deterministic id over exchange, receive time and bytes, so the lake
    /// can be checked for exactly-once like the trades table.
    pub dead_letter_id: String,
    pub exchange: String,
    /// Where the frame came from (the feed URL, a capture file, a topic).
    pub source: String,
    pub received_at_us: i64,
    pub reason: String,
    #[serde(skip)]
    pub raw: Vec<u8>,
}

/// Most raw bytes a dead letter keeps. A broker refuses a record above its
/// maximum size (1 MB by default), and a refused record would sit at the
/// head of the spill log; a frame larger than this keeps its first bytes,
/// and the reason records the original size and a checksum of the whole.
pub const MAX_DEAD_LETTER_RAW: usize = 256 * 1024;

impl DeadLetter {
    pub fn new(
        exchange: &str,
        source: &str,
        received_at_us: i64,
        mut reason: String,
        mut raw: Vec<u8>,
    ) -> Self {
        let mut key = Vec::with_capacity(raw.len() + 64);
        key.extend_from_slice(exchange.as_bytes());
        key.push(0x1f);
        key.extend_from_slice(source.as_bytes());
        key.push(0x1f);
        key.extend_from_slice(&received_at_us.to_be_bytes());
        key.extend_from_slice(&raw);
        let dead_letter_id = uuid_v5(&key).to_string();
        if raw.len() > MAX_DEAD_LETTER_RAW {
            reason = format!(
                "{reason} (frame of {} bytes, first {MAX_DEAD_LETTER_RAW} kept; crc32 of the whole {:08x})",
                raw.len(),
                crc32fast::hash(&raw)
            );
            raw.truncate(MAX_DEAD_LETTER_RAW);
        }
        Self {
            dead_letter_id,
            exchange: exchange.to_string(),
            source: source.to_string(),
            received_at_us,
            reason,
            raw,
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    // The system clock read directly: `chrono::Utc::now` also builds a
    // calendar date from it (`from_num_days_from_ce_opt`), which was most
    // of this call's cost once a frame in a profile of `ticklake bench`.
    // A clock before 1970 reads as negative, as chrono's did.
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microseconds since the epoch, as chrono reads the same clock.
    #[test]
    fn now_us_reads_the_clock_in_microseconds() {
        let before = chrono::Utc::now().timestamp_micros();
        let now = now_us();
        let after = chrono::Utc::now().timestamp_micros();
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
    }

    #[test]
    fn parses_exchange_decimals_exactly() {
        assert_eq!(
            Dec8::parse("43.50830000").unwrap().unscaled(),
            4_350_830_000
        );
        assert_eq!(Dec8::parse("0.00000001").unwrap().unscaled(), 1);
        assert_eq!(
            Dec8::parse("9999999999.99999999").unwrap().unscaled(),
            999_999_999_999_999_999
        );
        assert_eq!(
            Dec8::parse("1.100000000000").unwrap().to_string(),
            "1.10000000"
        );
        assert_eq!(Dec8::parse("-2.5").unwrap().to_string(), "-2.50000000");
    }

    proptest::proptest! {
        /// The digit-by-digit path gives what rust_decimal's gives, on
        /// strings near the plain form and off it.
        #[test]
        fn the_plain_path_agrees_with_the_general_one(
            s in "[ ]?[-+]?[0-9]{0,12}(\\.[0-9]{0,10})?[ ]?|[-+.0-9a-e]{0,14}"
        ) {
            let plain = Dec8::parse_plain(s.trim());
            let general = Dec8::parse_general(&s, s.trim());
            if let Some(p) = plain {
                proptest::prop_assert_eq!(Ok(p), general.clone(), "{:?}", s);
            }
            proptest::prop_assert_eq!(Dec8::parse(&s), general, "{:?}", s);
        }
    }

    #[test]
    fn the_plain_path_takes_the_exchanges_usual_forms() {
        for (s, unscaled) in [
            ("43.50830000", 4_350_830_000),
            ("0.00000001", 1),
            ("-2.5", -250_000_000),
            ("-0", 0),
            ("7", 700_000_000),
            ("9999999999.99999999", 999_999_999_999_999_999),
        ] {
            assert_eq!(Dec8::parse_plain(s), Some(Dec8(unscaled)), "{s}");
        }
        for s in [
            "+1",
            "1.",
            ".5",
            "1.000000000",
            "10000000000",
            "1e5",
            "",
            "-",
        ] {
            assert_eq!(Dec8::parse_plain(s), None, "{s}");
        }
    }

    #[test]
    fn refuses_what_decimal_18_8_cannot_hold() {
        assert!(matches!(
            Dec8::parse("10000000000"),
            Err(DecimalError::Overflow(_))
        ));
        assert!(matches!(
            Dec8::parse("123456789012345678901234567890"),
            Err(DecimalError::Overflow(_))
        ));
        assert!(matches!(
            Dec8::parse("0.000000001"),
            Err(DecimalError::TooManyPlaces(_))
        ));
        assert!(matches!(Dec8::parse("abc"), Err(DecimalError::Invalid(_))));
        assert!(matches!(Dec8::parse(""), Err(DecimalError::Invalid(_))));
        assert!(matches!(Dec8::parse("1e5"), Err(DecimalError::Invalid(_))));
    }

    #[test]
    fn message_ids_are_deterministic_and_distinct_per_id_space() {
        // The id is the v5 UUID of the four parts joined by U+001F, short
        // key or long.
        for sym in ["BTCUSDT", &"X".repeat(300)] {
            let key = format!("BINANCE\u{1f}trade\u{1f}{sym}\u{1f}42");
            assert_eq!(
                message_id("BINANCE", "trade", sym, "42"),
                uuid::Uuid::new_v5(&MESSAGE_NAMESPACE, key.as_bytes()).to_string()
            );
        }
        let a = message_id("BINANCE", "aggTrade", "BTCUSDT", "1");
        assert_eq!(a, message_id("BINANCE", "aggTrade", "BTCUSDT", "1"));
        assert_ne!(a, message_id("BINANCE", "trade", "BTCUSDT", "1"));
        assert_ne!(a, message_id("BINANCE", "aggTrade", "ETHUSDT", "1"));
    }

    #[test]
    fn the_hardware_sha1_v5_matches_uuids_own_at_every_length() {
        // Every name length from empty across three SHA-1 blocks, so each
        // padding case (one block, the length spilling into a second) is
        // met; the bytes vary with the length so no two names agree.
        for len in 0..200usize {
            let name: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            assert_eq!(
                uuid_v5(&name),
                uuid::Uuid::new_v5(&MESSAGE_NAMESPACE, &name),
                "name of {len} bytes"
            );
        }
    }

    #[test]
    fn a_huge_frame_is_dead_lettered_capped_with_its_size_and_checksum() {
        let raw = vec![b'x'; 2 << 20];
        let d = DeadLetter::new("BINANCE", "ws://x", 1, "invalid json".into(), raw.clone());
        assert_eq!(d.raw.len(), MAX_DEAD_LETTER_RAW);
        assert!(
            d.reason.starts_with("invalid json (frame of 2097152 bytes"),
            "{}",
            d.reason
        );
        assert!(
            d.reason.contains(&format!("{:08x}", crc32fast::hash(&raw))),
            "{}",
            d.reason
        );
        // The id still names the whole frame: two frames that share their
        // first bytes are two dead letters.
        let mut other = raw.clone();
        other[(2 << 20) - 1] = b'y';
        let e = DeadLetter::new("BINANCE", "ws://x", 1, "invalid json".into(), other);
        assert_ne!(d.dead_letter_id, e.dead_letter_id);
        let small = DeadLetter::new(
            "BINANCE",
            "ws://x",
            1,
            "invalid json".into(),
            vec![b'x'; 10],
        );
        assert_eq!(
            (small.raw.len(), small.reason.as_str()),
            (10, "invalid json")
        );
    }

    #[test]
    fn vendor_data_is_a_sorted_json_object() {
        let with = TradeV2::builder("BINANCE", "BTCUSDT", "1", 0)
            .vendor_data(Some(VendorData::from_iter([
                ("stream".to_string(), "trade".to_string()),
                ("event_time_ms".to_string(), "17".to_string()),
            ])))
            .build();
        let keys: Vec<&str> = with
            .vendor_data
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["event_time_ms", "stream"], "kept sorted by key");
        let json = serde_json::to_value(&with).unwrap();
        assert_eq!(
            json["vendor_data"],
            serde_json::json!({"event_time_ms": "17", "stream": "trade"})
        );
        let without = TradeV2::builder("BINANCE", "BTCUSDT", "1", 0).build();
        assert!(serde_json::to_value(&without).unwrap()["vendor_data"].is_null());
    }
}
