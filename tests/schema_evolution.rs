//! Schema evolution on a lake an older build made (issue "Kraken and
//! Coinbase, several feeds at once", acceptance C). The data directory is
//! laid out as the release before `instrument` left it: its registry holds
//! version 1 of the trade schema, `market.trades` has version 1's columns
//! and rows, and records written under version 1's id are still in the
//! topic on the real broker. This build starts on it: the table gains the
//! column through Iceberg's schema update, old rows read `instrument` null,
//! the version 1 records are decoded and stored with it null, new trades
//! from the feed carry it, and pyiceberg reads all of them.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use ticklake::config::Config;
use ticklake::kafka::avro::{
    DEAD_LETTER_SCHEMA_JSON, DEAD_LETTER_SUBJECT, TRADE_SCHEMA_V1_JSON, TRADE_SUBJECT,
    trade_schema_v1,
};
use ticklake::kafka::registry::{LocalRegistry, SchemaRegistry};
use ticklake::lake::{self, TableKind};
use ticklake::model::{Dec8, TradeV2};

/// Version 1's bytes of `t`, framed with `id`: today's encoding of a trade
/// with no instrument is version 1's followed by the one byte of the null
/// branch, which is dropped. apache-avro's reader on version 1 checks it.
fn version_one(t: &TradeV2, id: u32) -> Vec<u8> {
    assert!(t.instrument.is_none());
    let mut buf = Vec::new();
    ticklake::kafka::avro_direct::encode_trade_into(&mut buf, id, t);
    assert_eq!(buf.pop(), Some(0), "the null branch of instrument");
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(trade_schema_v1())
        .build()
        .unwrap();
    let mut body = &buf[5..];
    reader.read_value(&mut body).expect("a version 1 record");
    assert!(body.is_empty(), "version 1's reader reads it all");
    buf
}

fn trade(i: i64, ts: i64) -> TradeV2 {
    TradeV2::builder("BINANCE", "BTCUSDT", &format!("old{i}"), ts)
        .price(Dec8::parse("60000.5").unwrap())
        .quantity(Dec8::parse("0.001").unwrap())
        .build()
}

#[test]
fn a_lake_and_topic_from_before_instrument_are_read_and_extended() {
    let brokers = tansu();
    let caps = [capture("BINANCE-ee25be.0.txt")];
    let frames: Vec<String> = caps.iter().flat_map(|c| received_frames(c)).collect();
    let from_feed = truth(&frames).len() as i64;
    let (mut replay, url) = start_replay(&caps, &[]);
    let env = Env::new(&brokers, Some(&url), "");
    env.one_pass_feed();
    let cfg = Config::load(Some(&env.config)).unwrap();
    let now_us = chrono::Utc::now().timestamp_micros();

    // The registry as the older build left it.
    let registry = LocalRegistry::open(&env.data_dir()).unwrap();
    let v1 = registry
        .register(TRADE_SUBJECT, TRADE_SCHEMA_V1_JSON)
        .unwrap();
    registry
        .register(DEAD_LETTER_SUBJECT, DEAD_LETTER_SCHEMA_JSON)
        .unwrap();

    // The table as the older build made it, with rows committed by it (on
    // a cluster that is gone, as the embedded one is after a restart).
    const OLD_ROWS: i64 = 40;
    const IN_KAFKA: i64 = 25;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        let old = lake::schema::trades_schema_v1().unwrap();
        let ident = lake::table_ident(&cfg, TableKind::Trades);
        let spec = lake::schema::trades_partition_spec().unwrap();
        let table = lake::ensure(catalog.as_ref(), &ident, old, spec)
            .await
            .unwrap();
        assert!(
            table
                .metadata()
                .current_schema()
                .field_by_name("instrument")
                .is_none()
        );
        let schema = lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
        let rows: Vec<TradeV2> = (0..OLD_ROWS).map(|i| trade(i, now_us - 1000 + i)).collect();
        let batch = lake::batch::trades_batch(&schema, &rows).unwrap();
        let mut offsets = lake::commit::KafkaOffsets {
            cluster_id: "a-cluster-that-is-gone".into(),
            topics: Default::default(),
        };
        offsets.set(&cfg.kafka.trades_topic("BINANCE"), 0, OLD_ROWS);
        lake::commit::append(catalog.as_ref(), &ident, Some(&batch), &offsets, 64 << 20)
            .await
            .unwrap();
    });

    // Records the older build published under version 1 and nobody stored
    // yet: still in the topic.
    let topic = cfg.kafka.trades_topic("BINANCE");
    rt.block_on(ticklake::kafka::ensure_topics(
        &cfg.kafka,
        &brokers,
        std::slice::from_ref(&topic),
        cfg.kafka.embedded_partitions,
    ))
    .unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for i in OLD_ROWS..OLD_ROWS + IN_KAFKA {
        let t = trade(i, now_us - 500 + i);
        let payload = version_one(&t, v1);
        producer
            .send(BaseRecord::to(&topic).key(&t.message_id).payload(&payload))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    drop(producer);

    let mut daemon = env.start_daemon("daemon");
    let expected = OLD_ROWS + IN_KAFKA + from_feed;
    wait_until("every row stored", Duration::from_secs(180), || {
        env.count("select count(*) from market.trades") >= expected
    });
    replay.kill();
    std::thread::sleep(Duration::from_secs(2));
    let rows = env.query(
        "select count(*) as n, count(distinct message_id) as d, count(instrument) as with_instrument, \
         sum(case when trade_id like 'BINANCE-old%' and instrument is null then 1 else 0 end) as old_null \
         from market.trades",
    );
    println!("market.trades after the upgrade: {}", rows[0]);
    assert_eq!(
        rows[0]["n"].as_i64(),
        Some(expected),
        "log:\n{}",
        daemon.log_tail()
    );
    assert_eq!(rows[0]["d"].as_i64(), Some(expected));
    assert_eq!(rows[0]["with_instrument"].as_i64(), Some(from_feed));
    assert_eq!(rows[0]["old_null"].as_i64(), Some(OLD_ROWS + IN_KAFKA));
    let new = env.query(
        "select distinct instrument from market.trades where instrument is not null order by 1",
    );
    println!("instruments of the new rows: {new:?}");
    assert!(new.iter().any(|r| r["instrument"] == "BTC-USDT"), "{new:?}");
    assert_eq!(
        env.count("select count(*) from market.dead_letters"),
        0,
        "the version 1 records decode"
    );
    let status = daemon.terminate();
    assert!(
        status.success(),
        "daemon exit {status}; log:\n{}",
        daemon.log_tail()
    );

    // An independent reader sees the evolved table: the old rows with
    // instrument null, the new ones with it.
    let py = env.pyiceberg(
        "pyiceberg_read.py",
        &[
            "--catalog-name",
            "ticklake",
            "--table",
            "market.trades",
            "--columns",
            "message_id,trade_id,instrument",
        ],
    );
    assert_eq!(py["rows"].as_i64(), Some(expected));
    let data = py["data"].as_array().unwrap();
    let null_old = data
        .iter()
        .filter(|r| {
            r["trade_id"].as_str().unwrap().starts_with("BINANCE-old") && r["instrument"].is_null()
        })
        .count() as i64;
    let with = data.iter().filter(|r| r["instrument"].is_string()).count() as i64;
    println!(
        "pyiceberg: {expected} rows, {null_old} old ones with instrument null, {with} with it"
    );
    assert_eq!(null_old, OLD_ROWS + IN_KAFKA);
    assert_eq!(with, from_feed);
}
