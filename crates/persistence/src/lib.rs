//! Storage of Async Engine processes with diesel on SQLite: the connection pool, embedded
//! migrations, and the implementations of the domain's repository traits.

mod engine;
mod error;
mod models;
mod queries;
pub mod schema;
mod store;

pub use error::Error;
pub use store::{DatabaseUrl, Store};
