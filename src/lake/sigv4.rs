//! AWS Signature Version 4 for a REST catalog: AWS's Iceberg REST
//! endpoints (Glue's `https://glue.<region>.amazonaws.com/iceberg`) refuse
//! every request that is not signed with the caller's AWS credentials.
//!
//! iceberg-rust 0.10's REST client does not sign, and has no hook to: it
//! takes a plain `reqwest::Client`, while a signature covers each
//! request's method, path, query, headers and body. So with
//! `rest.sigv4-enabled = "true"` the process starts a signer, a small HTTP
//! server on 127.0.0.1 in front of the catalog: it takes each request of
//! the catalog client (and of ticklake's own commits, `rest_commit`),
//! signs it with `object_store`'s SigV4 signer and the credentials the
//! warehouse's S3 client finds (`[lake.s3]`, the environment, web
//! identity, container or instance credentials), sends it on to the
//! catalog, and hands back the answer. Iceberg's Java client signs the
//! same way (`RESTSigV4Signer`), and reads the same properties.
//!
//! The signer answers only requests that carry a random key, which the
//! process hands its own clients as a header (`header.<name>`, which
//! iceberg's client adds to every request): another user of the machine
//! cannot have requests signed with the daemon's credentials.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, RwLock};

use actix_web::{HttpRequest, HttpResponse, web};
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::HttpRequestBody;

use crate::config::catalog::{SigV4Props, sigv4_keys, sigv4_props};
use crate::config::{CatalogKind, Config, S3Config};

/// The header carrying the signer's key. Never forwarded.
pub const KEY_HEADER: &str = "x-ticklake-signer-key";

/// How long the catalog may take to answer one request.
const UPSTREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Request headers not passed on: the connection's own, the signer's key,
/// and `accept-encoding` (the answer is handed back as it came, so it must
/// come unencoded).
const NOT_FORWARDED: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "accept-encoding",
    KEY_HEADER,
];

#[derive(Debug, thiserror::Error)]
pub enum SigV4Error {
    #[error("{key}: {why}")]
    Config { key: String, why: String },
    #[error("AWS credentials for the REST catalog: {0}")]
    Credentials(#[source] object_store::Error),
    #[error("starting the REST catalog's signer: {0}")]
    Start(#[source] std::io::Error),
}

/// Where the catalog's clients send their requests when signing is on.
#[derive(Debug, Clone)]
pub struct Front {
    /// `http://127.0.0.1:PORT`, in place of `lake.catalog_uri`.
    pub uri: String,
    /// The value of [`KEY_HEADER`] the signer requires.
    pub key: String,
}

impl Front {
    /// The catalog property that makes iceberg's client send the key.
    pub fn header_property(&self) -> (String, String) {
        (format!("header.{KEY_HEADER}"), self.key.clone())
    }
}

/// The signer in front of `cfg`'s catalog, when it asks for SigV4:
/// started on first use and kept for the life of the process, one per
/// catalog, service, region and identity.
pub fn front(cfg: &Config) -> Result<Option<Front>, SigV4Error> {
    if cfg.lake.catalog != CatalogKind::Rest {
        return Ok(None);
    }
    let props = sigv4_props(&cfg.lake.catalog_properties)
        .map_err(|(key, why)| SigV4Error::Config { key, why })?;
    let Some(props) = props else {
        return Ok(None);
    };
    let keys = props
        .keys
        .as_ref()
        .map(|(id, secret, token)| (id.as_str(), secret.as_str(), token.as_deref()));
    let (credentials, found_region) =
        super::store::aws_credentials(&cfg.lake.s3, keys).map_err(SigV4Error::Credentials)?;
    let region = props
        .region
        .clone()
        .or(found_region)
        .ok_or_else(|| SigV4Error::Config {
            key: format!("lake.catalog_properties.\"{}\"", sigv4_keys::SIGNING_REGION),
            why: "no region to sign for: set it, or [lake.s3] region, or AWS_REGION".into(),
        })?;
    let upstream = cfg.lake.catalog_uri.trim_end_matches('/').to_string();
    let id = identity(&upstream, &props, &region, &cfg.lake.s3);
    static FRONTS: OnceLock<Mutex<HashMap<String, Front>>> = OnceLock::new();
    let mut fronts = FRONTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(f) = fronts.get(&id) {
        return Ok(Some(f.clone()));
    }
    let signer = Signer {
        upstream: RwLock::new(upstream),
        service: props.service,
        region,
        credentials,
        http: reqwest::Client::builder()
            .timeout(UPSTREAM_TIMEOUT)
            .build()
            .map_err(|e| SigV4Error::Start(std::io::Error::other(e)))?,
        key: uuid::Uuid::new_v4().simple().to_string(),
    };
    let f = start(signer)?;
    fronts.insert(id, f.clone());
    Ok(Some(f))
}

/// What makes two signers differ: the catalog, service and region, and the
/// identity, from the `rest.*` keys or else from `[lake.s3]`'s (two
/// configs that differ only there sign as different principals). The
/// credentials themselves stay in the process's memory only, as they
/// already are in its config.
fn identity(upstream: &str, props: &SigV4Props, region: &str, s3: &S3Config) -> String {
    let keys = match &props.keys {
        Some((id, secret, token)) => format!("rest\n{id}\n{secret}\n{token:?}"),
        None => format!(
            "s3\n{:?}\n{:?}\n{:?}",
            s3.access_key_id, s3.secret_access_key, s3.session_token
        ),
    };
    format!("{upstream}\n{}\n{region}\n{keys}", props.service)
}

struct Signer {
    /// `lake.catalog_uri` without a trailing `/`, or where the catalog's
    /// `/v1/config` moved its clients (`overrides.uri`): a request's path
    /// and query are appended to it.
    upstream: RwLock<String>,
    service: String,
    region: String,
    credentials: AwsCredentialProvider,
    http: reqwest::Client,
    key: String,
}

/// Binds a free loopback port now (so a client may connect at once: the
/// connection waits in the listen queue) and serves it on a thread of its
/// own, with its own small runtime, so that no runtime of the daemon's
/// (each of which may stop before the process ends) carries it.
fn start(signer: Signer) -> Result<Front, SigV4Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(SigV4Error::Start)?;
    let addr = listener.local_addr().map_err(SigV4Error::Start)?;
    let key = signer.key.clone();
    let signer = web::Data::new(signer);
    // The server is built on its thread (it is not `Send`); whether it
    // took the listener comes back here.
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("catalog-signer".into())
        .spawn(move || {
            let server = actix_web::HttpServer::new(move || {
                actix_web::App::new()
                    .app_data(signer.clone())
                    // Commits of large tables carry their whole update list.
                    .app_data(web::PayloadConfig::new(64 << 20))
                    .default_service(web::to(forward))
            })
            .workers(1)
            // The daemon handles its own signals; the signer lives as
            // long as the process.
            .disable_signals()
            .listen(listener);
            let server = match server {
                Ok(s) => {
                    let _ = ready.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let system = actix_web::rt::System::new();
            if let Err(e) = system.block_on(async move { server.run().await }) {
                tracing::error!(error = %e, "the REST catalog's signer stopped");
            }
        })
        .map_err(SigV4Error::Start)?;
    started
        .recv()
        .map_err(|_| SigV4Error::Start(std::io::Error::other("the signer's thread ended")))?
        .map_err(SigV4Error::Start)?;
    tracing::info!(%addr, "REST catalog requests are signed with SigV4");
    Ok(Front {
        uri: format!("http://{addr}"),
        key,
    })
}

async fn forward(req: HttpRequest, body: web::Bytes, signer: web::Data<Signer>) -> HttpResponse {
    match signer.forward(&req, body).await {
        Ok(answer) => answer,
        // The REST spec's error model, which iceberg's client prints.
        Err((code, kind, message)) => HttpResponse::build(
            actix_web::http::StatusCode::from_u16(code)
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
        )
        .json(serde_json::json!({
            "error": {"message": message, "type": kind, "code": code}
        })),
    }
}

type Refusal = (u16, &'static str, String);

impl Signer {
    async fn forward(&self, req: &HttpRequest, body: web::Bytes) -> Result<HttpResponse, Refusal> {
        let given = req.headers().get(KEY_HEADER).map(|v| v.as_bytes());
        if given != Some(self.key.as_bytes()) {
            return Err((
                403,
                "ForbiddenException",
                "this signer serves only the process that started it".into(),
            ));
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let upstream = self.upstream();
        let url = format!("{upstream}{path}");
        let mut out = http::Request::builder()
            .method(req.method().as_str())
            .uri(&url);
        for (name, value) in req.headers() {
            let name = name.as_str();
            if NOT_FORWARDED.contains(&name) {
                continue;
            }
            // The signer's header holds the signature, so a bearer token
            // moves aside, as Iceberg's Java signer does.
            let name = if name == "authorization" {
                "original-authorization"
            } else {
                name
            };
            // A header is signed as text.
            let Ok(value) = value.to_str() else {
                return Err((
                    400,
                    "BadRequestException",
                    format!("header {name} is not text"),
                ));
            };
            out = out.header(name, value);
        }
        let mut out = out
            .body(HttpRequestBody::from(body.clone()))
            .map_err(|e| (400, "BadRequestException", format!("{url}: {e}")))?;
        let credential = self.credentials.get_credential().await.map_err(|e| {
            (
                500,
                "NotAuthorizedException",
                format!("no AWS credentials to sign with: {e}"),
            )
        })?;
        AwsAuthorizer::new(&credential, &self.service, &self.region).authorize(&mut out, None);
        let (parts, _) = out.into_parts();
        let answer = self
            .http
            .request(parts.method, &url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                (
                    502,
                    "ServiceUnavailableException",
                    format!("{upstream}: {e}"),
                )
            })?;
        let ok = answer.status().is_success();
        let mut back = HttpResponse::build(
            actix_web::http::StatusCode::from_u16(answer.status().as_u16())
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
        );
        for name in ["content-type", "retry-after"] {
            if let Some(v) = answer.headers().get(name) {
                back.insert_header((name, v.as_bytes()));
            }
        }
        let bytes = answer.bytes().await.map_err(|e| {
            (
                502,
                "ServiceUnavailableException",
                format!("{upstream}: {e}"),
            )
        })?;
        if ok
            && req.path().ends_with("/v1/config")
            && let Some(kept) = self.follow_moved_clients(&bytes)
        {
            return Ok(back.body(kept));
        }
        Ok(back.body(bytes))
    }

    fn upstream(&self) -> String {
        // A poisoned lock only means a thread panicked holding it; the
        // string is whole.
        self.upstream
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A catalog's `/v1/config` may move its clients to another URI
    /// (`overrides.uri`), which iceberg's client and `rest_commit` follow.
    /// Followed by them, it would take them past the signer, unsigned. So
    /// the signer follows it itself, and the answer it hands back no
    /// longer says it: the clients stay here. The new body, when there
    /// was such an override.
    fn follow_moved_clients(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        let moved = doc.get_mut("overrides")?.as_object_mut()?.remove("uri")?;
        let moved = moved.as_str()?.trim_end_matches('/').to_string();
        let mut upstream = self.upstream.write().unwrap_or_else(|e| e.into_inner());
        if *upstream != moved {
            tracing::info!(from = %upstream, to = %moved, "the REST catalog moved its clients; the signer follows");
            *upstream = moved;
        }
        serde_json::to_vec(&doc).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(props: &[(&str, &str)]) -> Config {
        let mut cfg = Config::default();
        cfg.lake.catalog = CatalogKind::Rest;
        cfg.lake.catalog_uri = "http://127.0.0.1:9/iceberg/".into();
        cfg.lake.catalog_properties = props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cfg
    }

    #[test]
    fn off_unless_asked() {
        assert!(front(&cfg(&[])).unwrap().is_none());
        let mut sql = cfg(&[("rest.sigv4-enabled", "true")]);
        sql.lake.catalog = CatalogKind::Sql;
        assert!(front(&sql).unwrap().is_none());
    }

    #[test]
    fn one_signer_per_catalog_and_identity() {
        let a = cfg(&[
            ("rest.sigv4-enabled", "true"),
            ("rest.signing-region", "eu-west-1"),
            ("rest.access-key-id", "AKIDEXAMPLE"),
            ("rest.secret-access-key", "secret"),
        ]);
        let first = front(&a).unwrap().unwrap();
        let again = front(&a).unwrap().unwrap();
        assert_eq!(first.uri, again.uri);
        assert_eq!(first.key, again.key);
        let mut other = a.clone();
        other
            .lake
            .catalog_properties
            .insert("rest.signing-name".into(), "glue".into());
        let second = front(&other).unwrap().unwrap();
        assert_ne!(first.uri, second.uri);
        assert_ne!(first.key, second.key);
        assert_eq!(first.key.len(), 32);

        // Without `rest.*` keys the identity is `[lake.s3]`'s: two configs
        // that differ only there do not share a signer.
        let from_s3 = |secret: &str| {
            let mut c = cfg(&[
                ("rest.sigv4-enabled", "true"),
                ("rest.signing-region", "eu-west-1"),
            ]);
            c.lake.s3.access_key_id = Some("AKIDS3".into());
            c.lake.s3.secret_access_key = Some(secret.into());
            front(&c).unwrap().unwrap()
        };
        let (one, same, two) = (from_s3("one"), from_s3("one"), from_s3("two"));
        assert_eq!(one.key, same.key);
        assert_ne!(one.key, two.key);
    }

    #[test]
    fn a_region_is_needed() {
        let mut c = cfg(&[
            ("rest.sigv4-enabled", "true"),
            ("rest.access-key-id", "AKIDEXAMPLE"),
            ("rest.secret-access-key", "secret"),
        ]);
        c.lake.s3.region = Some("ap-south-1".into());
        assert!(front(&c).unwrap().is_some());
        // Without [lake.s3] region, the answer depends on AWS_REGION in
        // the environment, which a test cannot own; the key the error
        // names is checked where it is built.
    }

    /// The signer refuses a request without its key, and passes the
    /// catalog's answer back otherwise.
    #[actix_web::test]
    async fn refuses_a_request_without_its_key() {
        let f = front(&cfg(&[
            ("rest.sigv4-enabled", "true"),
            ("rest.signing-region", "us-east-1"),
            ("rest.access-key-id", "AKIDEXAMPLE"),
            ("rest.secret-access-key", "secret-for-refusal"),
        ]))
        .unwrap()
        .unwrap();
        let http = reqwest::Client::new();
        let r = http
            .get(format!("{}/v1/config", f.uri))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "ForbiddenException");
        // With the key, the request goes on to the catalog, which here is
        // a closed port: the signer says so.
        let r = http
            .get(format!("{}/v1/config", f.uri))
            .header(KEY_HEADER, &f.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 502);
        let body: serde_json::Value = r.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("http://127.0.0.1:9/iceberg"),
            "{message}"
        );
    }

    /// A catalog on 127.0.0.1 that answers every request with its `name`,
    /// the path asked and the `authorization` header it came with, and
    /// `/v1/config` with `config`. Its URI.
    async fn catalog(name: &'static str, config: serde_json::Value) -> String {
        let server = actix_web::HttpServer::new(move || {
            let config = config.clone();
            actix_web::App::new().default_service(web::to(move |req: HttpRequest| {
                let config = config.clone();
                async move {
                    if req.path().ends_with("/v1/config") {
                        return HttpResponse::Ok().json(config);
                    }
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    HttpResponse::Ok().json(serde_json::json!({
                        "from": name, "path": req.path(), "authorization": auth,
                    }))
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        format!("http://{addr}")
    }

    /// A catalog whose `/v1/config` moves its clients elsewhere
    /// (`overrides.uri`): the signer follows it, and the answer it hands
    /// on no longer says it, so the clients stay with the signer and every
    /// request after still goes signed, to the new place. The other
    /// overrides pass unchanged.
    #[actix_web::test]
    async fn a_catalog_that_moves_its_clients_is_followed_by_the_signer() {
        let moved = catalog(
            "moved",
            serde_json::json!({"defaults": {}, "overrides": {}}),
        )
        .await;
        let first = catalog(
            "first",
            serde_json::json!({
                "defaults": {},
                "overrides": {"uri": format!("{moved}/iceberg2/"), "prefix": "wh"},
            }),
        )
        .await;
        let mut c = cfg(&[
            ("rest.sigv4-enabled", "true"),
            ("rest.signing-region", "us-east-1"),
            ("rest.access-key-id", "AKIDEXAMPLE"),
            ("rest.secret-access-key", "secret-for-moves"),
        ]);
        c.lake.catalog_uri = format!("{first}/iceberg");
        let f = front(&c).unwrap().unwrap();
        let http = reqwest::Client::new();
        let get = |path: &str| {
            http.get(format!("{}{path}", f.uri))
                .header(KEY_HEADER, &f.key)
                .send()
        };
        let before: serde_json::Value = get("/v1/namespaces").await.unwrap().json().await.unwrap();
        assert_eq!(
            (&before["from"], &before["path"]),
            (
                &serde_json::json!("first"),
                &serde_json::json!("/iceberg/v1/namespaces")
            )
        );
        let config: serde_json::Value = get("/v1/config").await.unwrap().json().await.unwrap();
        assert_eq!(
            config["overrides"],
            serde_json::json!({"prefix": "wh"}),
            "{config}"
        );
        let after: serde_json::Value = get("/v1/namespaces").await.unwrap().json().await.unwrap();
        assert_eq!(
            (&after["from"], &after["path"]),
            (
                &serde_json::json!("moved"),
                &serde_json::json!("/iceberg2/v1/namespaces")
            )
        );
        let auth = after["authorization"].as_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
    }
}
