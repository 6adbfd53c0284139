//! Fresh databases for tests (this crate's, and others' through the `testing` feature): a
//! SQLite file in a temporary folder, or (when `TEST_POSTGRES_URL` is set) a PostgreSQL
//! database of its own, dropped afterwards.

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

use crate::store::Store;

/// A migrated store that cleans up after itself.
pub struct TestDb {
    pub store: Store,
    /// What `database.url` would say to reach it.
    pub url: String,
    _sqlite: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

pub fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("test.db").to_str().unwrap().to_owned();
    let store = Store::open(&url, 4).unwrap();
    store.migrate().unwrap();
    TestDb { store, url, _sqlite: Some(dir), postgres: None }
}

/// A fresh PostgreSQL database on the server `TEST_POSTGRES_URL` names. Only for tests
/// marked with [`postgres_test!`](crate::postgres_test), which are ignored in a build made
/// without it; a run that unsets it after such a build fails here rather than passing.
pub fn postgres() -> TestDb {
    let admin_url = std::env::var("TEST_POSTGRES_URL")
        .map_err(|_| "TEST_POSTGRES_URL was set when these tests were built and is not set now")
        .unwrap();
    let name = format!("ae_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::establish(&admin_url).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    let store = Store::open(&url, 4).unwrap();
    store.migrate().unwrap();
    TestDb { store, url, _sqlite: None, postgres: Some((admin_url, name)) }
}

impl TestDb {
    /// Drops a PostgreSQL database now, cutting every connection to it: for tests of what the
    /// server does when its database goes away. False on SQLite.
    pub fn drop_now(&self) -> bool {
        let Some((admin_url, name)) = &self.postgres else {
            return false;
        };
        let mut admin = PgConnection::establish(admin_url).unwrap();
        admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).unwrap();
        true
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = &self.postgres
            && let Ok(mut admin) = PgConnection::establish(admin_url)
        {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// Defines a test that needs PostgreSQL ([`postgres`]): a plain `#[test]` in a build made
/// with `TEST_POSTGRES_URL` set, and otherwise one ignored with the reason, so that a run
/// without PostgreSQL reports it as ignored, never as passed.
#[cfg(test_postgres)]
#[macro_export]
macro_rules! postgres_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() $body
    };
}

/// See the other definition: this is the one of builds without `TEST_POSTGRES_URL`.
#[cfg(not(test_postgres))]
#[macro_export]
macro_rules! postgres_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        #[ignore = "needs PostgreSQL: build and run the tests with TEST_POSTGRES_URL set"]
        fn $name() $body
    };
}

/// Defines a test once per backend: `name::sqlite` and `name::postgres`, each given a
/// fresh migrated `&Store`.
#[cfg(test)]
macro_rules! on_both_backends {
    ($(fn $name:ident($store:ident: &Store) $body:block)*) => {
        $(
            mod $name {
                use super::*;

                fn run($store: &Store) $body

                #[test]
                fn sqlite() {
                    run(&crate::testing::sqlite().store);
                }

                $crate::postgres_test! {
                    fn postgres() {
                        run(&crate::testing::postgres().store);
                    }
                }
            }
        )*
    };
}
#[cfg(test)]
pub(crate) use on_both_backends;
