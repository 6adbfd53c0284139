//! The whole application: every resource's routes, the fallbacks and the middleware, in their
//! order; and serving it.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Condition, ErrorHandlers, from_fn};
use actix_web::{App, HttpServer, web};

use crate::state::AppState;
use crate::{
    dashboard, guard, headers, middleware, openapi, operations, parts, processes, results, routing, status,
    tasks, watch,
};

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
    app_with(state, |_| {})
}

/// [`app`] with routes of the caller's matched before all of its own, behind the same
/// middleware: a benchmark's baseline route, which routing then costs the least.
pub fn app_with(
    state: AppState,
    first: impl FnOnce(&mut web::ServiceConfig),
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let origins = &state.guard.origins;
    let cors = Condition::new(!origins.list().is_empty(), origins.cors());
    App::new()
        .app_data(web::Data::new(state))
        // Innermost first: HEAD is routed as GET; the guard refuses before any route runs;
        // CORS answers listed origins' preflights and adds its headers; ErrorHandlers puts
        // what actix or actix-cors produced themselves (a refused preflight) in the envelope.
        .wrap(from_fn(guard::head_as_get))
        .wrap(from_fn(middleware::check))
        .wrap(cors)
        .wrap(ErrorHandlers::new().default_handler(middleware::ensure_envelope))
        .wrap(from_fn(middleware::log_request))
        // Outermost: every answer, the envelopes made above included, gets the security headers.
        .wrap(from_fn(headers::security_headers))
        .configure(first)
        // The status call first: actix tries patterns in this order, each with parameters a
        // regex (regex-lite), and again for the route label of the request log; behind nine
        // others, a status read paid for their regexes in a sixth of its time. Its pattern, one
        // segment after the prefix, cannot take another route's path.
        .configure(status::routes)
        .configure(processes::routes)
        .configure(results::routes)
        .configure(parts::routes)
        .configure(watch::routes)
        .configure(tasks::routes)
        .configure(operations::routes)
        .configure(openapi::routes)
        .configure(dashboard::routes)
        .default_service(web::to(routing::not_found))
}

/// Starts serving on an already bound listener. The caller owns stopping: it awaits the
/// returned server and stops it through `Server::handle` (actix's own signal handling is off,
/// since it would stop abruptly on SIGINT).
/// Serves on `listener` with at most `max_connections` client connections open at once.
pub fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
    max_connections: usize,
) -> std::io::Result<Server> {
    // actix's cap is per worker; the workers are named here so the total holds.
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let server = HttpServer::new(move || app(state.clone()))
        .workers(workers)
        .max_connections(max_connections.div_ceil(workers).max(1))
        .disable_signals()
        .listen(listener)?
        .shutdown_timeout(shutdown_timeout.as_secs())
        .run();
    Ok(server)
}
