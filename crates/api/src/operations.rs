//! Operations: `GET /healthz`, `GET /readyz` and `GET /metrics` (the recorder itself is in
//! `metrics.rs`); no token needed.

use actix_web::{HttpResponse, web};

use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::metrics::{DELIVERY_STATES, PROCESS_STATUSES, TASK_STATES, handle};
use crate::pool::blocking;
use crate::routing::resource;
use crate::state::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    const GET: &str = "GET, HEAD";
    cfg.service(resource("/metrics", GET).route(web::get().to(render)))
        .service(resource("/healthz", GET).route(web::get().to(healthz)))
        .service(resource("/readyz", GET).route(web::get().to(readyz)));
}

/// `GET /healthz`: the process is alive and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "getHealth",
    responses((status = 200, description = "Alive", body = crate::schema::Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers and its schema is current; else 503 with the reason
/// (in words for operators; details in the log).
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "getReadiness",
    responses((status = 200, description = "Ready for traffic", body = crate::schema::Health),
        (status = 503, description = "Not ready: the database or its schema", body = crate::schema::Health),
        (status = 500, description = "The check itself failed", body = Envelope)))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ops = state.ops.clone();
    // A database that does not answer at all must not hold the probe: 503 after 3 s.
    let answer =
        tokio::time::timeout(std::time::Duration::from_secs(3), blocking(move || ops.readiness())).await;
    let checked = match answer {
        Ok(checked) => checked?,
        Err(_) => Err(async_engine_domain::NotReady::Unreachable("no answer within 3 s".into())),
    };
    match checked {
        Ok(()) => Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))),
        Err(reason) => {
            tracing::warn!(?reason, "not ready");
            Ok(HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "status": "not ready", "reason": reason.to_string() })))
        }
    }
}

/// `GET /metrics`. The gauges of stored state (processes by status, open tasks, deliveries)
/// are read at scrape time: one grouped count per table.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "getMetrics",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
        (status = 500, description = "The server failed", body = Envelope)))]
pub async fn render(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ops = state.ops.clone();
    match blocking(move || ops.gauges()).await? {
        Ok(gauges) => {
            // Every known state first, so that one that emptied reads 0, not its last count.
            for status in PROCESS_STATUSES {
                metrics::gauge!("async_engine_processes", "status" => status).set(0.0);
            }
            for state in TASK_STATES {
                metrics::gauge!("async_engine_tasks", "state" => state).set(0.0);
            }
            for state in DELIVERY_STATES {
                metrics::gauge!("async_engine_notification_deliveries", "state" => state).set(0.0);
            }
            for (status, n) in gauges.processes {
                metrics::gauge!("async_engine_processes", "status" => status).set(n as f64);
            }
            for (state, n) in gauges.tasks {
                metrics::gauge!("async_engine_tasks", "state" => state).set(n as f64);
            }
            for (state, n) in gauges.deliveries {
                metrics::gauge!("async_engine_notification_deliveries", "state" => state).set(n as f64);
            }
            metrics::gauge!("async_engine_database_up").set(1.0);
        }
        Err(error) => {
            tracing::warn!(%error, "metrics: could not read the stored gauges");
            metrics::gauge!("async_engine_database_up").set(0.0);
        }
    }
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(handle().render()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::test::{TestRequest, call_service, init_service, read_body};
    use async_engine_domain::Gauges;
    use async_engine_domain::ops::MockOperations;

    use crate::metrics::tests::assert_every_family_is_described;
    use crate::state::AppState;

    #[actix_web::test]
    async fn the_route_writes_help_for_every_family_and_counters_before_their_first_increment() {
        let mut ops = MockOperations::new();
        ops.expect_gauges().returning(|| {
            Ok(Gauges { processes: vec![("Success".into(), 2)], tasks: vec![], deliveries: vec![] })
        });
        let state = AppState { ops: Arc::new(ops), ..crate::test_support::state() };
        let service = init_service(crate::router::app(state)).await;
        // Twice: the first request's own counters and latency are recorded after it answers.
        let mut text = String::new();
        for _ in 0..2 {
            let response = call_service(&service, TestRequest::get().uri("/metrics").to_request()).await;
            assert_eq!(response.status().as_u16(), 200);
            text = String::from_utf8(read_body(response).await.to_vec()).unwrap();
        }
        assert_every_family_is_described(&text);
        for family in
            ["async_engine_http_requests_total", "async_engine_processes", "async_engine_database_up"]
        {
            assert!(text.contains(&format!("# HELP {family} ")), "{family}:\n{text}");
        }
        assert!(text.lines().any(|l| l == r#"async_engine_processes{status="Success"} 2"#), "{text}");
        // Nothing in this crate's tests sends a notification.
        assert!(
            text.lines().any(|l| l == r#"async_engine_notification_attempts_total{outcome="gave_up"} 0"#),
            "{text}"
        );
        assert!(text.lines().any(|l| l.starts_with("async_engine_status_reads_limited_total ")), "{text}");
    }
}
