//! The daemon's HTTP server: `/status` (supervision tree, level,
//! breakers, accounting), `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! and the query API (`/v1/*`, `/openapi.json`, see `super::configure`).

use actix_web::{App, HttpResponse, HttpServer, web};

use crate::metrics::Metrics;
use crate::status::StatusSources;

async fn metrics(m: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(m.render())
}

async fn status(src: web::Data<StatusSources>) -> HttpResponse {
    HttpResponse::Ok().json(crate::status::collect(&src).await)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Starts the server on the current actix system; it stops with the system.
pub fn start(
    listen: &str,
    m: Metrics,
    sources: StatusSources,
    api: Option<super::ApiState>,
) -> std::io::Result<std::net::SocketAddr> {
    let data = web::Data::new(m);
    let sources = web::Data::new(sources);
    let server = HttpServer::new(move || {
        App::new()
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
            })
    })
    // Queries run on the tokio pool, not on the workers; two workers keep
    // /metrics and /status answering while one sends a large response.
    .workers(2)
    .disable_signals()
    .bind(listen)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("no listen address"))?;
    actix_rt::spawn(server.run());
    Ok(addr)
}
