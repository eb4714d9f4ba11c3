//! A client of an external Confluent-compatible Schema Registry
//! (`kafka.schema_registry_url`), behind the same trait as the local file.
//!
//! Blocking, on `ureq` (the project's HTTP client): the trait is sync, and
//! its callers register ticklake's few schemas at start, then frame every
//! record with the ids they got (the codec), so no request is ever on the
//! hot path. `schema_registry_converter` would bring an encoder and decoder
//! ticklake has its own of, reqwest and a second async runtime path, for
//! the three calls needed here.
//!
//! Ids are cached per (subject, schema) and per id: a Confluent id never
//! changes meaning.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use super::{RegistryError, SchemaRegistry};

/// The media type of the Confluent REST API.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// A registry that does not accept the connection within this is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer read: a schema, or Confluent's error body.
const MAX_BODY: u64 = 8 << 20;

pub struct ConfluentRegistry {
    base: url::Url,
    agent: ureq::Agent,
    /// `Basic <base64(user:password)>`, when configured.
    auth: Option<String>,
    ids: Mutex<HashMap<(String, String), u32>>,
    schemas: Mutex<HashMap<u32, String>>,
}

/// Confluent's error body.
#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

/// One answer: status and body text.
struct Answer {
    status: u16,
    body: String,
}

impl ConfluentRegistry {
    /// A client of the registry at `url` (`http(s)://host:port`, with a
    /// path prefix when the registry is served under one). No IO.
    pub fn new(url: &str, auth: Option<(&str, &str)>) -> Result<Self, RegistryError> {
        let bad = |reason: String| RegistryError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let base = url::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad("not an http or https URL".into()));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent("ticklake")
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .provider(ureq::tls::TlsProvider::NativeTls)
                    .build(),
            )
            .build()
            .into();
        let auth = auth.map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        Ok(Self {
            base,
            agent,
            auth,
            ids: Mutex::new(HashMap::new()),
            schemas: Mutex::new(HashMap::new()),
        })
    }

    /// The URL without credentials, for messages.
    pub fn shown(&self) -> String {
        let mut u = self.base.clone();
        let _ = u.set_password(None);
        let _ = u.set_username("");
        u.to_string()
    }

    /// The endpoint `segments` below the base URL, each segment escaped
    /// (a subject may hold any character).
    fn endpoint(&self, segments: &[&str]) -> String {
        let mut u = self.base.clone();
        if let Ok(mut path) = u.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        u.to_string()
    }

    fn call(
        &self,
        what: &str,
        segments: &[&str],
        body: Option<String>,
    ) -> Result<Answer, RegistryError> {
        let url = self.endpoint(segments);
        let unreachable = |e: ureq::Error| RegistryError::Unreachable {
            url: self.shown(),
            reason: format!("{what}: {e}"),
        };
        let sent = match body {
            Some(body) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Accept", CONTENT_TYPE)
                    .header("Content-Type", CONTENT_TYPE);
                if let Some(a) = &self.auth {
                    req = req.header("Authorization", a);
                }
                req.send(body)
            }
            None => {
                let mut req = self.agent.get(&url).header("Accept", CONTENT_TYPE);
                if let Some(a) = &self.auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        };
        let mut res = sent.map_err(unreachable)?;
        let status = res.status().as_u16();
        let body = res
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(unreachable)?;
        Ok(Answer { status, body })
    }

    /// A non-2xx answer as an error: Confluent's not-found codes as the
    /// typed not-founds, an invalid schema as `BadSchema`, the rest as
    /// `Refused` with the registry's own code and message.
    fn refused(&self, what: &str, subject: Option<&str>, a: Answer) -> RegistryError {
        let parsed: Option<ErrorBody> = serde_json::from_str(&a.body).ok();
        let code = parsed
            .as_ref()
            .and_then(|e| e.error_code)
            .unwrap_or(i64::from(a.status));
        let message = parsed
            .and_then(|e| e.message)
            .unwrap_or_else(|| a.body.chars().take(200).collect());
        let subject = subject.unwrap_or_default().to_string();
        match code {
            40401 => RegistryError::SubjectNotFound { subject },
            40402 => RegistryError::VersionNotFound {
                subject,
                version: message,
            },
            40403 => RegistryError::SchemaNotFound {
                what: format!("{what}: {message}"),
            },
            42201 => RegistryError::BadSchema {
                subject,
                reason: message,
            },
            _ => RegistryError::Refused {
                url: self.shown(),
                what: what.to_string(),
                status: a.status,
                error_code: code,
                message,
            },
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        a: &Answer,
    ) -> Result<T, RegistryError> {
        serde_json::from_str(&a.body).map_err(|e| RegistryError::Protocol {
            url: self.shown(),
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    /// Asks the registry for its global compatibility level, the cheapest
    /// call every Confluent-compatible registry answers: at start, so a
    /// wrong URL or credentials fail the start, naming the key.
    pub fn check(&self) -> Result<(), RegistryError> {
        let what = "the global config";
        let a = self.call(what, &["config"], None)?;
        if !(200..300).contains(&a.status) {
            return Err(self.refused(what, None, a));
        }
        self.parse::<serde_json::Map<String, serde_json::Value>>(what, &a)
            .map(|_| ())
    }

    fn cached(&self, subject: &str, schema: &str) -> Option<u32> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.get(&(subject.to_string(), schema.to_string())).copied()
    }

    fn remember(&self, subject: &str, schema: &str, id: u32) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.insert((subject.to_string(), schema.to_string()), id);
        let mut schemas = self.schemas.lock().unwrap_or_else(|e| e.into_inner());
        schemas.entry(id).or_insert_with(|| schema.to_string());
    }
}

fn schema_body(schema: &str) -> String {
    serde_json::json!({ "schema": schema }).to_string()
}

impl SchemaRegistry for ConfluentRegistry {
    fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        if let Some(id) = self.cached(subject, schema) {
            return Ok(id);
        }
        let what = format!("registering a schema under subject {subject}");
        let a = self.call(
            &what,
            &["subjects", subject, "versions"],
            Some(schema_body(schema)),
        )?;
        if !(200..300).contains(&a.status) {
            return Err(self.refused(&what, Some(subject), a));
        }
        let id = self.parse::<IdBody>(&what, &a)?.id;
        self.remember(subject, schema, id);
        Ok(id)
    }

    fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        if let Some(id) = self.cached(subject, schema) {
            return Ok(Some(id));
        }
        let what = format!("looking up a schema under subject {subject}");
        let a = self.call(&what, &["subjects", subject], Some(schema_body(schema)))?;
        if !(200..300).contains(&a.status) {
            return match self.refused(&what, Some(subject), a) {
                RegistryError::SubjectNotFound { .. } | RegistryError::SchemaNotFound { .. } => {
                    Ok(None)
                }
                e => Err(e),
            };
        }
        let id = self.parse::<IdBody>(&what, &a)?.id;
        self.remember(subject, schema, id);
        Ok(Some(id))
    }

    fn schema(&self, id: u32) -> Result<Option<String>, RegistryError> {
        if let Some(s) = self
            .schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(Some(s.clone()));
        }
        let what = format!("schema id {id}");
        let a = self.call(&what, &["schemas", "ids", &id.to_string()], None)?;
        if !(200..300).contains(&a.status) {
            return match self.refused(&what, None, a) {
                RegistryError::SchemaNotFound { .. } => Ok(None),
                e => Err(e),
            };
        }
        let schema = self.parse::<SchemaBody>(&what, &a)?.schema;
        self.schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, schema.clone());
        Ok(Some(schema))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_the_base_path_and_escape_subjects() {
        let r = ConfluentRegistry::new("http://u:p@127.0.0.1:8081/schema-registry/", None).unwrap();
        assert_eq!(
            r.endpoint(&["subjects", "a b/c-value", "versions"]),
            "http://u:p@127.0.0.1:8081/schema-registry/subjects/a%20b%2Fc-value/versions"
        );
        assert_eq!(r.shown(), "http://127.0.0.1:8081/schema-registry/");
        let bare = ConfluentRegistry::new("https://registry.example", None).unwrap();
        assert_eq!(
            bare.endpoint(&["schemas", "ids", "7"]),
            "https://registry.example/schemas/ids/7"
        );
        for bad in ["registry:8081", "ftp://registry", "not a url"] {
            assert!(ConfluentRegistry::new(bad, None).is_err(), "{bad}");
        }
    }

    /// Nobody listens on the port: the start check fails fast, naming the
    /// key, and is worth retrying.
    #[test]
    fn an_unreachable_registry_is_a_retryable_error_naming_the_key() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r =
            ConfluentRegistry::new(&format!("http://127.0.0.1:{port}"), Some(("u", "p"))).unwrap();
        let e = r.check().unwrap_err();
        assert!(matches!(e, RegistryError::Unreachable { .. }), "{e:?}");
        assert!(e.retryable());
        assert!(e.to_string().contains("kafka.schema_registry_url"), "{e}");
    }
}
