//! `GET /metrics`: Prometheus text from the process-wide `metrics` recorder, which every
//! layer records into (the engine's notification attempts, the API's waiting clients and
//! refusals) without knowing who exports it.

use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::AppState;
use crate::error::ApiError;
use crate::handlers::blocking;

/// Buckets of every `*_seconds` histogram: from a cached status answer to a slow callback.
const SECONDS_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder's handle, installing the recorder on first use. Should another recorder be
/// installed already (an embedding program's), ours still renders what it is given.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder.set_buckets(&SECONDS_BUCKETS).unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed before ours; /metrics shows only ours");
        }
        handle
    })
}

/// `GET /metrics`. The gauges of stored state (processes by status, open tasks, deliveries)
/// are read at scrape time: one grouped count per table.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
        (status = 500, description = "The server failed", body = crate::envelope::Envelope)))]
pub async fn render(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ops = state.ops.clone();
    match blocking(move || ops.gauges()).await? {
        Ok(gauges) => {
            // Every known state first, so that one that emptied reads 0, not its last count.
            for status in ["WaitingToProcess", "InProgress", "Success", "Failed", "Aborted"] {
                metrics::gauge!("async_engine_processes", "status" => status).set(0.0);
            }
            for state in ["queued", "leased"] {
                metrics::gauge!("async_engine_tasks", "state" => state).set(0.0);
            }
            for state in ["pending", "delivered", "failed", "superseded"] {
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
