//! Schema ids for the Confluent wire format, behind one trait with two
//! implementations:
//!
//! - `local`: the embedded default, a small JSON file in the data
//!   directory, with a Confluent registry's semantics (an id per distinct
//!   schema across subjects, versions per subject, BACKWARD checks). The
//!   daemon serves it over the Confluent REST API (`api::schema_registry`),
//!   so a standard Kafka consumer with a schema-registry deserializer reads
//!   ticklake's topics unchanged.
//! - `confluent`: a client of an external Confluent-compatible Schema
//!   Registry (`kafka.schema_registry_url`).
//!
//! Schemas are registered under Confluent's TopicNameStrategy subjects
//! (`<topic>-value`), the names a Confluent client uses.

mod confluent;
mod local;

use std::path::PathBuf;
use std::sync::Arc;

pub use confluent::ConfluentRegistry;
pub use local::{LocalRegistry, SubjectVersion, Version};

use crate::config::Config;

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
    #[error("subject {subject} not found")]
    SubjectNotFound { subject: String },
    #[error("version {version} of subject {subject} not found")]
    VersionNotFound { subject: String, version: String },
    /// The schema (an id, or a schema text under a subject) is unknown.
    #[error("schema {what} not found")]
    SchemaNotFound { what: String },
    /// The external registry could not be reached (connection refused,
    /// DNS, timeout): worth retrying later.
    #[error("schema registry {url} (kafka.schema_registry_url) is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The external registry answered with an error; `error_code` is
    /// Confluent's (40401, 409, 42201, ...), or the HTTP status when the
    /// body carried none.
    #[error(
        "schema registry {url} refused {what}: {message} (http {status}, error code {error_code})"
    )]
    Refused {
        url: String,
        what: String,
        status: u16,
        error_code: i64,
        message: String,
    },
    /// The external registry answered something that is not the Confluent
    /// API's answer.
    #[error("schema registry {url} answered {what} with an unexpected body: {reason}")]
    Protocol {
        url: String,
        what: String,
        reason: String,
    },
}

impl RegistryError {
    /// Whether trying again later may succeed: the registry was away or
    /// failed on its side. A refused or unparsable schema stays refused.
    pub fn retryable(&self) -> bool {
        match self {
            RegistryError::Io { .. } | RegistryError::Unreachable { .. } => true,
            RegistryError::Refused { status, .. } => *status >= 500,
            RegistryError::Corrupt { .. }
            | RegistryError::BadSchema { .. }
            | RegistryError::Incompatible { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::SubjectNotFound { .. }
            | RegistryError::VersionNotFound { .. }
            | RegistryError::SchemaNotFound { .. } => false,
        }
    }
}

/// Assigns and resolves schema ids. Implemented by the local file registry
/// and by a Confluent Schema Registry client.
pub trait SchemaRegistry: Send + Sync {
    /// Registers `schema` under `subject` (idempotent) and returns its id.
    /// A schema new to the subject must be backward compatible with the
    /// subject's latest one. The same schema under two subjects has one id.
    fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError>;
    /// The id `schema` has under `subject`, without registering it.
    fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError>;
    /// The schema text for an id, if known.
    fn schema(&self, id: u32) -> Result<Option<String>, RegistryError>;
}

/// Where the daemon serves the local registry over the Confluent REST API
/// on `http.listen` (`api::schema_registry`): a client's base URL is
/// `http://<http.listen>/schema-registry`.
pub const SERVED_PATH: &str = "/schema-registry";

/// Confluent's TopicNameStrategy subject of a topic's record values: what a
/// Confluent serializer registers under and a consumer looks up.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// The registry this config names: the external one at
/// `kafka.schema_registry_url`, or the local file in the data directory.
#[derive(Clone)]
pub enum Registry {
    Local(Arc<LocalRegistry>),
    Confluent(Arc<ConfluentRegistry>),
}

impl Registry {
    /// Opens the local file, or checks that the external registry answers:
    /// a daemon pointed at a registry it cannot reach says so at start,
    /// naming the key, rather than at its first record.
    pub fn open(cfg: &Config) -> Result<Self, RegistryError> {
        let k = &cfg.kafka;
        if k.schema_registry_url.is_empty() {
            return Ok(Registry::Local(Arc::new(LocalRegistry::open(
                &cfg.data_dir_abs(),
            )?)));
        }
        let auth = (!k.schema_registry_user.is_empty()).then_some((
            k.schema_registry_user.as_str(),
            k.schema_registry_password.as_str(),
        ));
        let client = ConfluentRegistry::new(&k.schema_registry_url, auth)?;
        client.check()?;
        Ok(Registry::Confluent(Arc::new(client)))
    }

    pub fn as_dyn(&self) -> &dyn SchemaRegistry {
        match self {
            Registry::Local(r) => r.as_ref(),
            Registry::Confluent(r) => r.as_ref(),
        }
    }

    /// The local registry, which the daemon serves over the Confluent API.
    pub fn local(&self) -> Option<Arc<LocalRegistry>> {
        match self {
            Registry::Local(r) => Some(r.clone()),
            Registry::Confluent(_) => None,
        }
    }

    /// For `/status`: the local file and where it is served, or the
    /// external registry's URL (credentials left out).
    pub fn status(&self, served: bool) -> serde_json::Value {
        match self {
            Registry::Local(r) => serde_json::json!({
                "kind": "local",
                "file": r.path().display().to_string(),
                "served_at": served.then_some(SERVED_PATH),
            }),
            Registry::Confluent(r) => serde_json::json!({
                "kind": "confluent",
                "url": r.shown(),
            }),
        }
    }

    /// `local` or `confluent`, for `/status` and the logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Registry::Local(_) => "local",
            Registry::Confluent(_) => "confluent",
        }
    }
}

/// The trades topics the daemon publishes to: one per feed's exchange
/// (disabled feeds included: records a feed published before it was
/// disabled still land), and the equities topic of `ticklake load asx`.
pub fn trade_topics(cfg: &Config) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    let exchanges = cfg.feeds.values().map(|f| f.exchange.as_str());
    for exchange in exchanges.chain([crate::exchanges::ASX]) {
        let t = cfg.kafka.trades_topic(exchange);
        if !topics.contains(&t) {
            topics.push(t);
        }
    }
    topics
}

/// Registers ticklake's schemas under the subjects of `cfg`'s topics
/// (`<topic>-value`) and builds the codec for their ids. A data directory
/// an older build wrote has version 1 of the trade schema registered under
/// the record-name subject it used then; the codec reads records framed
/// with its id too.
pub fn codec(
    registry: &dyn SchemaRegistry,
    cfg: &Config,
) -> Result<crate::kafka::avro::Codec, crate::kafka::avro::AvroError> {
    use crate::kafka::avro::*;
    let failed = |e: RegistryError| AvroError::Field {
        field: "registry",
        reason: e.to_string(),
    };
    let mut trade: Option<(u32, String)> = None;
    for topic in trade_topics(cfg) {
        let subject = value_subject(&topic);
        let id = registry
            .register(&subject, TRADE_SCHEMA_JSON)
            .map_err(failed)?;
        // A Confluent registry gives one schema one id whatever the
        // subject; the codec frames every trade with a single id.
        match &trade {
            Some((first, first_subject)) if *first != id => {
                return Err(AvroError::Field {
                    field: "registry",
                    reason: format!(
                        "the trade schema has id {first} under {first_subject} but {id} under {subject}; ticklake needs one id per schema across subjects"
                    ),
                });
            }
            Some(_) => {}
            None => trade = Some((id, subject)),
        }
    }
    let trade = match trade {
        Some((id, _)) => id,
        // Not reached: the equities topic is always among them.
        None => {
            return Err(AvroError::Field {
                field: "registry",
                reason: "no trades topic to register the trade schema for".into(),
            });
        }
    };
    let trade_v1 = registry
        .lookup(TRADE_SUBJECT, TRADE_SCHEMA_V1_JSON)
        .map_err(failed)?;
    let dl = registry
        .register(
            &value_subject(&cfg.kafka.dead_letter_topic),
            DEAD_LETTER_SCHEMA_JSON,
        )
        .map_err(failed)?;
    Ok(Codec::new(trade, dl)?.with_trade_v1_id(trade_v1))
}

#[cfg(test)]
mod tests;
