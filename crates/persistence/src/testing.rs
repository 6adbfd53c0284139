//! Fresh databases for tests (this crate's, and others' through the `testing` feature): a
//! SQLite file in a temporary folder, or (when `TEST_POSTGRES_URL` is set) a PostgreSQL
//! database of its own, dropped afterwards.

use std::sync::Once;

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

/// `None`, said once per test binary, when `TEST_POSTGRES_URL` is not set.
pub fn postgres() -> Option<TestDb> {
    static SKIPPED: Once = Once::new();
    let Ok(admin_url) = std::env::var("TEST_POSTGRES_URL") else {
        SKIPPED.call_once(|| eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL tests are skipped"));
        return None;
    };
    let name = format!("ae_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::establish(&admin_url).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    let store = Store::open(&url, 4).unwrap();
    store.migrate().unwrap();
    Some(TestDb { store, url, _sqlite: None, postgres: Some((admin_url, name)) })
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

                #[test]
                fn postgres() {
                    if let Some(db) = crate::testing::postgres() {
                        run(&db.store);
                    }
                }
            }
        )*
    };
}
#[cfg(test)]
pub(crate) use on_both_backends;
