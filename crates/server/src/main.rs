//! The `async-engine` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use async_engine::Settings;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "async-engine",
    version,
    about = "Runs multi-step bulk jobs and reports where each one stands."
)]
struct Cli {
    /// A TOML file layered over the built-in defaults (environment variables still win).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (applies migrations first unless database.migrate_on_start = false).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, naming the key or step at fault.
            eprintln!("async-engine: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_env(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => async_engine::serve(&settings),
        Command::Migrate => {
            let applied = async_engine::migrate(&settings)?;
            if applied.is_empty() {
                eprintln!("async-engine: the database schema is current");
            }
            for name in applied {
                eprintln!("async-engine: applied {name}");
            }
            Ok(())
        }
    }
}
