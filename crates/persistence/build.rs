//! Sets `cfg(test_postgres)` when `TEST_POSTGRES_URL` is set at build time, so that tests
//! needing PostgreSQL are built as ignored (with the reason) without it, and a run reports
//! them as ignored rather than as passed (`testing::postgres_test!`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(test_postgres)");
    println!("cargo::rerun-if-env-changed=TEST_POSTGRES_URL");
    if std::env::var_os("TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=test_postgres");
    }
}
