//! Logging set-up and the stop signals.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// Logs go to standard error, human-readable or JSON; `RUST_LOG` overrides `log.level`.
pub fn init(log: &LogSettings) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives).context("RUST_LOG")?,
        // actix-http logs a client's malformed request (a bad header, say) as an ERROR of its
        // own; it is the caller's mistake, answered 400, and must not page anyone.
        _ => EnvFilter::try_new(format!("{},actix_http::h1::dispatcher=off", log.level))
            .context("log.level")?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match log.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Already initialised (a second command in one process, as in tests) is fine.
    drop(result);
    Ok(())
}

/// Installs the handlers for SIGTERM and SIGINT (Ctrl-C) now, and resolves at the first of
/// them. Called inside the runtime before the address is announced: a supervisor that signals
/// as soon as it reads "listening on" must find the handler there, not the default action that
/// kills the process (exit 143).
pub fn stop_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (term, interrupt) => {
                    let error = term.err().or(interrupt.err()).map(|e| e.to_string()).unwrap_or_default();
                    tracing::warn!(%error, "cannot watch SIGTERM and SIGINT; only Ctrl-C stops the server");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
