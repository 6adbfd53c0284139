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
    /// Delete processes that finished more than retention.days ago, now.
    Purge,
    /// Print a new API token and the [[auth.keys]] entry (with its SHA-256) that admits it.
    Token {
        /// The key's name, as logs and limits know the caller.
        #[arg(long, default_value = "key")]
        name: String,
        /// The tenant whose processes the key sees and touches.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Comma-separated: status:read, processes:write, tasks:work, admin.
        #[arg(long, value_delimiter = ',', default_value = "status:read")]
        scopes: Vec<String>,
    },
}

/// What a command prints for scripts goes to standard output; messages go to standard error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
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
    if let Command::Token { name, tenant, scopes } = &cli.command {
        // Needs no configuration: it may be run anywhere, before one exists.
        let (token, entry) = async_engine::token(name, tenant, scopes)?;
        eprintln!("async-engine: the token (give it to the caller; it is shown only now):");
        write_stdout(&format!("{token}\n"))?;
        eprintln!("async-engine: the key to add to the server's configuration:");
        return write_stdout(&entry);
    }
    let settings = Settings::from_env(cli.config.as_deref())?;
    match cli.command {
        Command::Token { .. } => Ok(()),
        Command::Purge => {
            let purged = async_engine::purge(&settings)?;
            eprintln!(
                "async-engine: purged {purged} process(es) finished more than {} day(s) ago",
                settings.retention.days
            );
            Ok(())
        }
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
