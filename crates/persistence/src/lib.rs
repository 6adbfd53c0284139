//! Storage of Async Engine processes with diesel on SQLite: the connection pool, embedded
//! migrations, and the implementations of the domain's repository traits.

mod connection;
mod engine;
mod error;
mod models;
mod queries;
pub mod schema;
mod store;
#[cfg(test)]
mod test_db;

pub use connection::DbConnection;
pub use error::Error;
pub use store::{DatabaseUrl, Store};
