//! The Confluent Schema Registry REST API, served under `/schema-registry`
//! from the local registry when `kafka.schema_registry_url` is empty, so a
//! standard Kafka consumer with a schema-registry deserializer (Confluent's
//! clients take a base URL with a path) decodes ticklake's topics unchanged.
//!
//! Confluent's media type and error body (`{"error_code", "message"}`) and
//! codes: 40401 subject, 40402 version, 40403 schema not found; 409
//! incompatible; 42201 invalid schema, 42202 invalid version; 50001 the
//! store failed. Compatibility is BACKWARD and fixed. AVRO only, without
//! references. Deleting and changing the config are not offered: the ids
//! frame records already in Kafka.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::kafka::registry::{LocalRegistry, RegistryError, SchemaRegistry, Version};

/// Where the API is served on `http.listen`: the base URL a client takes
/// is `http://<http.listen>/schema-registry`.
pub const PREFIX: &str = crate::kafka::registry::SERVED_PATH;
/// The media type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// The only compatibility level, Confluent's default.
const LEVEL: &str = "BACKWARD";
/// Largest request body: a schema.
const MAX_BODY: usize = 1 << 20;

/// A failed request, as Confluent answers it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SrError {
    status: StatusCode,
    code: i64,
    message: String,
}

impl SrError {
    fn new(status: StatusCode, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid_schema(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 42201, message)
    }
}

impl From<RegistryError> for SrError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::SubjectNotFound { .. } => {
                SrError::new(StatusCode::NOT_FOUND, 40401, message)
            }
            RegistryError::VersionNotFound { .. } => {
                SrError::new(StatusCode::NOT_FOUND, 40402, message)
            }
            RegistryError::SchemaNotFound { .. } => {
                SrError::new(StatusCode::NOT_FOUND, 40403, message)
            }
            RegistryError::BadSchema { .. } => SrError::invalid_schema(message),
            RegistryError::Incompatible { .. } => SrError::new(StatusCode::CONFLICT, 409, message),
            RegistryError::Io { .. }
            | RegistryError::Corrupt { .. }
            | RegistryError::Unreachable { .. }
            | RegistryError::Refused { .. }
            | RegistryError::Protocol { .. } => {
                tracing::warn!(error = %message, "schema registry request failed");
                SrError::new(StatusCode::INTERNAL_SERVER_ERROR, 50001, message)
            }
        }
    }
}

impl ResponseError for SrError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .content_type(CONTENT_TYPE)
            .body(json!({"error_code": self.code, "message": self.message}).to_string())
    }
}

type Reply = Result<HttpResponse, SrError>;
type Registry = web::Data<Arc<LocalRegistry>>;

fn ok(body: &Value) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(body.to_string())
}

/// Runs a registry call (file IO under a lock) off the HTTP worker.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, SrError> {
    web::block(f)
        .await
        .map_err(|e| SrError::new(StatusCode::INTERNAL_SERVER_ERROR, 50001, e.to_string()))?
        .map_err(SrError::from)
}

fn version(v: &str) -> Result<Version, SrError> {
    Version::parse(v).ok_or_else(|| {
        SrError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!("the version {v:?} is not a number from 1, -1 or latest"),
        )
    })
}

fn schema_id(id: &str) -> Result<u32, SrError> {
    id.parse().map_err(|_| {
        SrError::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("schema {id:?} not found"),
        )
    })
}

/// The body of a register, lookup or compatibility request.
#[derive(Deserialize)]
struct SchemaRequest {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
}

/// The schema text of a request body; unknown fields (metadata, ruleSet)
/// are ignored, as a registry that does not use them does.
fn schema_of(body: &[u8]) -> Result<String, SrError> {
    let req: SchemaRequest = serde_json::from_slice(body).map_err(|e| {
        SrError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            422,
            format!("unprocessable request body: {e}"),
        )
    })?;
    if let Some(t) = req.schema_type.filter(|t| t != "AVRO") {
        return Err(SrError::invalid_schema(format!(
            "schema type {t} is not supported; this registry holds AVRO only"
        )));
    }
    if req.references.is_some_and(|r| !r.is_empty()) {
        return Err(SrError::invalid_schema(
            "schema references are not supported",
        ));
    }
    Ok(req.schema)
}

fn version_body(v: &crate::kafka::registry::SubjectVersion) -> Value {
    json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema})
}

/// A schema's own JSON (the `/schema` endpoints answer the schema itself).
fn raw_schema(text: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(text.to_string())
}

async fn root() -> HttpResponse {
    ok(&json!({}))
}

async fn subjects(r: Registry) -> Reply {
    let r = r.get_ref().clone();
    Ok(ok(&json!(blocking(move || r.subjects()).await?)))
}

async fn versions(r: Registry, subject: web::Path<String>) -> Reply {
    let r = r.get_ref().clone();
    let s = subject.into_inner();
    Ok(ok(&json!(blocking(move || r.versions(&s)).await?)))
}

async fn subject_version(r: Registry, path: web::Path<(String, String)>) -> Reply {
    let (s, v) = path.into_inner();
    let v = version(&v)?;
    let r = r.get_ref().clone();
    let found = blocking(move || r.subject_version(&s, v)).await?;
    Ok(ok(&version_body(&found)))
}

async fn subject_version_schema(r: Registry, path: web::Path<(String, String)>) -> Reply {
    let (s, v) = path.into_inner();
    let v = version(&v)?;
    let r = r.get_ref().clone();
    let found = blocking(move || r.subject_version(&s, v)).await?;
    Ok(raw_schema(&found.schema))
}

async fn register(r: Registry, subject: web::Path<String>, body: web::Bytes) -> Reply {
    let schema = schema_of(&body)?;
    let r = r.get_ref().clone();
    let s = subject.into_inner();
    let id = blocking(move || r.register(&s, &schema)).await?;
    Ok(ok(&json!({ "id": id })))
}

async fn lookup(r: Registry, subject: web::Path<String>, body: web::Bytes) -> Reply {
    let schema = schema_of(&body)?;
    let r = r.get_ref().clone();
    let s = subject.into_inner();
    let found = blocking(move || r.lookup_version(&s, &schema)).await?;
    Ok(ok(&version_body(&found)))
}

async fn compatibility(
    req: HttpRequest,
    r: Registry,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Reply {
    let (s, v) = path.into_inner();
    let v = version(&v)?;
    let schema = schema_of(&body)?;
    let verbose = url::form_urlencoded::parse(req.query_string().as_bytes())
        .any(|(k, val)| k == "verbose" && val == "true");
    let r = r.get_ref().clone();
    let verdict = blocking(move || r.check_compatible(&s, v, &schema)).await?;
    Ok(ok(&match (verdict, verbose) {
        (Ok(()), false) => json!({"is_compatible": true}),
        (Ok(()), true) => json!({"is_compatible": true, "messages": []}),
        (Err(_), false) => json!({"is_compatible": false}),
        (Err(reason), true) => json!({"is_compatible": false, "messages": [reason]}),
    }))
}

async fn by_id(r: Registry, id: web::Path<String>) -> Reply {
    let id = schema_id(&id)?;
    let r = r.get_ref().clone();
    match blocking(move || r.schema(id)).await? {
        Some(schema) => Ok(ok(&json!({ "schema": schema }))),
        None => Err(RegistryError::SchemaNotFound {
            what: format!("id {id}"),
        }
        .into()),
    }
}

async fn by_id_schema(r: Registry, id: web::Path<String>) -> Reply {
    let id = schema_id(&id)?;
    let r = r.get_ref().clone();
    match blocking(move || r.schema(id)).await? {
        Some(schema) => Ok(raw_schema(&schema)),
        None => Err(RegistryError::SchemaNotFound {
            what: format!("id {id}"),
        }
        .into()),
    }
}

async fn by_id_versions(r: Registry, id: web::Path<String>) -> Reply {
    let id = schema_id(&id)?;
    let r = r.get_ref().clone();
    let usages = blocking(move || r.usages(id)).await?;
    let body: Vec<Value> = usages
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(ok(&json!(body)))
}

async fn by_id_subjects(r: Registry, id: web::Path<String>) -> Reply {
    let id = schema_id(&id)?;
    let r = r.get_ref().clone();
    let mut subjects: Vec<String> = blocking(move || r.usages(id))
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    Ok(ok(&json!(subjects)))
}

async fn types() -> HttpResponse {
    ok(&json!(["AVRO"]))
}

/// The global level, and a subject's: BACKWARD, for every subject.
async fn config() -> HttpResponse {
    ok(&json!({ "compatibilityLevel": LEVEL }))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    SrError::new(
        StatusCode::NOT_FOUND,
        404,
        format!(
            "no endpoint {} {} in this schema registry",
            req.method(),
            req.path()
        ),
    )
    .error_response()
}

/// Adds the API under [`PREFIX`].
pub fn configure(cfg: &mut web::ServiceConfig, registry: Arc<LocalRegistry>) {
    use web::{get, post};
    let payload = web::PayloadConfig::new(MAX_BODY);
    cfg.service(
        web::scope(PREFIX)
            .app_data(web::Data::new(registry))
            .app_data(payload)
            .route("", get().to(root))
            .route("/", get().to(root))
            .route("/subjects", get().to(subjects))
            .route("/subjects/{subject}", post().to(lookup))
            .route("/subjects/{subject}/versions", get().to(versions))
            .route("/subjects/{subject}/versions", post().to(register))
            .route(
                "/subjects/{subject}/versions/{version}",
                get().to(subject_version),
            )
            .route(
                "/subjects/{subject}/versions/{version}/schema",
                get().to(subject_version_schema),
            )
            .route(
                "/compatibility/subjects/{subject}/versions/{version}",
                post().to(compatibility),
            )
            .route("/schemas/types", get().to(types))
            .route("/schemas/ids/{id}", get().to(by_id))
            .route("/schemas/ids/{id}/schema", get().to(by_id_schema))
            .route("/schemas/ids/{id}/versions", get().to(by_id_versions))
            .route("/schemas/ids/{id}/subjects", get().to(by_id_subjects))
            .route("/config", get().to(config))
            .route("/config/{subject}", get().to(config))
            .default_service(web::to(not_found)),
    );
}

#[cfg(test)]
mod tests;
