//! Schema ids for the Confluent wire format. The embedded default keeps them
//! in a small JSON file in the data directory; a Confluent-compatible Schema
//! Registry client fits behind the same trait.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("schema registry {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("schema for subject {subject} does not parse: {reason}")]
    BadSchema { subject: String, reason: String },
    /// Backward compatibility, as a Confluent registry checks it by default:
    /// the new schema must read every record the subject's latest schema
    /// wrote.
    #[error(
        "schema for subject {subject} cannot read records written under its latest version (id {latest}): {reason}"
    )]
    Incompatible {
        subject: String,
        latest: u32,
        reason: String,
    },
}

/// Assigns and resolves schema ids. Implemented by the local file registry;
/// a Confluent Schema Registry client is the production alternative.
pub trait SchemaRegistry: Send + Sync {
    /// Registers `schema` under `subject` (idempotent) and returns its id.
    /// A schema new to the subject must be backward compatible with the
    /// subject's latest one.
    fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError>;
    /// The id `schema` has under `subject`, without registering it.
    fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError>;
    /// The schema text for an id, if known.
    fn schema(&self, id: u32) -> Result<Option<String>, RegistryError>;
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Store {
    next_id: u32,
    /// id -> (subject, canonical schema)
    schemas: BTreeMap<u32, Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    subject: String,
    schema: String,
}

/// File-backed registry. Several processes (the daemon, `ticklake produce`)
/// may share a data directory, so every read-modify-write holds an exclusive
/// lock on a sibling lock file.
pub struct LocalRegistry {
    path: PathBuf,
    lock_path: PathBuf,
}

impl LocalRegistry {
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(data_dir).map_err(|source| RegistryError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: data_dir.join("schemas.json"),
            lock_path: data_dir.join("schemas.lock"),
        })
    }

    fn io(&self, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> Result<File, RegistryError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| self.io(e))?;
        f.lock().map_err(|e| self.io(e))?;
        Ok(f)
    }

    fn load(&self) -> Result<Store, RegistryError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RegistryError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store {
                next_id: 1,
                ..Store::default()
            }),
            Err(e) => Err(self.io(e)),
        }
    }

    fn save(&self, store: &Store) -> Result<(), RegistryError> {
        // write-then-rename so a crash never leaves a half-written registry
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(store).map_err(|e| RegistryError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(&body).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))
    }
}

/// Canonical form, so whitespace or key order never mints a new id.
fn canonical(subject: &str, schema: &str) -> Result<String, RegistryError> {
    apache_avro::Schema::parse_str(schema)
        .map(|s| s.canonical_form())
        .map_err(|e| RegistryError::BadSchema {
            subject: subject.to_string(),
            reason: e.to_string(),
        })
}

impl SchemaRegistry for LocalRegistry {
    fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let canon = canonical(subject, schema)?;
        let _guard = self.lock()?;
        let mut store = self.load()?;
        if let Some((id, _)) = store
            .schemas
            .iter()
            .find(|(_, e)| e.subject == subject && e.schema == canon)
        {
            return Ok(*id);
        }
        // The subject's latest version: the highest id registered under it.
        if let Some((latest, e)) = store
            .schemas
            .iter()
            .rev()
            .find(|(_, e)| e.subject == subject)
        {
            let bad = |reason: String| RegistryError::Incompatible {
                subject: subject.to_string(),
                latest: *latest,
                reason,
            };
            let old = apache_avro::Schema::parse_str(&e.schema).map_err(|e| bad(e.to_string()))?;
            // As written, not canonical: the canonical form drops the
            // defaults that make an added field readable from old records.
            let new = apache_avro::Schema::parse_str(schema).map_err(|e| bad(e.to_string()))?;
            apache_avro::schema_compatibility::SchemaCompatibility::can_read(&old, &new)
                .map_err(|e| bad(e.to_string()))?;
        }
        let id = store.next_id.max(1);
        store.next_id = id + 1;
        store.schemas.insert(
            id,
            Entry {
                subject: subject.to_string(),
                schema: canon,
            },
        );
        self.save(&store)?;
        Ok(id)
    }

    fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        let canon = canonical(subject, schema)?;
        let _guard = self.lock()?;
        Ok(self
            .load()?
            .schemas
            .iter()
            .find(|(_, e)| e.subject == subject && e.schema == canon)
            .map(|(id, _)| *id))
    }

    fn schema(&self, id: u32) -> Result<Option<String>, RegistryError> {
        let _guard = self.lock()?;
        Ok(self.load()?.schemas.remove(&id).map(|e| e.schema))
    }
}

/// Registers both ticklake schemas and builds the codec for their ids. A
/// data directory an older build wrote has version 1 of the trade schema
/// registered; the codec reads records framed with its id too.
pub fn codec(
    registry: &dyn SchemaRegistry,
) -> Result<crate::kafka::avro::Codec, crate::kafka::avro::AvroError> {
    use crate::kafka::avro::*;
    let failed = |e: RegistryError| AvroError::Field {
        field: "registry",
        reason: e.to_string(),
    };
    let trade = registry
        .register(TRADE_SUBJECT, TRADE_SCHEMA_JSON)
        .map_err(failed)?;
    let trade_v1 = registry
        .lookup(TRADE_SUBJECT, TRADE_SCHEMA_V1_JSON)
        .map_err(failed)?;
    let dl = registry
        .register(DEAD_LETTER_SUBJECT, DEAD_LETTER_SCHEMA_JSON)
        .map_err(|e| AvroError::Field {
            field: "registry",
            reason: e.to_string(),
        })?;
    Ok(Codec::new(trade, dl)?.with_trade_v1_id(trade_v1))
}

#[cfg(test)]
mod tests {
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
        let c = codec(&r).unwrap();
        let v2 = r.lookup(TRADE_SUBJECT, TRADE_SCHEMA_JSON).unwrap().unwrap();
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
        let e = r
            .register(TRADE_SUBJECT, &breaking)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(TRADE_SUBJECT) && e.contains(&format!("id {v2}")),
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
}
