//! Storage of Async Engine processes with diesel on SQLite: the connection pool, embedded
//! migrations, and the implementations of the domain's repository traits.

mod connection;
mod engine;
mod error;
mod models;
mod ops;
mod outbox;
mod queries;
pub mod schema;
mod store;
#[cfg(any(test, feature = "testing"))]
#[expect(clippy::unwrap_used, reason = "test support: a failed set-up is a failed test")]
pub mod testing;

pub use connection::{DbConnection, SessionTimeouts};
pub use error::Error;
pub use store::{DatabaseUrl, Store};
