//! Shared by the handler tests: an app state of mocks that expect nothing, and a request
//! runner that checks every answer is JSON.

use std::sync::Arc;
use std::time::Duration;

use actix_web::test::{TestRequest, call_service, init_service, read_body_json};
use async_engine_domain::notify::MockDeliveryStore;
use async_engine_domain::ops::MockOperations;
use async_engine_domain::repository::MockStatusReader;
use async_engine_domain::work::{MockProcessStore, MockTaskStore};
use async_engine_domain::{FailurePolicy, Handler, ProcessDefinition, StepDefinition, Tolerance};
use serde_json::Value;

use crate::auth::Auth;
use crate::callback::CallbackPolicy;
use crate::claims::ClaimWaiters;
use crate::limits::StatusLimiter;
use crate::router::app;
use crate::state::{ApiConfig, AppState};
use crate::watcher::Watcher;

/// Mocks with no expectations (any call fails the test) and one definition, "P".
pub fn state() -> AppState {
    AppState {
        status: Arc::new(MockStatusReader::new()),
        processes: Arc::new(MockProcessStore::new()),
        tasks: Arc::new(MockTaskStore::new()),
        deliveries: Arc::new(MockDeliveryStore::new()),
        ops: Arc::new(MockOperations::new()),
        definitions: Arc::new(vec![ProcessDefinition {
            name: "P".into(),
            steps: vec![StepDefinition {
                name: "S".into(),
                handler: Handler::Queue("q".into()),
                chunk_size: 10,
                max_attempts: 3,
                timeout_secs: 60,
                on_item_failure: FailurePolicy::Skip,
                tolerance: Tolerance { count: Some(5), hundredths_of_percent: Some(250) },
                max_in_flight: Some(2),
            }],
            callback_url: None,
        }]),
        callbacks: Arc::new(CallbackPolicy::new(&["hooks.example.com".to_owned()]).unwrap()),
        watcher: Watcher::new(Duration::from_millis(20)),
        answers: Arc::default(),
        limiter: Arc::new(StatusLimiter::new(0)),
        auth: Arc::new(Auth::disabled()),
        on_new_work: Arc::new(|| {}),
        claims: ClaimWaiters::default(),
        guard: Arc::default(),
        config: ApiConfig::default(),
    }
}

pub async fn send(state: AppState, request: TestRequest) -> (u16, Value) {
    let service = init_service(app(state)).await;
    let response = call_service(&service, request.to_request()).await;
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_owned());
    assert_eq!(content_type.as_deref(), Some("application/json"), "every answer is JSON");
    (status, read_body_json(response).await)
}
