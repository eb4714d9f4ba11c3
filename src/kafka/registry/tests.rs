//! The local registry's Confluent semantics, and the codec on top of it.

use super::*;

#[test]
fn ids_are_stable_and_per_schema() {
    let dir = tempfile::tempdir().unwrap();
    let r = LocalRegistry::open(dir.path()).unwrap();
    let a = r
        .register("t", crate::kafka::avro::TRADE_SCHEMA_JSON)
        .unwrap();
    let b = r
        .register("d", crate::kafka::avro::DEAD_LETTER_SCHEMA_JSON)
        .unwrap();
    assert_ne!(a, b);
    // a second process opening the same directory sees the same ids
    let r2 = LocalRegistry::open(dir.path()).unwrap();
    assert_eq!(
        r2.register("t", crate::kafka::avro::TRADE_SCHEMA_JSON)
            .unwrap(),
        a
    );
    assert!(r2.schema(a).unwrap().unwrap().contains("TradeV2"));
    assert_eq!(r2.schema(999).unwrap(), None);
}

/// A data directory made by a build that knew only version 1: the new
/// schema gets a new id, and the codec reads records of both.
#[test]
fn a_new_version_gets_a_new_id_and_an_incompatible_one_is_refused() {
    use crate::kafka::avro::*;
    let dir = tempfile::tempdir().unwrap();
    let r = LocalRegistry::open(dir.path()).unwrap();
    let v1 = r.register(TRADE_SUBJECT, TRADE_SCHEMA_V1_JSON).unwrap();
    let dl = r
        .register(DEAD_LETTER_SUBJECT, DEAD_LETTER_SCHEMA_JSON)
        .unwrap();
    let c = codec(&r, &crate::config::Config::default()).unwrap();
    let v2 = r
        .lookup(
            &value_subject("market.crypto.trades.binance"),
            TRADE_SCHEMA_JSON,
        )
        .unwrap()
        .unwrap();
    assert!(v2 != v1 && v2 != dl, "{v1} {v2} {dl}");
    let t = crate::model::TradeV2::builder("KRAKEN", "XBT/USD", "1", 5)
        .instrument(Some("BTC-USD"))
        .build();
    let bytes = c.encode_trade(&t).unwrap();
    assert_eq!(bytes[1..5], v2.to_be_bytes());
    assert_eq!(c.decode_trade(&bytes).unwrap(), t);
    // A required field added without a default cannot read version 2's
    // records: refused, naming the subject and the latest id.
    let breaking = TRADE_SCHEMA_JSON.replace(
        r#"{"name": "instrument", "type": ["null", "string"], "default": null}"#,
        r#"{"name": "instrument", "type": ["null", "string"], "default": null},
{"name": "venue_id", "type": "string"}"#,
    );
    assert_ne!(breaking, TRADE_SCHEMA_JSON);
    let binance = value_subject("market.crypto.trades.binance");
    let e = r.register(&binance, &breaking).unwrap_err().to_string();
    assert!(
        e.contains(&binance) && e.contains(&format!("id {v2}")),
        "{e}"
    );
}

#[test]
fn corrupt_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schemas.json"), b"{not json").unwrap();
    let r = LocalRegistry::open(dir.path()).unwrap();
    let e = r
        .register("t", crate::kafka::avro::TRADE_SCHEMA_JSON)
        .unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
}

const BINANCE: &str = "market.crypto.trades.binance-value";
const KRAKEN: &str = "market.crypto.trades.kraken-value";

/// As in a Confluent registry: one id per schema across subjects, versions
/// per subject in registration order, and the TopicNameStrategy subjects
/// of the config's topics after `codec`.
#[test]
fn one_id_per_schema_across_subjects_and_versions_per_subject() {
    use crate::kafka::avro::*;
    let dir = tempfile::tempdir().unwrap();
    let r = LocalRegistry::open(dir.path()).unwrap();
    let v1 = r.register(BINANCE, TRADE_SCHEMA_V1_JSON).unwrap();
    let v2 = r.register(BINANCE, TRADE_SCHEMA_JSON).unwrap();
    assert_ne!(v1, v2);
    assert_eq!(r.register(KRAKEN, TRADE_SCHEMA_JSON).unwrap(), v2);
    // whitespace and key order do not make another schema
    let reformatted: serde_json::Value = serde_json::from_str(TRADE_SCHEMA_JSON).unwrap();
    assert_eq!(
        r.register(KRAKEN, &serde_json::to_string_pretty(&reformatted).unwrap())
            .unwrap(),
        v2
    );
    assert_eq!(r.versions(BINANCE).unwrap(), vec![1, 2]);
    assert_eq!(r.versions(KRAKEN).unwrap(), vec![1]);
    let latest = r.subject_version(BINANCE, Version::Latest).unwrap();
    assert_eq!((latest.version, latest.id), (2, v2));
    assert_eq!(
        r.subject_version(BINANCE, Version::Number(1)).unwrap().id,
        v1
    );
    assert!(matches!(
        r.subject_version(BINANCE, Version::Number(3)),
        Err(RegistryError::VersionNotFound { .. })
    ));
    assert!(matches!(
        r.versions("nope-value"),
        Err(RegistryError::SubjectNotFound { .. })
    ));
    assert_eq!(
        r.usages(v2).unwrap(),
        vec![(BINANCE.to_string(), 2), (KRAKEN.to_string(), 1)]
    );
    assert!(matches!(
        r.usages(999),
        Err(RegistryError::SchemaNotFound { .. })
    ));
    assert_eq!(r.lookup_version(KRAKEN, TRADE_SCHEMA_JSON).unwrap().id, v2);
    assert!(matches!(
        r.lookup_version(KRAKEN, TRADE_SCHEMA_V1_JSON),
        Err(RegistryError::SchemaNotFound { .. })
    ));
    assert_eq!(r.lookup(KRAKEN, TRADE_SCHEMA_V1_JSON).unwrap(), None);

    // the codec registers under every topic's `<topic>-value`
    let cfg = crate::config::Config::default();
    let c = codec(&r, &cfg).unwrap();
    let subjects = r.subjects().unwrap();
    for topic in trade_topics(&cfg) {
        assert!(
            subjects.contains(&value_subject(&topic)),
            "{topic}: {subjects:?}"
        );
    }
    assert!(
        subjects.contains(&"market.dead_letters-value".to_string()),
        "{subjects:?}"
    );
    let t = crate::model::TradeV2::builder("BINANCE", "BTCUSDT", "1", 5).build();
    assert_eq!(c.encode_trade(&t).unwrap()[1..5], v2.to_be_bytes());
}

/// What a Confluent consumer is served is the schema as written: its
/// decimals and timestamps keep their logical types and the added field
/// its default.
#[test]
fn the_schema_is_kept_as_written() {
    use crate::kafka::avro::*;
    let dir = tempfile::tempdir().unwrap();
    let r = LocalRegistry::open(dir.path()).unwrap();
    let id = r.register(BINANCE, TRADE_SCHEMA_JSON).unwrap();
    let text = r.schema(id).unwrap().unwrap();
    let served: serde_json::Value = serde_json::from_str(&text).unwrap();
    let written: serde_json::Value = serde_json::from_str(TRADE_SCHEMA_JSON).unwrap();
    assert_eq!(served, written);
    assert!(
        text.contains("timestamp-micros") && text.contains("\"default\":null"),
        "{text}"
    );
}

/// A registry file an older build wrote: ids per (subject, schema), the
/// Parsing Canonical Form, no versions. Its subjects get versions, and the
/// schema registered again keeps its id, now stored as written.
#[test]
fn a_file_from_an_older_build_keeps_its_ids() {
    use crate::kafka::avro::*;
    let dir = tempfile::tempdir().unwrap();
    let old = serde_json::json!({
        "next_id": 4,
        "schemas": {
            "1": {"subject": TRADE_SUBJECT, "schema": trade_schema_v1().canonical_form()},
            "2": {"subject": DEAD_LETTER_SUBJECT, "schema": dead_letter_schema().canonical_form()},
            "3": {"subject": TRADE_SUBJECT, "schema": trade_schema().canonical_form()},
        }
    });
    std::fs::write(dir.path().join("schemas.json"), old.to_string()).unwrap();
    let r = LocalRegistry::open(dir.path()).unwrap();
    assert_eq!(r.versions(TRADE_SUBJECT).unwrap(), vec![1, 2]);
    assert!(!r.schema(3).unwrap().unwrap().contains("logicalType"));
    let c = codec(&r, &crate::config::Config::default()).unwrap();
    let t = crate::model::TradeV2::builder("BINANCE", "BTCUSDT", "1", 5).build();
    assert_eq!(c.encode_trade(&t).unwrap()[1..5], 3u32.to_be_bytes());
    assert!(r.schema(3).unwrap().unwrap().contains("logicalType"));
    // version 1 was looked up, and is served as written too
    assert!(r.schema(1).unwrap().unwrap().contains("logicalType"));
    // a schema registered in canonical form today is kept as such: the
    // same schema as written is another schema, with another id
    let canonical = crate::kafka::avro::dead_letter_schema().canonical_form();
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = LocalRegistry::open(fresh_dir.path()).unwrap();
    let a = fresh.register("d-value", &canonical).unwrap();
    let b = fresh.register("d-value", DEAD_LETTER_SCHEMA_JSON).unwrap();
    assert_ne!(a, b);
    let kept: serde_json::Value = serde_json::from_str(&fresh.schema(a).unwrap().unwrap()).unwrap();
    assert_eq!(
        kept,
        serde_json::from_str::<serde_json::Value>(&canonical).unwrap()
    );
    assert_eq!(
        r.usages(3).unwrap().len(),
        trade_topics(&crate::config::Config::default()).len() + 1
    );
}

#[test]
fn compatibility_is_checked_against_the_version_asked() {
    use crate::kafka::avro::*;
    let dir = tempfile::tempdir().unwrap();
    let r = LocalRegistry::open(dir.path()).unwrap();
    r.register(BINANCE, TRADE_SCHEMA_V1_JSON).unwrap();
    assert_eq!(
        r.check_compatible(BINANCE, Version::Latest, TRADE_SCHEMA_JSON)
            .unwrap(),
        Ok(())
    );
    let breaking = TRADE_SCHEMA_JSON.replace(
        r#"{"name": "instrument", "type": ["null", "string"], "default": null}"#,
        r#"{"name": "instrument", "type": "string"}"#,
    );
    assert!(
        r.check_compatible(BINANCE, Version::Number(1), &breaking)
            .unwrap()
            .is_err()
    );
    // a union narrowed to one branch reads only some of the records
    r.register(BINANCE, TRADE_SCHEMA_JSON).unwrap();
    let reason = r
        .check_compatible(BINANCE, Version::Latest, &breaking)
        .unwrap()
        .unwrap_err();
    assert!(reason.contains("union"), "{reason}");
    assert!(matches!(
        r.register(BINANCE, &breaking),
        Err(RegistryError::Incompatible { .. })
    ));
    assert!(matches!(
        r.check_compatible(BINANCE, Version::Latest, "{not json"),
        Err(RegistryError::BadSchema { .. })
    ));
    assert_eq!(Version::parse("latest"), Some(Version::Latest));
    assert_eq!(Version::parse("-1"), Some(Version::Latest));
    assert_eq!(Version::parse("2"), Some(Version::Number(2)));
    assert_eq!(Version::parse("0"), None);
    assert_eq!(Version::parse("x"), None);
}
