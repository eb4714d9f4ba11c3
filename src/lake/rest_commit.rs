//! Commits that ticklake builds itself (compaction's `replace`, partition
//! retention's `delete`), sent to a REST catalog server.
//!
//! On a SQL catalog those commits are a metadata file ticklake writes and
//! a compare-and-set of the catalog's pointer (`compact::CatalogDb::swap`).
//! A REST server keeps its pointer to itself and takes a commit as updates
//! and requirements instead (`POST /v1/{prefix}/namespaces/{ns}/tables/{t}`,
//! a `CommitTableRequest`): it applies the updates, and writes the metadata
//! file, only if every requirement holds. iceberg-rust's REST client sends
//! exactly that request, but only for a `TableCommit` built by its own
//! transaction actions (the builder is crate-private), and no action of
//! iceberg 0.10 adds a snapshot that replaces or deletes files. So this
//! sends the request itself, with the updates and requirements serialized
//! by iceberg's own types.
//!
//! The compare-and-set becomes `assert-ref-snapshot-id`: `main` must still
//! be at the snapshot the commit was built on, which fails for any commit
//! that landed since, the same cases the pointer swap catches for the
//! table's data. `assert-table-uuid`, `assert-current-schema-id` and
//! `assert-default-spec-id` keep a commit off a table dropped and made
//! again, or one whose schema or partitioning moved.
//!
//! The server is reached as the catalog client reaches it, from the same
//! keys: `lake.catalog_uri`, `lake.catalog_warehouse` (sent to
//! `/v1/config`), and
//! from `lake.catalog_properties` `token` (a bearer token) or `credential`
//! (`client_id:secret`, OAuth2 client credentials at `oauth2-server-uri`,
//! by default the server's `/v1/oauth/tokens`, with `scope`, by default
//! `catalog`, and `audience` and `resource` when set), `prefix`, and
//! `header.<name>` headers. `/v1/config`'s defaults and overrides apply as
//! they do for the client (overrides win over the properties, which win
//! over defaults). With `rest.sigv4-enabled`, requests go through the
//! same SigV4 signer as the client's (`sigv4`).

use std::collections::BTreeMap;

use iceberg::spec::{MAIN_BRANCH, Snapshot, SnapshotReference, SnapshotRetention, TableMetadata};
use iceberg::{TableIdent, TableRequirement, TableUpdate};
use reqwest::StatusCode;
use serde::Serialize;

use crate::config::{CatalogKind, Config};

/// How long a request may take: a commit is small, and maintenance holds
/// no lock a slow server could stall beyond its own run.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RestCommitError {
    #[error("REST catalog {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("REST catalog {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    /// A 5xx answer to a commit: the server may or may not have applied
    /// it. The next maintenance run reads the table as it is.
    #[error("REST catalog {url}: HTTP {status}, the commit's state is unknown: {body}")]
    Unknown {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("REST catalog: {0}")]
    Config(String),
    #[error("REST catalog: {0}")]
    SigV4(#[from] super::sigv4::SigV4Error),
}

/// The server's session: where tables are, and the bearer token.
#[derive(Debug, Clone)]
struct Session {
    uri: String,
    prefix: Option<String>,
    token: Option<String>,
}

/// A REST catalog server's commit endpoint.
#[derive(Debug)]
pub struct RestCommits {
    http: reqwest::Client,
    uri: String,
    warehouse: Option<String>,
    props: BTreeMap<String, String>,
    session: tokio::sync::Mutex<Option<Session>>,
}

#[derive(Serialize)]
struct CommitTableRequest<'a> {
    identifier: &'a TableIdent,
    requirements: &'a [TableRequirement],
    updates: &'a [TableUpdate],
}

#[derive(serde::Deserialize, Default)]
struct ConfigResponse {
    #[serde(default)]
    defaults: BTreeMap<String, String>,
    #[serde(default)]
    overrides: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
}

impl RestCommits {
    /// The commit endpoint of `cfg`'s catalog when it is a REST catalog.
    pub fn open(cfg: &Config) -> Result<Option<Self>, RestCommitError> {
        if cfg.lake.catalog != CatalogKind::Rest {
            return Ok(None);
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| RestCommitError::Config(format!("building the HTTP client: {e}")))?;
        let mut props = cfg.lake.catalog_properties.clone();
        // With SigV4, through the same signer as the catalog client.
        let uri = match super::sigv4::front(cfg)? {
            Some(front) => {
                let (k, v) = front.header_property();
                props.insert(k, v);
                front.uri
            }
            None => cfg.lake.catalog_uri.trim_end_matches('/').to_string(),
        };
        Ok(Some(Self {
            http,
            uri,
            warehouse: cfg.catalog_warehouse(),
            props,
            session: tokio::sync::Mutex::new(None),
        }))
    }

    /// Makes `snapshot` (built on `meta`'s current snapshot, its parent)
    /// the head of `ident`'s `main`, if `main` is still at its parent and
    /// the table is still the one of `meta`, with its schema and
    /// partitioning: `Ok(false)` when another commit landed first.
    pub async fn commit_snapshot(
        &self,
        ident: &TableIdent,
        meta: &TableMetadata,
        snapshot: Snapshot,
    ) -> Result<bool, RestCommitError> {
        let requirements = [
            TableRequirement::UuidMatch { uuid: meta.uuid() },
            TableRequirement::RefSnapshotIdMatch {
                r#ref: MAIN_BRANCH.to_string(),
                snapshot_id: snapshot.parent_snapshot_id(),
            },
            TableRequirement::CurrentSchemaIdMatch {
                current_schema_id: meta.current_schema_id(),
            },
            TableRequirement::DefaultSpecIdMatch {
                default_spec_id: meta.default_partition_spec_id(),
            },
        ];
        let head = SnapshotReference::new(
            snapshot.snapshot_id(),
            SnapshotRetention::branch(None, None, None),
        );
        let updates = [
            TableUpdate::AddSnapshot { snapshot },
            TableUpdate::SetSnapshotRef {
                ref_name: MAIN_BRANCH.to_string(),
                reference: head,
            },
        ];
        self.commit(ident, &requirements, &updates).await
    }

    /// Commits `updates` to `ident` if `requirements` hold: `Ok(false)`
    /// when the server refused it for a failed requirement (409: another
    /// commit landed first), `Ok(true)` when it is committed.
    pub async fn commit(
        &self,
        ident: &TableIdent,
        requirements: &[TableRequirement],
        updates: &[TableUpdate],
    ) -> Result<bool, RestCommitError> {
        let body = CommitTableRequest {
            identifier: ident,
            requirements,
            updates,
        };
        // One retry with a fresh token: a token may expire between runs.
        for fresh in [false, true] {
            let session = self.session(fresh).await?;
            let url = table_url(&session, ident)?;
            let mut req = self.http.post(url.clone()).json(&body);
            req = self.authorized(req, &session);
            let resp = req.send().await.map_err(|source| RestCommitError::Http {
                url: url.to_string(),
                source,
            })?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !fresh {
                continue;
            }
            if status.is_success() {
                return Ok(true);
            }
            if status == StatusCode::CONFLICT {
                return Ok(false);
            }
            let body = resp.text().await.unwrap_or_default();
            let url = url.to_string();
            return Err(if status.is_server_error() {
                RestCommitError::Unknown { url, status, body }
            } else {
                RestCommitError::Status { url, status, body }
            });
        }
        unreachable!("the second attempt returns")
    }

    fn authorized(
        &self,
        mut req: reqwest::RequestBuilder,
        session: &Session,
    ) -> reqwest::RequestBuilder {
        for (k, v) in &self.props {
            if let Some(name) = k.strip_prefix("header.") {
                req = req.header(name, v);
            }
        }
        if let Some(token) = &session.token {
            req = req.bearer_auth(token);
        }
        req
    }

    /// The session, fetched once and again when `fresh`: a token, then
    /// the server's config (which a secured server answers only with it).
    async fn session(&self, fresh: bool) -> Result<Session, RestCommitError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref().filter(|_| !fresh) {
            return Ok(s.clone());
        }
        let mut session = Session {
            uri: self.uri.clone(),
            prefix: None,
            token: self.token().await?,
        };
        let mut url = format!("{}/v1/config", self.uri);
        if let Some(w) = &self.warehouse {
            url = format!(
                "{url}?warehouse={}",
                url::form_urlencoded::byte_serialize(w.as_bytes()).collect::<String>()
            );
        }
        let config: ConfigResponse =
            json_of(self.authorized(self.http.get(&url), &session), url).await?;
        let mut merged = config.defaults;
        merged.extend(self.props.clone());
        merged.extend(config.overrides);
        if let Some(uri) = merged.get("uri") {
            session.uri = uri.trim_end_matches('/').to_string();
        }
        session.prefix = merged.get("prefix").filter(|p| !p.is_empty()).cloned();
        *guard = Some(session.clone());
        Ok(session)
    }

    /// The bearer token: `token` as given, or one the OAuth2 token
    /// endpoint issues for `credential`.
    async fn token(&self) -> Result<Option<String>, RestCommitError> {
        if let Some(t) = self.props.get("token") {
            return Ok(Some(t.clone()));
        }
        let Some(credential) = self.props.get("credential") else {
            return Ok(None);
        };
        let (id, secret) = match credential.split_once(':') {
            Some((id, secret)) => (Some(id), secret),
            None => (None, credential.as_str()),
        };
        let url = self
            .props
            .get("oauth2-server-uri")
            .cloned()
            .unwrap_or_else(|| format!("{}/v1/oauth/tokens", self.uri));
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_secret", secret),
            (
                "scope",
                self.props.get("scope").map_or("catalog", String::as_str),
            ),
        ];
        if let Some(id) = id {
            form.push(("client_id", id));
        }
        for key in ["audience", "resource"] {
            if let Some(v) = self.props.get(key) {
                form.push((key, v));
            }
        }
        let token: TokenResponse = json_of(self.http.post(&url).form(&form), url).await?;
        Ok(Some(token.access_token))
    }
}

/// The JSON answer to `req` (sent to `url`), which must be a success.
async fn json_of<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    url: String,
) -> Result<T, RestCommitError> {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(source) => return Err(RestCommitError::Http { url, source }),
    };
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(RestCommitError::Status { url, status, body });
    }
    resp.json()
        .await
        .map_err(|source| RestCommitError::Http { url, source })
}

/// `{uri}/v1[/{prefix}]/namespaces/{ns}/tables/{name}`: the namespace's
/// levels joined by the unit separator, each segment percent-encoded.
fn table_url(session: &Session, ident: &TableIdent) -> Result<url::Url, RestCommitError> {
    let mut url = url::Url::parse(&session.uri)
        .map_err(|e| RestCommitError::Config(format!("lake.catalog_uri {}: {e}", session.uri)))?;
    {
        let mut segments = url.path_segments_mut().map_err(|()| {
            RestCommitError::Config(format!(
                "lake.catalog_uri {} cannot be a base URL",
                session.uri
            ))
        })?;
        segments.pop_if_empty().push("v1");
        if let Some(p) = &session.prefix {
            segments.extend(p.split('/').filter(|s| !s.is_empty()));
        }
        segments
            .push("namespaces")
            .push(&ident.namespace().join("\u{1f}"))
            .push("tables")
            .push(ident.name());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_url_has_the_prefix_and_the_namespace_levels_encoded() {
        let s = Session {
            uri: "https://catalog.example:8181/api/catalog".into(),
            prefix: Some("wh 1".into()),
            token: None,
        };
        let ident = TableIdent::from_strs(["a", "b", "trades"]).unwrap();
        assert_eq!(
            table_url(&s, &ident).unwrap().as_str(),
            "https://catalog.example:8181/api/catalog/v1/wh%201/namespaces/a%1Fb/tables/trades"
        );
        let s = Session {
            uri: "http://127.0.0.1:1/".into(),
            prefix: None,
            token: None,
        };
        let ident = TableIdent::from_strs(["market", "trades"]).unwrap();
        assert_eq!(
            table_url(&s, &ident).unwrap().as_str(),
            "http://127.0.0.1:1/v1/namespaces/market/tables/trades"
        );
    }

    #[test]
    fn a_sql_catalog_has_no_rest_commits() {
        let cfg = Config::default();
        assert!(RestCommits::open(&cfg).unwrap().is_none());
    }
}
