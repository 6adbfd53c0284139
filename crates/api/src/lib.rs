//! The HTTP face of Async Engine: routes, the documented envelope on every answer, and the
//! mapping of errors to codes. The only crate that knows HTTP.

mod clock;
pub mod envelope;
pub mod error;
mod handlers;
pub mod params;
mod processes;
mod tasks;
#[cfg(test)]
mod test_support;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::{App, HttpServer, web};
use async_engine_domain::{ProcessDefinition, ProcessStore, StatusReader, TaskStore};

/// The answer code of a successful status call: 202 as documented, or 200 by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuccessCode {
    Accepted,
    Ok,
}

impl SuccessCode {
    /// Only 200 and 202 are meaningful success codes for the status call.
    pub fn from_u16(code: u16) -> Option<Self> {
        match code {
            202 => Some(SuccessCode::Accepted),
            200 => Some(SuccessCode::Ok),
            _ => None,
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            SuccessCode::Accepted => StatusCode::ACCEPTED,
            SuccessCode::Ok => StatusCode::OK,
        }
    }
}

/// API behaviour chosen by configuration.
#[derive(Debug, Clone, Copy)]
pub struct ApiConfig {
    pub success_code: SuccessCode,
    /// The largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Lease of an external worker's claim that names none.
    pub default_lease_secs: u64,
    /// The governor limit: a status answer may list at most this many items (contract §6).
    pub max_items_per_response: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            success_code: SuccessCode::Accepted,
            max_body_bytes: 1024 * 1024,
            default_lease_secs: 60,
            max_items_per_response: 10_000,
        }
    }
}

/// What every handler shares: the stores, the definitions and the configuration.
#[derive(Clone)]
pub struct AppState {
    pub status: Arc<dyn StatusReader>,
    pub processes: Arc<dyn ProcessStore>,
    pub tasks: Arc<dyn TaskStore>,
    pub definitions: Arc<Vec<ProcessDefinition>>,
    /// Called when new tasks may be due, to wake this node's idle engine workers.
    pub on_new_work: Arc<dyn Fn() + Send + Sync>,
    pub config: ApiConfig,
}

/// The whole application: routes, fallbacks and middleware. Tests serve exactly this.
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state))
        .wrap(ErrorHandlers::new().default_handler(handlers::ensure_envelope))
        .wrap(from_fn(handlers::log_request))
        .wrap(tracing_actix_web::TracingLogger::default())
        .configure(handlers::routes)
        .default_service(web::to(handlers::not_found))
}

/// Starts serving on an already bound listener. The caller owns stopping: it awaits the
/// returned server and stops it through `Server::handle` (actix's own signal handling is off,
/// since it would stop abruptly on SIGINT).
pub fn serve(listener: TcpListener, state: AppState, shutdown_timeout: Duration) -> std::io::Result<Server> {
    let server = HttpServer::new(move || app(state.clone()))
        .disable_signals()
        .listen(listener)?
        .shutdown_timeout(shutdown_timeout.as_secs())
        .run();
    Ok(server)
}
