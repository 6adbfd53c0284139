//! Sets `cfg(browser)` when Debian's Chromium and chromedriver are installed, so that the
//! dashboard's real-browser test is built as ignored, with the reason, where they are not,
//! and a run reports it as ignored rather than as passed.

/// Where the end-to-end test looks for them (`tests/e2e/dashboard.rs`).
const BROWSER: [&str; 2] = ["/usr/bin/chromedriver", "/usr/bin/chromium"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(browser)");
    // The folder, not the files: a path that does not exist would run this script, and
    // rebuild the crate, on every build; the folder changes when the packages are installed.
    println!("cargo::rerun-if-changed=/usr/bin");
    if BROWSER.iter().all(|path| std::path::Path::new(path).exists()) {
        println!("cargo::rustc-cfg=browser");
    }
}
