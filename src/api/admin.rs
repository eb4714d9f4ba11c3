//! `/chaos/*`: faults injected at run time, for `ticklake chaos` and demos.
//! Served only with `[chaos] admin = true`; without it the routes do not
//! exist (404). The embedded broker is inside the daemon's process, so no
//! one outside can take it down but the daemon itself: this is that
//! door, kept narrow (four faults, each reversible, each logged).
//!
//! - `GET /chaos`: what is injected now.
//! - `POST /chaos/broker/down`, `POST /chaos/broker/up`: the embedded
//!   broker stops and resumes answering (librdkafka's mock cluster).
//! - `POST /chaos/broker/rtt?ms=N`: N ms of added round-trip time (0 ends it).
//! - `POST /chaos/writer?delay_us_per_row=N&fail_trade_commits=M`: the
//!   writers' delay per committed row (a slow object store), and the next
//!   M `market.trades` commits fail; either parameter may be left out.
//!
//! A real broker is not the daemon's to stop: the broker routes answer 409
//! `no_embedded_broker` (`ticklake chaos --broker-command` runs an outside
//! command instead).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::kafka::EmbeddedFaults;

/// The writers' fault knobs, shared with the writers themselves.
#[derive(Debug, Clone)]
pub struct WriterFaults {
    /// µs added per committed row, both writers.
    pub delay_us_per_row: Arc<AtomicU64>,
    /// `market.trades` commits still to fail.
    pub fail_commits: Arc<AtomicU32>,
}

/// Everything `/chaos/*` can reach.
#[derive(Debug, Clone)]
pub struct ChaosControls {
    /// `None` on a real broker.
    pub broker: Option<EmbeddedFaults>,
    pub writer: WriterFaults,
}

/// What `GET /chaos` answers.
#[derive(Debug, Clone, Default, Serialize)]
struct Injected {
    embedded_broker: bool,
    broker_down: bool,
    broker_rtt_ms: u64,
    writer_delay_us_per_row: u64,
    fail_trade_commits: u32,
}

#[derive(Clone)]
struct Admin {
    controls: ChaosControls,
    /// The broker's side of `Injected` (the writer's is read from its atomics).
    broker: Arc<Mutex<(bool, u64)>>,
}

impl Admin {
    fn injected(&self) -> Injected {
        let (down, rtt) = self.broker.lock().map(|b| *b).unwrap_or((false, 0));
        Injected {
            embedded_broker: self.controls.broker.is_some(),
            broker_down: down,
            broker_rtt_ms: rtt,
            writer_delay_us_per_row: self
                .controls
                .writer
                .delay_us_per_row
                .load(Ordering::Relaxed),
            fail_trade_commits: self.controls.writer.fail_commits.load(Ordering::Relaxed),
        }
    }
}

/// Registers the routes.
pub fn configure(c: &mut web::ServiceConfig, controls: ChaosControls) {
    let admin = Admin {
        controls,
        broker: Arc::new(Mutex::new((false, 0))),
    };
    c.app_data(web::Data::new(admin))
        .route("/chaos", web::get().to(get))
        .route("/chaos/broker/{action}", web::post().to(broker))
        .route("/chaos/writer", web::post().to(writer));
}

fn refused(status: actix_web::http::StatusCode, error: &str, detail: String) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({"error": error, "detail": detail}))
}

async fn get(admin: web::Data<Admin>) -> HttpResponse {
    HttpResponse::Ok().json(admin.injected())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RttParams {
    ms: Option<u64>,
}

async fn broker(
    admin: web::Data<Admin>,
    action: web::Path<String>,
    q: web::Query<RttParams>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let Some(faults) = &admin.controls.broker else {
        return refused(
            StatusCode::CONFLICT,
            "no_embedded_broker",
            "kafka.brokers is a real broker; stop it from outside".into(),
        );
    };
    let done = match action.as_str() {
        "down" => faults.broker_down(),
        "up" => faults.broker_up(),
        "rtt" => match q.ms {
            Some(ms) if ms <= 60_000 => faults.round_trip(Duration::from_millis(ms)),
            _ => {
                return refused(
                    StatusCode::BAD_REQUEST,
                    "bad_parameter",
                    "ms: a round-trip time of 0 to 60000 ms is required".into(),
                );
            }
        },
        other => {
            return refused(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no broker fault {other:?}; down, up or rtt"),
            );
        }
    };
    if let Err(e) = done {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        );
    }
    if let Ok(mut b) = admin.broker.lock() {
        match action.as_str() {
            "down" => b.0 = true,
            "up" => b.0 = false,
            _ => b.1 = q.ms.unwrap_or(0),
        }
    }
    tracing::warn!(action = %action, rtt_ms = ?q.ms, "chaos: embedded broker fault");
    HttpResponse::Ok().json(admin.injected())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriterParams {
    delay_us_per_row: Option<u64>,
    fail_trade_commits: Option<u32>,
}

async fn writer(admin: web::Data<Admin>, q: web::Query<WriterParams>) -> HttpResponse {
    // One second per row is already a stopped store; past it, a typo.
    if q.delay_us_per_row.is_some_and(|d| d > 1_000_000) {
        return refused(
            actix_web::http::StatusCode::BAD_REQUEST,
            "bad_parameter",
            "delay_us_per_row: at most 1000000".into(),
        );
    }
    let w = &admin.controls.writer;
    if let Some(d) = q.delay_us_per_row {
        w.delay_us_per_row.store(d, Ordering::Relaxed);
    }
    if let Some(n) = q.fail_trade_commits {
        w.fail_commits.store(n, Ordering::Relaxed);
    }
    tracing::warn!(delay_us_per_row = ?q.delay_us_per_row, fail_trade_commits = ?q.fail_trade_commits,
        "chaos: writer faults changed");
    HttpResponse::Ok().json(admin.injected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, test};

    #[actix_web::test]
    async fn writer_faults_change_at_run_time_and_a_real_broker_is_refused() {
        let writer = WriterFaults {
            delay_us_per_row: Arc::new(AtomicU64::new(0)),
            fail_commits: Arc::new(AtomicU32::new(0)),
        };
        let controls = ChaosControls {
            broker: None,
            writer: writer.clone(),
        };
        let app =
            test::init_service(App::new().configure(|c| configure(c, controls.clone()))).await;
        let req = test::TestRequest::post()
            .uri("/chaos/writer?delay_us_per_row=1500&fail_trade_commits=3")
            .to_request();
        let body: serde_json::Value = test::call_and_read_body_json(&app, req).await;
        assert_eq!(body["writer_delay_us_per_row"], 1500);
        assert_eq!(body["fail_trade_commits"], 3);
        assert_eq!(writer.delay_us_per_row.load(Ordering::Relaxed), 1500);
        assert_eq!(writer.fail_commits.load(Ordering::Relaxed), 3);

        for (uri, status) in [
            ("/chaos/broker/down", 409),
            ("/chaos/writer?delay_us_per_row=2000000", 400),
            ("/chaos/writer?nope=1", 400),
        ] {
            let res =
                test::call_service(&app, test::TestRequest::post().uri(uri).to_request()).await;
            assert_eq!(res.status().as_u16(), status, "{uri}");
        }
        let req = test::TestRequest::get().uri("/chaos").to_request();
        let body: serde_json::Value = test::call_and_read_body_json(&app, req).await;
        assert_eq!(body["embedded_broker"], false);
    }
}
