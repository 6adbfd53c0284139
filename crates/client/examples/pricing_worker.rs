//! A worker of queue `pricing` (the "External Pricing" definition's Price step) in a dozen
//! lines: prices quote lines of up to 100 units and fails the rest with code 7001.
//! Run it beside a server: `cargo run -p async-engine-client --example pricing_worker`.

use async_engine_client::{Client, Outcomes, TaskFailure, Worker};

fn main() -> Result<(), async_engine_client::Error> {
    let server = std::env::var("ASYNC_ENGINE_SERVER").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let worker = Worker::new(Client::new(&server)?, "pricing").concurrency(4);
    let summary = worker.run(|task| {
        let mut outcomes = Outcomes::new();
        for entry in &task.items {
            let line: serde_json::Value = entry.parse().map_err(|e| TaskFailure::permanent(e.to_string()))?;
            match line["quantity"].as_u64() {
                Some(quantity) if quantity <= 100 => outcomes.succeed(entry.index),
                _ => outcomes.fail(entry.index, 7001, "Quantity over 100"),
            };
        }
        Ok(outcomes)
    })?;
    eprintln!("{summary:?}");
    Ok(())
}
