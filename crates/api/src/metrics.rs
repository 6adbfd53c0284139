//! `GET /metrics`: Prometheus text from the process-wide `metrics` recorder, which every
//! layer records into (the engine's notification attempts, the API's waiting clients and
//! refusals) without knowing who exports it.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder's handle, installing the recorder on first use. Should another recorder be
/// installed already (an embedding program's), ours still renders what it is given.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed before ours; /metrics shows only ours");
        }
        handle
    })
}

pub async fn render() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(handle().render())
}
