//! Issue "Beyond one machine", part 4, acceptance D: a standard Confluent
//! consumer decodes ticklake's topics unchanged. The daemon writes a
//! replayed capture through the real Tansu broker and serves its local
//! registry over the Confluent REST API; Python's confluent-kafka
//! (`Consumer`, `SchemaRegistryClient`, `AvroDeserializer`, fastavro
//! underneath) reads every record of the trades topic through that API
//! (`scripts/sr_decode.py`), and each record equals, field for field, what
//! ticklake's own codec decodes at the same offset; the records are the
//! lake's rows. Then ticklake's client of an external registry is run
//! against the daemon's API, in the test and in a second daemon that takes
//! its ids from the first; and a daemon pointed at a registry nobody
//! serves refuses to start, naming the key.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};
use ticklake::config::Config;
use ticklake::kafka::avro::{TRADE_SCHEMA_JSON, TRADE_SCHEMA_V1_JSON};
use ticklake::kafka::registry::{
    ConfluentRegistry, LocalRegistry, RegistryError, SchemaRegistry, value_subject,
};
use ticklake::model::TradeV2;

/// A trade as `sr_decode.py` prints it: timestamps in microseconds,
/// decimals as plain strings with the schema's eight places, enums as
/// their Avro symbols (`CRYPTO`, `BUY`).
fn as_printed(t: &TradeV2) -> Value {
    json!({
        "message_id": t.message_id,
        "trade_id": t.trade_id,
        "symbol": t.symbol,
        "exchange": t.exchange,
        "asset_class": t.asset_class,
        "timestamp": t.timestamp_us,
        "ingestion_timestamp": t.ingestion_timestamp_us,
        "price": t.price.to_string(),
        "quantity": t.quantity.to_string(),
        "currency": t.currency,
        "side": t.side,
        "trade_conditions": t.trade_conditions,
        "source_sequence": t.source_sequence,
        "platform_sequence": t.platform_sequence,
        "vendor_data": t.vendor_data.as_ref().map(|m| m.iter().collect::<std::collections::BTreeMap<_, _>>()),
        "instrument": t.instrument,
    })
}

/// Every record of `topic`, decoded by ticklake's codec, with the schema
/// id of its frame, by (partition, offset).
fn own_decode(
    brokers: &str,
    topic: &str,
    cfg: &Config,
    expected: usize,
) -> BTreeMap<(i32, i64), (u32, TradeV2)> {
    let registry = LocalRegistry::open(&cfg.data_dir_abs()).unwrap();
    // Registering again is idempotent: the ids the daemon framed with.
    let codec = ticklake::kafka::registry::codec(&registry, cfg).unwrap();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("own"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = BTreeMap::new();
    let start = Instant::now();
    while out.len() < expected && start.elapsed() < Duration::from_secs(60) {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let bytes = m.payload().unwrap();
                let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
                out.insert(
                    (m.partition(), m.offset()),
                    (id, codec.decode_trade(bytes).unwrap()),
                );
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// `scripts/sr_decode.py` on `topic`: the records a Confluent consumer
/// decodes, by (partition, offset), with the schema id of each.
fn confluent_decode(brokers: &str, topic: &str, registry_url: &str) -> BTreeMap<(i32, i64), Value> {
    let out = Command::new(python())
        .arg(scripts_dir().join("sr_decode.py"))
        .args([
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--registry",
            registry_url,
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {} sr_decode.py: {e}", python()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sr_decode.py failed:\n{stderr}");
    println!("{}", stderr.trim());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            let key = (
                r["partition"].as_i64().unwrap() as i32,
                r["offset"].as_i64().unwrap(),
            );
            (key, r)
        })
        .collect()
}

#[test]
fn a_confluent_consumer_decodes_every_record_through_the_daemons_registry() {
    let brokers = tansu();
    let caps = [capture("BINANCE-ee25be.0.txt")];
    let frames: Vec<String> = caps.iter().flat_map(|c| received_frames(c)).collect();
    let expected = truth(&frames).len();
    assert!(expected > 100, "the capture holds {expected} trades");
    let (mut replay, url) = start_replay(&caps, &[]);
    let env = Env::new(&brokers, Some(&url), "");
    env.one_pass_feed();
    let cfg = Config::load(Some(&env.config)).unwrap();
    let topic = cfg.kafka.trades_topic("BINANCE");
    let mut daemon = env.start_daemon("daemon");
    wait_until("all trades committed", Duration::from_secs(180), || {
        env.count("select count(*) from market.trades") >= expected as i64
    });
    replay.kill();

    // The subjects are the TopicNameStrategy names a Confluent client uses.
    let (status, subjects) = http(env.http_port, "GET", "/schema-registry/subjects", None);
    assert_eq!(status, 200, "{subjects}");
    let subjects: BTreeSet<&str> = subjects
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in [
        value_subject(&topic),
        value_subject(&cfg.kafka.dead_letter_topic),
    ] {
        assert!(subjects.contains(s.as_str()), "{s} not in {subjects:?}");
    }

    // A Confluent consumer, through the daemon's registry API.
    let registry_url = format!("http://127.0.0.1:{}/schema-registry", env.http_port);
    let theirs = confluent_decode(&brokers, &topic, &registry_url);
    let ours = own_decode(&brokers, &topic, &cfg, theirs.len());
    assert_eq!(theirs.len(), expected, "records on {topic}");
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    let mut mismatches = 0;
    for (key, (id, t)) in &ours {
        let r = &theirs[key];
        assert_eq!(r["schema_id"], json!(id), "{key:?}");
        if r["value"] != as_printed(t) {
            mismatches += 1;
            if mismatches <= 5 {
                eprintln!(
                    "{key:?}: confluent {} vs ticklake {}",
                    r["value"],
                    as_printed(t)
                );
            }
        }
    }
    println!("decoded {} records, {mismatches} mismatches", theirs.len());
    assert_eq!(mismatches, 0);

    // The records are the lake's rows.
    let rows = env.query("select message_id, cast(price as varchar) as price from market.trades");
    let lake: BTreeMap<String, String> = rows
        .iter()
        .map(|r| {
            (
                r["message_id"].as_str().unwrap().to_string(),
                r["price"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let decoded: BTreeMap<String, String> = theirs
        .values()
        .map(|r| {
            (
                r["value"]["message_id"].as_str().unwrap().to_string(),
                r["value"]["price"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(lake, decoded);

    // ticklake's client of an external registry, against the daemon's API.
    let client = ConfluentRegistry::new(&registry_url, None).unwrap();
    client.check().unwrap();
    let id = ours.values().next().unwrap().0;
    let subject = value_subject(&topic);
    assert_eq!(client.register(&subject, TRADE_SCHEMA_JSON).unwrap(), id);
    assert_eq!(
        client.lookup(&subject, TRADE_SCHEMA_JSON).unwrap(),
        Some(id)
    );
    assert_eq!(client.lookup(&subject, TRADE_SCHEMA_V1_JSON).unwrap(), None);
    assert_eq!(
        client.lookup("nobody-value", TRADE_SCHEMA_JSON).unwrap(),
        None
    );
    let served: Value = serde_json::from_str(&client.schema(id).unwrap().unwrap()).unwrap();
    assert_eq!(
        served,
        serde_json::from_str::<Value>(TRADE_SCHEMA_JSON).unwrap()
    );
    assert_eq!(client.schema(999_999).unwrap(), None);
    // A schema the subject's records cannot be read with is refused with
    // Confluent's code; one that does not parse is a bad schema.
    // (a required field added without a default: the subject's records
    // do not have it)
    let breaking = TRADE_SCHEMA_JSON.replace(
        r#"{"name": "instrument", "type": ["null", "string"], "default": null}"#,
        r#"{"name": "instrument", "type": ["null", "string"], "default": null},
    {"name": "venue_id", "type": "string"}"#,
    );
    match client.register(&subject, &breaking) {
        Err(RegistryError::Refused {
            status: 409,
            error_code: 409,
            ..
        }) => {}
        other => panic!("expected a 409 refusal, got {other:?}"),
    }
    assert!(matches!(
        client.register(&subject, r#"{"type": "record"}"#),
        Err(RegistryError::BadSchema { .. })
    ));

    // A second daemon, on topics of its own, takes its ids from the first
    // one's registry through the same client, and serves none itself.
    let env2 = Env::new(&brokers, None, "");
    env2.set(
        "kafka",
        "schema_registry_url",
        &format!("\"{registry_url}\""),
    );
    let mut second = env2.start_daemon("second");
    let (_, st) = http(env2.http_port, "GET", "/status", None);
    assert_eq!(
        st["schema_registry"],
        json!({"kind": "confluent", "url": registry_url}),
        "{st}"
    );
    let (_, st) = http(env.http_port, "GET", "/status", None);
    assert_eq!(st["schema_registry"]["kind"], "local", "{st}");
    assert_eq!(
        st["schema_registry"]["served_at"], "/schema-registry",
        "{st}"
    );
    let topic2 = Config::load(Some(&env2.config))
        .unwrap()
        .kafka
        .trades_topic("BINANCE");
    let (status, latest) = http(
        env.http_port,
        "GET",
        &format!(
            "/schema-registry/subjects/{}/versions/latest",
            value_subject(&topic2)
        ),
        None,
    );
    assert_eq!((status, latest["id"].clone()), (200, json!(id)), "{latest}");
    let (status, _) = http(env2.http_port, "GET", "/schema-registry/subjects", None);
    assert_eq!(status, 404);
    let status = second.terminate();
    assert!(
        status.success(),
        "second daemon exit {status}; log:\n{}",
        second.log_tail()
    );

    let status = daemon.terminate();
    assert!(
        status.success(),
        "daemon exit {status}; log:\n{}",
        daemon.log_tail()
    );
}

/// A daemon pointed at a registry that does not answer refuses to start,
/// naming the key; a config check alone does no IO.
#[test]
fn an_unreachable_registry_fails_the_start_naming_the_key() {
    let env = Env::new("127.0.0.1:9", None, "");
    let port = free_port();
    env.set(
        "kafka",
        "schema_registry_url",
        &format!("\"http://127.0.0.1:{port}/schema-registry\""),
    );
    let started = Instant::now();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&env.config)
        .env("TICKLAKE_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("kafka.schema_registry_url") && stderr.contains("unreachable"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
