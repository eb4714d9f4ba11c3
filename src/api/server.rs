//! The daemon's HTTP server: `/status` (supervision tree, level,
//! breakers, accounting), `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! the query API (`/v1/*`, `/openapi.json`, see `super::configure`), and
//! the Confluent Schema Registry API of the local registry
//! (`/schema-registry/*`, see `super::schema_registry`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HOST;
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, Error, HttpResponse, HttpServer, web};

use crate::config::HttpConfig;
use crate::metrics::Metrics;
use crate::status::StatusSources;

/// A client must send its request head within this time; a slow-loris
/// connection is closed instead of holding a slot.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle keep-alive connections are closed after this.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Host names, besides IP literals and `localhost`, that may address the
/// daemon (`http.allowed_hosts`), lowercase.
#[derive(Clone)]
struct AllowedHosts(Arc<Vec<String>>);

/// The host name of a Host header value, without its port, lowercase.
fn host_name(value: &str) -> String {
    let v = value.trim();
    let name = match v.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => match v.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => v,
        },
    };
    name.to_ascii_lowercase()
}

/// Whether a request naming `host` may be answered. A page on another site
/// can make its own domain resolve to 127.0.0.1 (DNS rebinding) and then
/// read the loopback API from the user's browser; its requests still carry
/// that domain in Host. IP literals and `localhost` cannot be rebound.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host);
    name.parse::<IpAddr>().is_ok() || name == "localhost" || allowed.contains(&name)
}

async fn check_host(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let allowed = req
        .app_data::<web::Data<AllowedHosts>>()
        .map(|a| a.0.clone())
        .unwrap_or_default();
    match host {
        Some(h) if !host_allowed(&h, &allowed) => {
            let body = serde_json::json!({
                "error": "misdirected_request",
                "detail": format!("host {:?} is not one this daemon answers to; add it to http.allowed_hosts", host_name(&h)),
            });
            Ok(req.into_response(
                HttpResponse::MisdirectedRequest()
                    .json(body)
                    .map_into_right_body(),
            ))
        }
        // No Host header (HTTP/1.0): not a browser.
        _ => Ok(next.call(req).await?.map_into_left_body()),
    }
}

async fn metrics(m: web::Data<Metrics>, src: web::Data<StatusSources>) -> HttpResponse {
    crate::status::export(&src);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(m.render())
}

/// Times every query API request (`/v1/*`) into
/// `ticklake_query_duration_seconds`, by its route pattern (never the raw
/// path, so the label set stays bounded) and status class.
async fn time_queries(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if !req.path().starts_with("/v1/") {
        return next.call(req).await;
    }
    let started = Instant::now();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let res = next.call(req).await?;
    if let Some(m) = metrics {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        let class = format!("{}xx", res.status().as_u16() / 100);
        m.query_duration_seconds
            .with_label_values(&[&route, &class])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}

async fn status(src: web::Data<StatusSources>) -> HttpResponse {
    HttpResponse::Ok().json(crate::status::collect(&src).await)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Starts the server on the current actix system; it stops with the system.
pub fn start(
    http: &HttpConfig,
    m: Metrics,
    sources: StatusSources,
    api: Option<super::ApiState>,
    admin: Option<super::admin::ChaosControls>,
    registry: Option<Arc<crate::kafka::registry::LocalRegistry>>,
) -> std::io::Result<std::net::SocketAddr> {
    let data = web::Data::new(m);
    let sources = web::Data::new(sources);
    let allowed = web::Data::new(AllowedHosts(Arc::new(
        http.allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    )));
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(time_queries))
            .wrap(from_fn(check_host))
            .app_data(allowed.clone())
            .app_data(data.clone())
            .app_data(sources.clone())
            .route("/status", web::get().to(status))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(healthz))
            .configure(|c| {
                if let Some(api) = &api {
                    super::configure(c, api.clone());
                }
                if let Some(admin) = &admin {
                    super::admin::configure(c, admin.clone());
                }
                if let Some(registry) = &registry {
                    super::schema_registry::configure(c, registry.clone());
                }
            })
    })
    // Queries run on the tokio pool, not on the workers; two workers keep
    // /metrics and /status answering while one sends a large response.
    .workers(2)
    .max_connections(http.max_connections)
    .client_request_timeout(REQUEST_HEAD_TIMEOUT)
    .keep_alive(KEEP_ALIVE)
    .disable_signals()
    .bind(&http.listen)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("no listen address"))?;
    actix_rt::spawn(server.run());
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_that_cannot_be_rebound_or_were_configured_pass() {
        let allowed = vec!["ticklake.internal".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9464",
            "[::1]:9464",
            "10.1.2.3:80",
            "localhost:9464",
            "LOCALHOST",
            "ticklake.internal:9464",
            "Ticklake.Internal",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:9464",
            "localhost.evil.example",
            "127.0.0.1.nip.io:9464",
            "ticklake.internal.evil",
        ] {
            assert!(!host_allowed(refused, &allowed), "{refused}");
        }
    }
}
