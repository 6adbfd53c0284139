//! Developer chores: `cargo xtask seed` is `async-engine seed` (the documented example and
//! demo processes) with a `--database-url`; `cargo xtask measure-lookup` times status reads on a large process;
//! `cargo xtask measure-engine` measures the engine's throughput; `cargo xtask
//! measure-waiting` counts the database reads of clients waiting on a running process.

mod bench;
mod engine;
mod measure;
#[cfg(test)]
mod tidy;
mod waiting;

use std::process::ExitCode;

use async_engine::Settings;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Async Engine developer chores")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database and store the documented example (idempotent); optionally add
    /// generated demo processes in every state.
    Seed {
        /// Database to seed; defaults to the server's database.url (config and environment).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        #[command(flatten)]
        seed: async_engine::seed::SeedArgs,
    },
    /// Time status lookups on a process of many items against the 6-item documented example.
    MeasureLookup {
        /// Items in the large process.
        #[arg(long, default_value_t = 1_000_000)]
        items: u32,
        /// Lookups timed per case (the median is reported).
        #[arg(long, default_value_t = 200)]
        rounds: u32,
    },
    /// Run a 2-step noop process through the real engine on a temporary SQLite database and
    /// report items per second per step.
    MeasureEngine {
        #[arg(long, default_value_t = 100_000)]
        items: u32,
        /// Engine worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Items per task.
        #[arg(long, default_value_t = 500)]
        chunk: u32,
        /// Measure on PostgreSQL: a server URL whose user may create databases (a scratch
        /// database is made and dropped).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// Engine nodes sharing the database, each with its own pool.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// The performance budget: every figure a ratio against a baseline of the same run;
    /// writes BENCHMARKS.md and fails when a target is missed beyond the measured noise.
    Bench {
        /// Measure on PostgreSQL too (else TEST_POSTGRES_URL, when set).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// Measure only these rows (comma-separated, e.g. B11,B12); BENCHMARKS.md is written
        /// by full runs only.
        #[arg(long, value_delimiter = ',', value_name = "ROWS")]
        only: Vec<String>,
    },
    /// Count the database reads per second of clients waiting on one running process: a
    /// handful of plain pollers against growing numbers of long-polls.
    MeasureWaiting {
        /// Long-polling clients per case.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        clients: Vec<usize>,
        /// Seconds counted per case.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Seed { database_url, seed } => {
            let mut settings = Settings::from_env(None)?;
            if let Some(url) = database_url {
                settings.database.url = url;
            }
            eprintln!("{}", async_engine::seed_database(&settings, &seed.plan()?)?);
            Ok(())
        }
        Command::MeasureLookup { items, rounds } => measure::run(items, rounds),
        Command::MeasureEngine { items, workers, chunk, postgres, nodes } => {
            engine::run(items, workers, chunk, postgres, nodes)
        }
        Command::MeasureWaiting { clients, seconds } => waiting::run(clients, seconds),
        Command::Bench { postgres, only } => {
            if bench::run(postgres, &only)? {
                Ok(())
            } else {
                anyhow::bail!("a performance target was missed beyond the noise: see BENCHMARKS.md")
            }
        }
    }
}
