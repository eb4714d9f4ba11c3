//! The dedup and the last trade ids shared by daemons that hold the same
//! feed (`dedup.redis_url`, hot standby), in Redis.
//!
//! Keys, all under `<prefix>:`:
//! - `id:<message id>`: the instance that took the trade (published it),
//!   set with `SET … NX GET PX <window>`: one daemon wins, the others learn
//!   who did. Pipelined, one round trip per frame.
//! - `alive:<instance>`: each daemon's heartbeat, renewed every second and
//!   gone [`ALIVE_TTL`] after the daemon stops beating (a `kill -9`). A
//!   daemon that lost a trade to another holds it until the winner has
//!   surely published it; should the winner die first, the trade is taken
//!   over (a script moves the claim from the dead instance to this one, so
//!   only one survivor does) and published.
//! - `last:<exchange>`: a hash of `<symbol>|<space>` → `<id> <trade time
//!   µs>`, the newest published trade id, only ever raised (a script); a
//!   daemon that starts reads it to know where the feed is.
//!
//! Redis failing never stops a feed: the call is counted in
//! `ticklake_dedup_redis_errors_total{op}`, warned of at most every 10 s,
//! and the batch goes on as if there were no Redis (published: the trades
//! writer's own dedup still stores a trade once).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use prometheus::IntCounterVec;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::DedupConfig;

/// How long a heartbeat lives: a daemon silent this long is taken as dead.
pub const ALIVE_TTL: Duration = Duration::from_secs(3);
/// Heartbeat period, well inside [`ALIVE_TTL`].
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a call may take; the feed waits for it, so it is short.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1_500);
/// At most one warning per this many milliseconds.
const WARN_EVERY_MS: i64 = 10_000;
/// After a failure, how long the feed's calls skip Redis (a Redis that
/// does not answer would otherwise cost every frame the timeout).
pub const REST: Duration = Duration::from_secs(5);

/// A Redis call that failed, or was not made.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("redis {op}: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
    /// Redis failed less than [`REST`] ago: the feed does not wait for it
    /// again until then (or until a heartbeat gets through).
    #[error("redis {op}: not asked, Redis failed less than {}s ago", REST.as_secs())]
    Resting { op: &'static str },
}

impl SharedError {
    /// The operation, as in `ticklake_dedup_redis_errors_total{op}`.
    pub fn op(&self) -> &'static str {
        match self {
            SharedError::Redis { op, .. } | SharedError::Resting { op } => op,
        }
    }
}

/// Whether this daemon takes a trade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First: this daemon publishes it.
    Mine,
    /// Another instance took it (its id).
    Taken(String),
}

/// One symbol's newest published trade id, as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLast {
    pub symbol: String,
    pub space: String,
    pub id: i64,
    pub at_us: i64,
}

/// Raises a `last:` field to `ARGV[i+1]` (with its time `ARGV[i+2]`) when
/// above the field's id, for each triple. Lua numbers are doubles: ids are
/// compared exactly up to 2^53, far above any venue's.
const ADVANCE: &str = r#"
for i = 1, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local id = tonumber(ARGV[i + 1])
  if (not cur) or tonumber(string.match(cur, '^(-?%d+)')) < id then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. ' ' .. ARGV[i + 2])
  end
end
return 0
"#;

/// Moves each claim `KEYS[i]` held by the dead `ARGV[1]` to `ARGV[2]`;
/// 1 where it did.
const TAKE_OVER: &str = r#"
local out = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('SET', KEYS[i], ARGV[2], 'PX', ARGV[3])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

/// This daemon's handle on the shared store; cheap to share (the
/// connection manager multiplexes and reconnects by itself).
pub struct SharedIds {
    conn: ConnectionManager,
    prefix: String,
    window_ms: u64,
    /// This process, in claims and heartbeats.
    pub instance: String,
    errors: IntCounterVec,
    last_warn_ms: AtomicI64,
    /// Until when (ms since the epoch) calls skip Redis after a failure.
    resting_until_ms: AtomicI64,
    advance: redis::Script,
    take_over: redis::Script,
}

impl SharedIds {
    /// Connects lazily (a Redis down at start does not stop the daemon)
    /// and starts the heartbeat on the current runtime.
    pub fn open(cfg: &DedupConfig, url: &str, errors: IntCounterVec) -> Result<Self, SharedError> {
        let err = |source| SharedError::Redis { op: "open", source };
        let client = redis::Client::open(url).map_err(err)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(err)?;
        for op in [
            "first_time",
            "advance_last",
            "last_ids",
            "alive",
            "take_over",
        ] {
            errors.with_label_values(&[op]);
        }
        let ids = Self {
            conn,
            prefix: cfg.redis_key_prefix.clone(),
            window_ms: cfg.redis_window_secs.saturating_mul(1000),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            errors,
            last_warn_ms: AtomicI64::new(i64::MIN / 2),
            resting_until_ms: AtomicI64::new(0),
            advance: redis::Script::new(ADVANCE),
            take_over: redis::Script::new(TAKE_OVER),
        };
        Ok(ids)
    }

    fn id_key(&self, message_id: &str) -> String {
        format!("{}:id:{message_id}", self.prefix)
    }

    fn alive_key(&self, instance: &str) -> String {
        format!("{}:alive:{instance}", self.prefix)
    }

    fn last_key(&self, exchange: &str) -> String {
        format!("{}:last:{exchange}", self.prefix)
    }

    /// A failed call: Redis rests for [`REST`].
    fn down(&self, op: &'static str, source: redis::RedisError) -> SharedError {
        let rest_ms = i64::try_from(REST.as_millis()).unwrap_or(5_000);
        self.resting_until_ms
            .store(crate::model::now_us() / 1000 + rest_ms, Ordering::Relaxed);
        SharedError::Redis { op, source }
    }

    /// Refuses at once while Redis rests after a failure.
    fn awake(&self, op: &'static str) -> Result<(), SharedError> {
        if crate::model::now_us() / 1000 < self.resting_until_ms.load(Ordering::Relaxed) {
            return Err(SharedError::Resting { op });
        }
        Ok(())
    }

    /// Counts and (rate-limited) logs a failed or skipped call.
    pub fn failed(&self, e: &SharedError) {
        self.errors.with_label_values(&[e.op()]).inc();
        let now = crate::model::now_us() / 1000;
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if now - last >= WARN_EVERY_MS
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %e, "shared dedup: Redis failed; this batch goes on with the daemon's own dedup");
        }
    }

    /// Claims each message id for this daemon, in one round trip: `Mine`
    /// for those no daemon took within the window.
    pub async fn claim(&self, message_ids: &[&str]) -> Result<Vec<Claim>, SharedError> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.awake("first_time")?;
        let mut pipe = redis::pipe();
        for id in message_ids {
            pipe.cmd("SET")
                .arg(self.id_key(id))
                .arg(&self.instance)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(self.window_ms);
        }
        let owners: Vec<Option<String>> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|source| self.down("first_time", source))?;
        Ok(owners
            .into_iter()
            .map(|o| match o {
                None => Claim::Mine,
                Some(o) if o == self.instance => Claim::Mine,
                Some(o) => Claim::Taken(o),
            })
            .collect())
    }

    /// Which of these instances still beat.
    pub async fn alive(&self, instances: &[&str]) -> Result<Vec<bool>, SharedError> {
        self.awake("alive")?;
        let mut pipe = redis::pipe();
        for i in instances {
            pipe.exists(self.alive_key(i));
        }
        pipe.query_async(&mut self.conn.clone())
            .await
            .map_err(|source| self.down("alive", source))
    }

    /// Moves the claims of the dead instance `dead` on these ids to this
    /// one; true where it did (so this daemon publishes them).
    pub async fn take_over(
        &self,
        dead: &str,
        message_ids: &[&str],
    ) -> Result<Vec<bool>, SharedError> {
        self.awake("take_over")?;
        let mut inv = self.take_over.prepare_invoke();
        for id in message_ids {
            inv.key(self.id_key(id));
        }
        inv.arg(dead).arg(&self.instance).arg(self.window_ms);
        let out: Vec<i64> = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|source| self.down("take_over", source))?;
        Ok(out.into_iter().map(|v| v == 1).collect())
    }

    /// Raises the shared last ids of `exchange` to these (symbol, space) →
    /// (id, trade time µs), one round trip.
    pub async fn advance_last(
        &self,
        exchange: &str,
        last: &BTreeMap<(String, String), (i64, i64)>,
    ) -> Result<(), SharedError> {
        if last.is_empty() {
            return Ok(());
        }
        self.awake("advance_last")?;
        let mut inv = self.advance.prepare_invoke();
        inv.key(self.last_key(exchange));
        for ((symbol, space), (id, at)) in last {
            inv.arg(format!("{symbol}|{space}")).arg(*id).arg(*at);
        }
        let _: i64 = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|source| self.down("advance_last", source))?;
        Ok(())
    }

    /// The shared last ids of `exchange`; fields Redis holds in another
    /// shape are skipped.
    pub async fn last_ids(&self, exchange: &str) -> Result<Vec<SharedLast>, SharedError> {
        let all: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.last_key(exchange))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|source| self.down("last_ids", source))?;
        Ok(all
            .into_iter()
            .filter_map(|(field, value)| {
                let (symbol, space) = field.split_once('|')?;
                let (id, at) = value.split_once(' ')?;
                Some(SharedLast {
                    symbol: symbol.to_string(),
                    space: space.to_string(),
                    id: id.parse().ok()?,
                    at_us: at.parse().ok()?,
                })
            })
            .collect())
    }

    /// Renews this instance's heartbeat. Never skipped: it is the probe
    /// that ends a rest once Redis answers again.
    pub async fn beat(&self) -> Result<(), SharedError> {
        let ttl_ms = u64::try_from(ALIVE_TTL.as_millis()).unwrap_or(3_000);
        let _: () = redis::cmd("SET")
            .arg(self.alive_key(&self.instance))
            .arg(1)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|source| self.down("alive", source))?;
        self.resting_until_ms.store(0, Ordering::Relaxed);
        Ok(())
    }
}

/// Beats for the life of the process, on the current runtime.
pub fn keep_alive(ids: std::sync::Arc<SharedIds>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(BEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = ids.beat().await {
                ids.failed(&e);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `redis-server` of the test's own on a free port, stopped on drop.
    struct Server {
        child: std::process::Child,
        url: String,
    }

    impl Server {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is not installed (the Debian package; .ci/run installs it)");
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Self {
                child,
                url: format!("redis://127.0.0.1:{port}/0"),
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn errors() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("e", "e"), &["op"]).unwrap()
    }

    fn open(url: &str, errors: IntCounterVec) -> SharedIds {
        SharedIds::open(&DedupConfig::default(), url, errors).unwrap()
    }

    #[tokio::test]
    async fn one_daemon_takes_each_id_and_a_dead_ones_claims_move() {
        let server = Server::start();
        let a = open(&server.url, errors());
        let b = open(&server.url, errors());
        assert_eq!(
            a.claim(&["m1", "m2"]).await.unwrap(),
            [Claim::Mine, Claim::Mine]
        );
        // Asking again (a retried batch) is still its own.
        assert_eq!(a.claim(&["m1"]).await.unwrap(), [Claim::Mine]);
        let got = b.claim(&["m1", "m3"]).await.unwrap();
        assert_eq!(got, [Claim::Taken(a.instance.clone()), Claim::Mine]);
        // A beats, B does not: A is alive, B is not.
        a.beat().await.unwrap();
        let alive = b.alive(&[&a.instance, &b.instance]).await.unwrap();
        assert_eq!(alive, [true, false]);
        // B takes over A's m1 (A "died"); a third taking over too gets none.
        assert_eq!(
            b.take_over(&a.instance, &["m1", "m3"]).await.unwrap(),
            [true, false]
        );
        let c = open(&server.url, errors());
        assert_eq!(c.take_over(&a.instance, &["m1"]).await.unwrap(), [false]);
        assert_eq!(
            c.claim(&["m1"]).await.unwrap(),
            [Claim::Taken(b.instance.clone())]
        );
    }

    #[tokio::test]
    async fn the_last_ids_only_go_up_and_read_back() {
        let server = Server::start();
        let a = open(&server.url, errors());
        let key = |s: &str| (s.to_string(), "aggTrade".to_string());
        let mut last = BTreeMap::new();
        last.insert(key("BTCUSDT"), (100, 1_000));
        last.insert(key("ETHUSDT"), (7, 2_000));
        a.advance_last("BINANCE", &last).await.unwrap();
        last.insert(key("BTCUSDT"), (90, 900));
        last.insert(key("ETHUSDT"), (8, 2_100));
        a.advance_last("BINANCE", &last).await.unwrap();
        let mut got = a.last_ids("BINANCE").await.unwrap();
        got.sort_by(|x, y| x.symbol.cmp(&y.symbol));
        let want = |symbol: &str, id, at_us| SharedLast {
            symbol: symbol.into(),
            space: "aggTrade".into(),
            id,
            at_us,
        };
        assert_eq!(
            got,
            [want("BTCUSDT", 100, 1_000), want("ETHUSDT", 8, 2_100)]
        );
        assert!(a.last_ids("KRAKEN").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn redis_down_is_an_error_counted_not_a_hang() {
        // Nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let errors = errors();
        let a = open(&format!("redis://127.0.0.1:{port}/0"), errors.clone());
        let started = std::time::Instant::now();
        let e = a.claim(&["m1"]).await.unwrap_err();
        assert!(
            matches!(
                e,
                SharedError::Redis {
                    op: "first_time",
                    ..
                }
            ),
            "{e}"
        );
        a.failed(&e);
        assert_eq!(errors.with_label_values(&["first_time"]).get(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // Resting now: the next frames do not wait for Redis at all.
        let started = std::time::Instant::now();
        let e = a.claim(&["m2"]).await.unwrap_err();
        assert!(
            matches!(e, SharedError::Resting { op: "first_time" }),
            "{e}"
        );
        let mut last = BTreeMap::new();
        last.insert(("BTCUSDT".to_string(), "aggTrade".to_string()), (1, 1));
        assert!(matches!(
            a.advance_last("BINANCE", &last).await,
            Err(SharedError::Resting { .. })
        ));
        assert!(started.elapsed() < Duration::from_millis(100));
        // The heartbeat still tries (and fails here).
        assert!(matches!(
            a.beat().await,
            Err(SharedError::Redis { op: "alive", .. })
        ));
    }
}
