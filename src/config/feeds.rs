//! `[feeds.<name>]`: the feeds, each an exchange protocol run against one
//! URL, with the protocol's defaults for what a table leaves out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[feeds.<name>]`: any number of feeds, each one exchange protocol run
/// against one URL. With no `[feeds.*]` table anywhere, one Binance feed
/// with the defaults runs; a file that names any feed runs exactly those.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FeedsConfig(pub BTreeMap<String, FeedConfig>);

impl Default for FeedsConfig {
    fn default() -> Self {
        let mut m = BTreeMap::new();
        m.insert("binance".to_string(), FeedConfig::named("binance"));
        Self(m)
    }
}

impl std::ops::Deref for FeedsConfig {
    type Target = BTreeMap<String, FeedConfig>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for FeedsConfig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl FeedsConfig {
    /// The feeds the daemon runs, in name order.
    pub fn enabled(&self) -> impl Iterator<Item = &FeedConfig> {
        self.0.values().filter(|f| f.enabled)
    }

    /// The feed named `name`, added with its protocol's defaults when the
    /// config has none: for tests and tools that make a config themselves.
    pub fn named(&mut self, name: &str) -> &mut FeedConfig {
        self.0
            .entry(name.to_string())
            .or_insert_with(|| FeedConfig::named(name))
    }

    /// Fills each feed's name and its protocol's defaults for the keys left
    /// out; an error names the feed's key.
    pub(super) fn resolve(&mut self) -> Result<(), (String, String)> {
        for (name, f) in self.0.iter_mut() {
            f.name = name.clone();
            f.resolve()
                .map_err(|(k, r)| (format!("feeds.{name}.{k}"), r))?;
        }
        Ok(())
    }
}

/// The exchange protocols a feed can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolKind {
    /// Binance spot and Binance.US combined streams (`trade`, `aggTrade`).
    Binance,
    /// Kraken WebSocket v2 (`wss://ws.kraken.com/v2`, `trade` channel).
    Kraken,
    /// Kraken WebSocket v1 (array frames), as in the recorded captures.
    KrakenV1,
    /// Coinbase Advanced Trade (`market_trades`, kept open by `heartbeats`).
    Coinbase,
    /// The legacy Coinbase Exchange feed (`matches`).
    CoinbaseExchange,
}

impl ProtocolKind {
    pub const ALL: [ProtocolKind; 5] = [
        ProtocolKind::Binance,
        ProtocolKind::Kraken,
        ProtocolKind::KrakenV1,
        ProtocolKind::Coinbase,
        ProtocolKind::CoinbaseExchange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolKind::Binance => "binance",
            ProtocolKind::Kraken => "kraken",
            ProtocolKind::KrakenV1 => "kraken_v1",
            ProtocolKind::Coinbase => "coinbase",
            ProtocolKind::CoinbaseExchange => "coinbase_exchange",
        }
    }

    /// The protocol a feed named `name` speaks when its table does not say:
    /// the name itself, or the part before its first `_` (`binance_us`).
    pub fn from_feed_name(name: &str) -> Option<Self> {
        let find = |n: &str| Self::ALL.into_iter().find(|k| k.as_str() == n);
        find(name).or_else(|| find(name.split('_').next()?))
    }

    /// The channels a feed of this protocol may subscribe to; the first is
    /// the default.
    pub fn channels(self) -> &'static [&'static str] {
        match self {
            ProtocolKind::Binance => &["trade", "aggTrade"],
            ProtocolKind::Kraken | ProtocolKind::KrakenV1 => &["trade"],
            ProtocolKind::Coinbase => &["market_trades"],
            ProtocolKind::CoinbaseExchange => &["matches"],
        }
    }

    /// The public endpoint, for a feed storing `exchange`.
    fn default_url(self, exchange: &str) -> &'static str {
        match self {
            ProtocolKind::Binance if exchange == "BINANCE_US" => "wss://stream.binance.us:9443",
            ProtocolKind::Binance => "wss://stream.binance.com:9443",
            ProtocolKind::Kraken => "wss://ws.kraken.com/v2",
            ProtocolKind::KrakenV1 => "wss://ws.kraken.com",
            ProtocolKind::Coinbase => "wss://advanced-trade-ws.coinbase.com",
            ProtocolKind::CoinbaseExchange => "wss://ws-feed.exchange.coinbase.com",
        }
    }

    /// The public REST API the venue serves its trade history on.
    fn default_rest_url(self, exchange: &str) -> &'static str {
        match self {
            ProtocolKind::Binance if exchange == "BINANCE_US" => "https://api.binance.us",
            ProtocolKind::Binance => "https://api.binance.com",
            ProtocolKind::Kraken | ProtocolKind::KrakenV1 => "https://api.kraken.com",
            ProtocolKind::Coinbase => "https://api.coinbase.com",
            ProtocolKind::CoinbaseExchange => "https://api.exchange.coinbase.com",
        }
    }

    /// The deepest pairs, in the venue's own symbol form.
    fn default_symbols(self, exchange: &str) -> &'static [&'static str] {
        match self {
            ProtocolKind::Binance if exchange == "BINANCE_US" => {
                &["btcusdt", "ethusdt", "btcusd", "ethusd", "solusdt"]
            }
            ProtocolKind::Binance => &["btcusdt", "ethusdt", "solusdt", "bnbusdt", "xrpusdt"],
            ProtocolKind::Kraken => &["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "BTC/USDT"],
            ProtocolKind::KrakenV1 => &["XBT/USD", "ETH/USD", "SOL/USD", "XRP/USD", "XBT/USDT"],
            ProtocolKind::Coinbase | ProtocolKind::CoinbaseExchange => {
                &["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "BTC-USDT"]
            }
        }
    }
}

/// `[feeds.<name>]`: one connection to one venue. `url`, `exchange`,
/// `symbols` and `channels` left out take the protocol's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// The table's name (`binance` in `[feeds.binance]`); set on load.
    #[serde(skip)]
    pub name: String,
    /// `binance`, `kraken`, `kraken_v1`, `coinbase` or `coinbase_exchange`.
    /// Left out, the feed's name says it (`binance_us` speaks `binance`).
    pub protocol: Option<ProtocolKind>,
    /// Whether the daemon runs this feed.
    pub enabled: bool,
    /// WebSocket URL. Binance's is a base the feed appends
    /// `/stream?streams=...` to. Point it at `ticklake replay` (e.g.
    /// `ws://127.0.0.1:9000`) to work offline.
    pub url: String,
    /// Exchange name written into every record (BINANCE, BINANCE_US,
    /// KRAKEN, COINBASE ...); the feed's name in upper case by default. It
    /// names the Kafka topic and the instruments file's section.
    pub exchange: String,
    /// Symbols to subscribe, in the venue's form (`btcusdt`, `BTC/USD`,
    /// `BTC-USD`).
    pub symbols: Vec<String>,
    /// Channels per symbol; Binance calls them streams (`trade`,
    /// `aggTrade`), Kraken `trade`, Coinbase `market_trades` or `matches`.
    #[serde(alias = "streams")]
    pub channels: Vec<String>,
    /// First reconnect delay in milliseconds; doubles per failure, with jitter.
    pub backoff_initial_ms: u64,
    /// Cap on the reconnect delay in milliseconds.
    pub backoff_max_ms: u64,
    /// Reconnect when no frame arrived for this many seconds (WebSocket
    /// pings and pongs do not count; a venue's heartbeat frames do).
    pub stale_after_secs: u64,
    /// Rotate the connection after this many seconds (Binance drops at 24
    /// h), making the new one before the old one is closed.
    pub max_connection_secs: u64,
    /// Message ids remembered to drop duplicates (reconnect overlaps,
    /// replays); the oldest are forgotten first.
    pub dedup_capacity: usize,
    /// The venue's public REST API, which gaps in the trade ids are filled
    /// from (`https://api.binance.com` ...). Point it at `ticklake replay
    /// --rest` to work offline.
    pub rest_url: String,
    /// Whether gaps in the trade ids are filled from `rest_url`. Off, a gap
    /// is still detected, counted and recorded (`how = "not_filled"`).
    pub backfill: bool,
    /// How far back a gap is filled: at start, the lake's last trade of
    /// each symbol is the point to fill from only when it is younger than
    /// this; a gap whose trades are older is marked unrecoverable. A
    /// duration (`30m`, `1h`).
    pub backfill_max_age: String,
    /// How long a gap may wait for its trades to arrive late on a live
    /// connection (a rotation's old connection, out-of-order frames) before
    /// it is declared and filled, in milliseconds.
    pub gap_grace_ms: u64,
    /// REST requests per second at most (the venue's rate limit, with room).
    pub rest_requests_per_sec: u32,
    /// Trades asked for per REST page.
    pub rest_page_size: u32,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            protocol: None,
            enabled: true,
            url: String::new(),
            exchange: String::new(),
            symbols: Vec::new(),
            channels: Vec::new(),
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            stale_after_secs: 60,
            max_connection_secs: 23 * 3600,
            dedup_capacity: 1_000_000,
            rest_url: String::new(),
            backfill: true,
            backfill_max_age: "1h".into(),
            gap_grace_ms: 3000,
            rest_requests_per_sec: 5,
            rest_page_size: 1000,
        }
    }
}

impl FeedConfig {
    /// The feed `name` with its protocol's defaults (the protocol from the
    /// name; Binance when the name says none).
    pub fn named(name: &str) -> Self {
        let mut f = FeedConfig {
            name: name.to_string(),
            protocol: Some(ProtocolKind::from_feed_name(name).unwrap_or(ProtocolKind::Binance)),
            ..FeedConfig::default()
        };
        let _ = f.resolve();
        f
    }

    /// The protocol; resolved on load, so always known after it.
    pub fn protocol(&self) -> ProtocolKind {
        self.protocol
            .or_else(|| ProtocolKind::from_feed_name(&self.name))
            .unwrap_or(ProtocolKind::Binance)
    }

    /// `backfill_max_age` (validated on load; an hour if it does not parse).
    pub fn backfill_max_age(&self) -> std::time::Duration {
        humantime::parse_duration(&self.backfill_max_age)
            .unwrap_or(std::time::Duration::from_secs(3600))
    }

    /// The key path of one of this feed's keys, for error messages.
    pub fn key(&self, field: &str) -> String {
        format!("feeds.{}.{field}", self.name)
    }

    fn resolve(&mut self) -> Result<(), (String, String)> {
        let kind = match self
            .protocol
            .or_else(|| ProtocolKind::from_feed_name(&self.name))
        {
            Some(k) => k,
            None => {
                return Err((
                    "protocol".into(),
                    format!(
                        "missing, and the feed's name {:?} names no protocol; one of {}",
                        self.name,
                        ProtocolKind::ALL.map(|k| k.as_str()).join(", ")
                    ),
                ));
            }
        };
        self.protocol = Some(kind);
        if self.exchange.is_empty() {
            self.exchange = self.name.to_ascii_uppercase();
        }
        if self.url.is_empty() {
            self.url = kind.default_url(&self.exchange).to_string();
        }
        if self.rest_url.is_empty() {
            self.rest_url = kind.default_rest_url(&self.exchange).to_string();
        }
        if self.symbols.is_empty() {
            self.symbols = kind
                .default_symbols(&self.exchange)
                .iter()
                .map(|s| s.to_string())
                .collect();
        }
        if self.channels.is_empty() {
            self.channels = vec![kind.channels()[0].to_string()];
        }
        Ok(())
    }
}
