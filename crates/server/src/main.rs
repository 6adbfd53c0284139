//! The `async-engine` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use async_engine::Settings;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "async-engine",
    version,
    about = "Runs multi-step bulk jobs and reports where each one stands."
)]
struct Cli {
    /// Where the server is, for the client commands; before or after the subcommand.
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the server is, for the client commands.
#[derive(clap::Args)]
struct ServerArgs {
    /// The server the client commands talk to.
    #[arg(long, global = true, env = "ASYNC_ENGINE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An API token (auth.enabled servers).
    #[arg(long, global = true, env = "ASYNC_ENGINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// A step of a process and which of its items, for `items` and `results`.
#[derive(clap::Args)]
struct StepOutcomes {
    /// An asyncProcessId, or a referenceId that names one process.
    id: String,
    /// The step, from 0.
    #[arg(long, default_value_t = 0)]
    step: u32,
    /// Only the items that failed at the step.
    #[arg(long, group = "which")]
    failed: bool,
    /// Only the items that succeeded at the step.
    #[arg(long, group = "which", alias = "successful")]
    succeeded: bool,
}

/// The server's own configuration, for the commands that open its database.
#[derive(clap::Args)]
struct ConfigArgs {
    /// A TOML file layered over the built-in defaults (environment variables still win).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (applies migrations first unless database.migrate_on_start = false).
    Serve(ConfigArgs),
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Create the SQLite database file when it does not exist (without it, a missing file
        /// is refused, naming the path).
        #[arg(long)]
        create: bool,
    },
    /// Delete processes that finished more than retention.days ago, now.
    Purge(ConfigArgs),
    /// Store the documented example and demo processes in the database (migrating it first,
    /// creating it if need be); idempotent.
    Seed {
        #[command(flatten)]
        seed: async_engine::seed::SeedArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Start a process on a running server.
    Submit {
        /// The process definition's name.
        name: String,
        #[arg(long)]
        reference_id: String,
        /// The items: a JSON array, one JSON item per line (NDJSON), or CSV (a header row
        /// naming the fields, then an item per row), streamed to the server as it is read.
        #[arg(long, value_name = "FILE")]
        items: PathBuf,
        /// How FILE lists its items (default: csv for a .csv file; else a JSON array when it
        /// starts with '[', NDJSON otherwise).
        #[arg(long, value_enum)]
        format: Option<async_engine::client::ItemsFormat>,
        /// A key that makes a repeated submit return the first one's process.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// A delayed start: an RFC 3339 time with its offset (e.g. 2026-12-05T10:00:00Z), at
        /// most 366 days ahead; the process waits, cancellable, until then.
        #[arg(long, value_name = "TIME", value_parser = async_engine::client::parse_start_at)]
        start_at: Option<chrono::DateTime<chrono::Utc>>,
        /// Higher first (-100 to 100, default 0); processes of one priority take turns.
        #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-100..=100))]
        priority: Option<i32>,
        /// Send the items in parts of about SIZE bytes (e.g. 64M), each a request of its own,
        /// cut at item boundaries (every CSV part repeats the header row). A rerun of the same
        /// command on the unchanged file resumes: it sends only the parts the server does not
        /// hold, then closes the upload.
        #[arg(long, value_name = "SIZE", value_parser = async_engine::upload::parse_size)]
        part_size: Option<u64>,
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
    },
    /// List processes, newest first: one line each, and the cursor of the next page.
    List {
        /// Only processes with this status (WaitingToProcess, InProgress, Success, Failed, Aborted).
        #[arg(long)]
        status: Option<String>,
        /// Only processes of this definition.
        #[arg(long)]
        name: Option<String>,
        /// Only processes with this reference ID.
        #[arg(long)]
        reference_id: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// The next page: the cursor the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a waiting or running process (it becomes Aborted).
    Cancel {
        /// An asyncProcessId, or a referenceId that names one process.
        id: String,
    },
    /// Run a failed process's failed items again, from the step where they failed.
    Retry {
        /// An asyncProcessId, or a referenceId that names one process.
        id: String,
    },
    /// Write the items a step recorded to standard output, one JSON object a line
    /// ({"index", "item"}, with "code" and "statusMessage" for a failure), in recording order.
    Items {
        #[command(flatten)]
        step: StepOutcomes,
        /// At most this many (default: every one, read a page at a time).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// List the process definitions the server runs, with their steps.
    Definitions,
    /// Write a step's results to standard output: every item with its outcome (succeeded,
    /// failed with code and message, or unprocessed), in item order, as NDJSON or CSV.
    Results {
        #[command(flatten)]
        step: StepOutcomes,
        /// Only the items with no outcome at the step.
        #[arg(long, group = "which")]
        unprocessed: bool,
        #[arg(long, value_enum, default_value = "ndjson")]
        format: async_engine::client::ResultsFormat,
    },
    /// Run PROGRAM once per task of a `queue:NAME` step: the task's items on its standard input
    /// as NDJSON ({"index": I, "item": ITEM} a line), one outcome per item read from its
    /// standard output ({"index": I}, or {"index": I, "code": C, "statusMessage": "..."}).
    /// SIGTERM or Ctrl-C stops claiming and lets running programs finish (a second one gives
    /// their tasks back at once). Exit status: 0 when stopped or --max-tasks were done, 1 when
    /// the server refused the worker (a token or queue name), 2 for a bad command line.
    Worker {
        /// The queue: the NAME of the step's `queue:NAME` handler.
        #[arg(long)]
        queue: String,
        /// Programs run at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
        concurrency: u16,
        /// Run this many tasks, then exit 0.
        #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
        max_tasks: Option<u64>,
        /// Kill a program that runs longer than this (seconds) and fail its task.
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        timeout: Option<std::time::Duration>,
        /// The lease asked for each task, extended by heartbeats while its program runs.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=3600))]
        lease_secs: u32,
        /// On stop, how long running programs may take before their tasks are given back.
        #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_secs)]
        grace_secs: std::time::Duration,
        /// The worker's name in leases and the server's log (default worker-PID).
        #[arg(long)]
        worker_id: Option<String>,
        /// The program, then its arguments, after `--`.
        #[arg(required = true, last = true, value_name = "PROGRAM")]
        program: Vec<std::ffi::OsString>,
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

fn parse_secs(text: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = text.parse().map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{secs} is not 0 to 86400 seconds"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
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
    if !matches!(
        cli.command,
        Command::Serve(_)
            | Command::Migrate { .. }
            | Command::Purge(_)
            | Command::Seed { .. }
            | Command::Token { .. }
    ) {
        return match client_command(cli.command, cli.server) {
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

impl ServerArgs {
    fn client(self) -> anyhow::Result<async_engine_client::Client> {
        let client = async_engine_client::Client::new(&self.server).context("--server")?;
        Ok(client.with_token(self.token.unwrap_or_default()))
    }
}

/// The status with failure groups and their items, or only counters when the items are more
/// than one answer may list (the server's governor limit answers 400 then).
fn summary_status(
    client: &async_engine_client::Client,
    id: &str,
) -> anyhow::Result<async_engine_client::Envelope> {
    use async_engine_client::StatusOptions;
    match client.status(id, StatusOptions::default()) {
        Err(error) if error.status() == Some(400) => Ok(client.status(id, StatusOptions::counters())?),
        other => Ok(other?),
    }
}

/// The client commands: no configuration, only a server to talk to.
fn client_command(command: Command, server: ServerArgs) -> anyhow::Result<u8> {
    use async_engine::client::{Bars, exit_code, outcome, summary};
    use async_engine_client::StatusOptions;
    match command {
        Command::Submit {
            name,
            reference_id,
            items,
            format,
            idempotency_key,
            start_at,
            priority,
            part_size,
            json,
        } => {
            let client = server.client()?;
            let options = |mut start: async_engine_client::Start| {
                if let Some(at) = start_at {
                    start = start.start_at(at);
                }
                if let Some(priority) = priority {
                    start = start.priority(priority);
                }
                start
            };
            // The answer as the server wrote it, for --json, not as this client reads it.
            let answer = match part_size {
                Some(part_size) => {
                    let submit = async_engine::upload::PartsSubmit {
                        name: &name,
                        reference_id: &reference_id,
                        path: &items,
                        format,
                        part_size,
                        idempotency_key,
                        options: &options,
                    };
                    async_engine::upload::submit_in_parts(&client, &submit)?
                }
                None => {
                    let (format, body) = async_engine::client::open_items(&items, format)?;
                    let mut start = async_engine_client::Start::from_raw(&name, &reference_id, Vec::new());
                    if let Some(key) = idempotency_key {
                        start = start.idempotency_key(key);
                    }
                    client.submit_stream_text(&options(start), format, body)?
                }
            };
            if json {
                write_stdout(&format!("{answer}\n"))?;
            } else {
                write_stdout(&summary(&serde_json::from_str(&answer).context("the server's answer")?))?;
            }
            Ok(0)
        }
        Command::Results { step: StepOutcomes { id, step, failed, succeeded }, unprocessed, format } => {
            use async_engine_client::ResultOutcome;
            let outcome = match (failed, succeeded, unprocessed) {
                (true, _, _) => ResultOutcome::Failed,
                (_, true, _) => ResultOutcome::Succeeded,
                (_, _, true) => ResultOutcome::Unprocessed,
                _ => ResultOutcome::All,
            };
            let file = server.client()?.results(&id, step, outcome, format.into())?;
            async_engine::client::copy_with_progress(file, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Status { id, watch, json } => {
            let client = server.client()?;
            if !watch {
                if json {
                    write_stdout(&format!("{}\n", client.status_text(&id, StatusOptions::default())?))?;
                } else {
                    write_stdout(&summary(&summary_status(&client, &id)?))?;
                }
                return Ok(0);
            }
            let mut bars = if json { None } else { Some(Bars::new()?) };
            let last = client.watch_text(&id, |text, envelope| match &mut bars {
                Some(bars) => bars.update(envelope),
                None => {
                    // Best effort: a closed pipe ends the watch's output, not the watch.
                    let _ = write_stdout(&format!("{}\n", text.replace('\n', "")));
                }
            })?;
            if let Some(bars) = &bars {
                bars.finish();
                // Events carry counters only; the summary names the failure groups too.
                write_stdout(&summary(&summary_status(&client, &id).unwrap_or(last.clone())))?;
            }
            Ok(exit_code(&outcome(&last)))
        }
        Command::List { status, name, reference_id, limit, cursor } => {
            let filter = async_engine_client::ListFilter {
                status,
                async_process_name: name,
                reference_id,
                limit: Some(limit),
                cursor,
            };
            write_stdout(&async_engine::client::list_lines(&server.client()?.list(&filter)?))?;
            Ok(0)
        }
        Command::Cancel { id } => {
            write_stdout(&summary(&server.client()?.cancel(&id)?))?;
            Ok(0)
        }
        Command::Retry { id } => {
            write_stdout(&summary(&server.client()?.retry(&id)?))?;
            Ok(0)
        }
        Command::Items { step: StepOutcomes { id, step, failed, succeeded }, limit } => {
            use async_engine_client::ItemOutcome;
            let outcome = match (failed, succeeded) {
                (true, _) => ItemOutcome::Failed,
                (_, true) => ItemOutcome::Successful,
                _ => ItemOutcome::All,
            };
            async_engine::client::write_items(
                &server.client()?,
                &id,
                step,
                outcome,
                limit,
                &mut std::io::stdout().lock(),
            )?;
            Ok(0)
        }
        Command::Definitions => {
            write_stdout(&async_engine::client::definition_lines(&server.client()?.definitions()?))?;
            Ok(0)
        }
        Command::Worker {
            queue,
            concurrency,
            max_tasks,
            timeout,
            lease_secs,
            grace_secs,
            worker_id,
            program,
        } => {
            use async_engine::runner::{Program, WorkerOptions, run_worker};
            let (name, args) = program.split_first().context("PROGRAM is required after --")?;
            let program = Program::find(name, args.to_vec(), timeout)?;
            let options = WorkerOptions {
                queue: queue.strip_prefix("queue:").unwrap_or(&queue).to_owned(),
                concurrency: usize::from(concurrency),
                max_tasks,
                lease_secs,
                grace: grace_secs,
                worker_id,
            };
            run_worker(server.client()?, options, program)
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
    let (Command::Serve(config)
    | Command::Migrate { config, .. }
    | Command::Purge(config)
    | Command::Seed { config, .. }) = &cli.command
    else {
        return Ok(());
    };
    let settings = Settings::from_env(config.config.as_deref())?;
    match cli.command {
        Command::Purge(_) => {
            let (purged, expired) = async_engine::purge(&settings)?;
            eprintln!(
                "async-engine: purged {purged} process(es) finished more than {} day(s) ago; \
                 aborted {expired} left open more than {} hour(s)",
                settings.retention.days, settings.limits.open_process_hours
            );
            Ok(())
        }
        Command::Serve(_) => async_engine::serve(&settings),
        Command::Seed { seed, .. } => {
            let said = async_engine::seed_database(&settings, &seed.plan()?)?;
            eprintln!("async-engine: {said}");
            Ok(())
        }
        Command::Migrate { create, .. } => {
            let applied = async_engine::migrate(&settings, create)?;
            if applied.is_empty() {
                eprintln!("async-engine: the database schema is current");
            }
            for name in applied {
                eprintln!("async-engine: applied {name}");
            }
            Ok(())
        }
        // The client commands, and the token, were answered before the configuration.
        _ => Ok(()),
    }
}
