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

/// Where the server is, for the client commands.
#[derive(clap::Args)]
struct ServerArgs {
    #[arg(long, env = "ASYNC_ENGINE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An API token (auth.enabled servers).
    #[arg(long, env = "ASYNC_ENGINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (applies migrations first unless database.migrate_on_start = false).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Delete processes that finished more than retention.days ago, now.
    Purge,
    /// Start a process on a running server.
    Submit {
        /// The process definition's name.
        name: String,
        #[arg(long)]
        reference_id: String,
        /// A JSON array of items, or one JSON item per line (NDJSON).
        #[arg(long, value_name = "FILE")]
        items: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
        /// Print the server's answer (the envelope) instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Show where a process stands; with --watch, follow it with a progress bar per step and
    /// exit 0 on Success, 2 on Failed, 3 on Aborted.
    Status {
        /// An asyncProcessId or a referenceId.
        id: String,
        /// Follow the process until it finishes.
        #[arg(long)]
        watch: bool,
        /// Print the envelope (each change, one per line, with --watch).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
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
    if let Command::Submit { .. } | Command::Status { .. } = &cli.command {
        return match client_command(cli.command) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("async-engine: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, naming the key or step at fault.
            eprintln!("async-engine: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The client commands: no configuration, only a server to talk to.
fn client_command(command: Command) -> anyhow::Result<u8> {
    use async_engine::client::{Bars, Client, exit_code, outcome, read_items, summary};
    match command {
        Command::Submit { name, reference_id, items, server, json } => {
            let items = read_items(&items)?;
            let client = Client::new(&server.server, server.token)?;
            let answer = client.submit(&name, &reference_id, &items)?;
            if json {
                write_stdout(&format!("{answer}\n"))?;
            } else {
                write_stdout(&summary(&answer))?;
            }
            Ok(0)
        }
        Command::Status { id, watch, json, server } => {
            let client = Client::new(&server.server, server.token)?;
            if !watch {
                let text = client.status(&id, json)?;
                if json {
                    write_stdout(&format!("{text}\n"))?;
                } else {
                    let answer: serde_json::Value = serde_json::from_str(&text)?;
                    write_stdout(&summary(&answer))?;
                }
                return Ok(0);
            }
            let mut bars = if json { None } else { Some(Bars::new()?) };
            let last = client.watch(&id, |envelope| match &mut bars {
                Some(bars) => bars.update(envelope),
                None => {
                    // Best effort: a closed pipe ends the watch's output, not the watch.
                    let _ = write_stdout(&format!("{envelope}\n"));
                }
            })?;
            if let Some(bars) = &bars {
                bars.finish();
                write_stdout(&summary(&last))?;
            }
            Ok(exit_code(&outcome(&last)))
        }
        _ => Ok(1),
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
        Command::Token { .. } | Command::Submit { .. } | Command::Status { .. } => Ok(()),
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
