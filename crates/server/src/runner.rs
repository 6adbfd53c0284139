//! `async-engine worker -- PROGRAM`: runs any program once per task of a `queue:` step, the
//! task's items on its standard input as NDJSON and their outcomes read back from its standard
//! output, on the client library's worker loop (which claims, heartbeats, completes and stops).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_engine_client::{Client, Event, Outcomes, Stop, Summary, Task, TaskFailure, Worker};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

/// The longest line read from a program's output; an outcome line is far shorter.
const MAX_LINE_BYTES: u64 = 64 * 1024;
/// The largest `additionalData` passed in the program's environment.
const MAX_ENV_DATA_BYTES: usize = 32 * 1024;
/// The most of a program's last standard error line kept for the task's error.
const MAX_ERROR_CHARS: usize = 500;

/// A program run once per task.
#[derive(Debug, Clone)]
pub struct Program {
    /// The program, resolved on `PATH` at start-up.
    pub path: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Longest a run may take before it is killed and its task failed.
    pub timeout: Option<Duration>,
}

/// One line of a program's output: `{"index": I}`, or with `code` and `statusMessage` a failure.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutcomeLine {
    index: u64,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    status_message: Option<String>,
}

impl Program {
    /// A program named as on a command line: a path, or a name looked up on `PATH`.
    pub fn find(name: &OsString, args: Vec<OsString>, timeout: Option<Duration>) -> anyhow::Result<Self> {
        let given = Path::new(name);
        let path = if given.components().count() > 1 {
            given.is_file().then(|| given.to_path_buf())
        } else {
            std::env::var_os("PATH")
                .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(given)).find(|p| p.is_file()))
                .unwrap_or_default()
        };
        let Some(path) = path else {
            bail!("PROGRAM '{}' is not a file, nor a program on PATH", given.display());
        };
        Ok(Self { path, args, timeout })
    }

    /// Runs the program over one task: its outcomes, or why the attempt failed (always
    /// retryable: a later attempt, or another machine, may do better).
    pub fn run(&self, task: &Task, stderr_line: &(dyn Fn(&str) + Sync)) -> Result<Outcomes, TaskFailure> {
        let mut child = self
            .spawn(task)
            .map_err(|e| TaskFailure::retryable(format!("cannot start {}: {e}", self.path.display())))?;
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let last_error = Mutex::new(String::new());
        let output = Output::default();
        let (ended, read) = std::thread::scope(|scope| {
            if let Some(stdin) = stdin {
                scope.spawn(|| write_items(stdin, task));
            }
            let reader = scope.spawn(|| {
                let read = stdout.map_or_else(|| Ok(Outcomes::new()), |out| read_outcomes(out, task));
                output.closed(read.is_err());
                read
            });
            if let Some(stderr) = stderr {
                scope.spawn(|| keep_last_line(stderr, &last_error, stderr_line));
            }
            let ended = self.wait(&mut child, task, &output);
            (ended, reader.join().unwrap_or_else(|_| Err("the output reader panicked".into())))
        });
        let last = last_error.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let with_last = |message: String| {
            if last.is_empty() { message } else { format!("{message}: {last}") }
        };
        let status = ended.map_err(|why| TaskFailure::retryable(with_last(why)))?;
        // Wrong output first: the program was killed for it, so its status says nothing.
        let outcomes = read.map_err(|why| TaskFailure::retryable(format!("the program's output: {why}")))?;
        if !status.success() {
            let how = match (status.code(), status.signal()) {
                (Some(code), _) => format!("the program exited with status {code}"),
                (None, Some(signal)) => format!("the program was killed by signal {signal}"),
                (None, None) => "the program failed".to_owned(),
            };
            return Err(TaskFailure::retryable(with_last(how)));
        }
        outcomes.check(task).map_err(|why| TaskFailure::retryable(format!("the program's output: {why}")))?;
        Ok(outcomes)
    }

    fn spawn(&self, task: &Task) -> std::io::Result<Child> {
        let mut command = Command::new(&self.path);
        // Linux refuses to start a program with one environment string over 128 KiB.
        if task.additional_data.get().len() <= MAX_ENV_DATA_BYTES {
            command.env("ASYNC_ENGINE_ADDITIONAL_DATA", task.additional_data.get());
        }
        command
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own: a Ctrl-C at the terminal stops the worker (which lets running
            // programs finish), not the programs; and the group is what a timeout kills.
            .process_group(0)
            // The worker's API token is the worker's, not the program's.
            .env_remove("ASYNC_ENGINE_TOKEN")
            .env("ASYNC_ENGINE_TASK_ID", task.task_id.to_string())
            .env("ASYNC_ENGINE_ATTEMPT", task.attempt.to_string())
            .env("ASYNC_ENGINE_PROCESS_ID", &task.async_process_id)
            .env("ASYNC_ENGINE_REFERENCE_ID", &task.reference_id)
            .env("ASYNC_ENGINE_PROCESS_NAME", &task.async_process_name)
            .env("ASYNC_ENGINE_STEP_NUMBER", task.step_number.to_string())
            .env("ASYNC_ENGINE_STEP_NAME", &task.step_name)
            .spawn()
    }

    /// Waits for the program's exit, killing it on a timeout, when the task was given up, or
    /// as soon as its output is known to be wrong. Its whole group is killed before the
    /// program is reaped: the program's own children end with the task, and pipes they held
    /// open would keep the readers waiting. (Before reaping, the exited program still holds
    /// its ID, so the group's ID cannot have been given to another process.)
    fn wait(&self, child: &mut Child, task: &Task, output: &Output) -> Result<ExitStatus, String> {
        let begun = Instant::now();
        loop {
            let exited = exited(child).map_err(|e| format!("waiting for the program: {e}"))?;
            let why = if exited || output.was_wrong() {
                // The reader's error says what was wrong with the output; the status is read.
                None
            } else if task.is_cancelled() {
                Some("the worker gave the task up (stopping, or the lease was lost)".to_owned())
            } else if let Some(limit) = self.timeout.filter(|limit| begun.elapsed() >= *limit) {
                Some(format!("the program ran longer than --timeout {}s and was killed", limit.as_secs_f64()))
            } else {
                output.wait();
                continue;
            };
            kill_group(child);
            let status = child.wait().map_err(|e| format!("waiting for the program: {e}"))?;
            return why.map_or(Ok(status), Err);
        }
    }
}

/// The state of a program's standard output, which the waiting thread sleeps on: a program
/// usually ends right after closing it, so its exit is noticed within a millisecond without
/// polling often while it runs.
#[derive(Default)]
struct Output {
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Output {
    fn closed(&self, wrong: bool) {
        *self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (true, wrong);
        self.changed.notify_all();
    }

    fn was_wrong(&self) -> bool {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1
    }

    /// Sleeps up to 20 ms, waking when the output closes; 1 ms once it has.
    fn wait(&self) {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0 {
            drop(state);
            std::thread::sleep(Duration::from_millis(1));
        } else {
            let _ = self.changed.wait_timeout(state, Duration::from_millis(20));
        }
    }
}

/// Whether the program has exited, without reaping it.
fn exited(child: &Child) -> std::io::Result<bool> {
    use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    Ok(waitid(WaitId::Pid(Pid::from_child(child)), options)?.is_some())
}

fn kill_group(child: &Child) {
    use rustix::process::{Pid, Signal, kill_process_group};
    // Gone already (ESRCH) is the usual case after a normal exit.
    let _ = kill_process_group(Pid::from_child(child), Signal::KILL);
}

/// Writes `{"index": I, "item": ITEM}` a line, the items exactly as the process was given
/// them. A program that exits without reading them all is not an error of the writer.
fn write_items(stdin: impl Write, task: &Task) {
    let mut out = BufWriter::new(stdin);
    for entry in &task.items {
        if writeln!(out, "{{\"index\":{},\"item\":{}}}", entry.index, entry.item.get()).is_err() {
            return;
        }
    }
    let _ = out.flush();
}

/// Reads outcome lines until the program closes its output; the first wrong line ends it.
fn read_outcomes(stdout: impl Read, task: &Task) -> Result<Outcomes, String> {
    let expected: HashSet<u64> = task.indices().collect();
    let mut seen = HashSet::with_capacity(expected.len());
    let mut outcomes = Outcomes::new();
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading line {number}: {e}"))?;
        if read == 0 {
            break;
        }
        if line.len() as u64 > MAX_LINE_BYTES {
            return Err(format!("line {number} is longer than {} KiB", MAX_LINE_BYTES / 1024));
        }
        let text = std::str::from_utf8(&line).map_err(|_| format!("line {number} is not UTF-8"))?.trim();
        if text.is_empty() {
            continue;
        }
        let outcome: OutcomeLine = serde_json::from_str(text).map_err(|e| {
            format!("line {number} is not an outcome ({{\"index\": I}} or {{\"index\": I, \"code\": C, \"statusMessage\": \"...\"}}): {e}")
        })?;
        let index = outcome.index;
        if !expected.contains(&index) {
            return Err(format!("line {number}: item {index} is not in task {}", task.task_id));
        }
        if !seen.insert(index) {
            return Err(format!("line {number}: item {index} has an outcome already"));
        }
        match (outcome.code, outcome.status_message) {
            (None, None) => outcomes.succeed(index),
            (Some(code), Some(message)) if !message.is_empty() && message.chars().count() <= 1_000 => {
                outcomes.fail(index, code, message)
            }
            (Some(_), Some(_)) => {
                return Err(format!("line {number}: statusMessage must be 1 to 1000 characters"));
            }
            (Some(_), None) => return Err(format!("line {number}: a failure needs a statusMessage")),
            (None, Some(_)) => return Err(format!("line {number}: a failure needs a code")),
        };
    }
    Ok(outcomes)
}

/// Passes each standard error line on and keeps the last non-empty one for the task's error.
fn keep_last_line(stderr: impl Read, last: &Mutex<String>, each: &(dyn Fn(&str) + Sync)) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE_BYTES).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.trim().is_empty() {
            continue;
        }
        each(text);
        let mut kept = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *kept = text.chars().take(MAX_ERROR_CHARS).collect();
    }
}

/// The options of `async-engine worker`.
pub struct WorkerOptions {
    pub queue: String,
    pub concurrency: usize,
    pub max_tasks: Option<u64>,
    pub lease_secs: u32,
    pub grace: Duration,
    pub worker_id: Option<String>,
}

/// `async-engine worker`: runs until a signal (or `--max-tasks`); 0 when it stopped as asked.
pub fn run_worker(client: Client, options: WorkerOptions, program: Program) -> anyhow::Result<u8> {
    let stop = Stop::default();
    on_signals(stop.clone())?;
    let progress = Arc::new(Progress::new(std::io::stderr().is_terminal())?);
    let mut worker = Worker::new(client.clone(), &options.queue)
        .concurrency(options.concurrency)
        .lease_secs(options.lease_secs)
        .grace(options.grace)
        .with_stop(stop);
    if let Some(id) = options.worker_id {
        worker = worker.worker_id(id);
    }
    if let Some(max) = options.max_tasks {
        worker = worker.max_tasks(max);
    }
    let listener = progress.clone();
    let worker = worker.on_event(move |event| listener.event(event));
    progress.say(&format!(
        "claiming tasks of queue '{}' from {} ({} at a time) for {}; Ctrl-C or SIGTERM stops",
        options.queue,
        client.server(),
        options.concurrency,
        program.path.display()
    ));
    let lines = progress.clone();
    let summary = worker.run(|task| {
        let id = task.task_id;
        program.run(task, &|line| lines.say(&format!("task {id} | {line}")))
    });
    progress.finish();
    let summary = summary.context("the server refused the worker")?;
    progress.say(&format!("stopped: {}", describe(&summary)));
    Ok(0)
}

fn describe(summary: &Summary) -> String {
    format!(
        "{} task(s) completed ({} item(s) succeeded, {} failed), {} failed, {} given up",
        summary.completed, summary.items_succeeded, summary.items_failed, summary.failed, summary.given_up
    )
}

/// SIGTERM or Ctrl-C stops claiming and lets running tasks finish; a second one gives them
/// back at once.
fn on_signals(stop: Stop) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Registered here, before the first claim, so that no signal is missed.
    let (mut terminate, mut interrupt) = {
        let _entered = runtime.enter();
        (
            signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        )
    };
    std::thread::spawn(move || {
        runtime.block_on(async move {
            loop {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                if stop.is_stopping() {
                    eprintln!("async-engine worker: giving running tasks back now");
                    stop.abandon();
                } else {
                    eprintln!(
                        "async-engine worker: stopping: no more claims, running tasks finish (again to give them back now)"
                    );
                    stop.stop();
                }
            }
        });
    });
    Ok(())
}

/// A line per task, or in a terminal one spinner with the counts.
struct Progress {
    bar: Option<ProgressBar>,
    tasks: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

impl Progress {
    fn new(terminal: bool) -> anyhow::Result<Self> {
        let bar = if terminal {
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .context("spinner template")?,
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar.set_message("waiting for tasks");
            Some(bar)
        } else {
            None
        };
        Ok(Self { bar, tasks: AtomicU64::new(0), succeeded: AtomicU64::new(0), failed: AtomicU64::new(0) })
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("async-engine worker: {line}")),
            None => eprintln!("async-engine worker: {line}"),
        }
    }

    fn event(&self, event: &Event<'_>) {
        match event {
            Event::Claimed { .. } => return,
            Event::Completed { task, succeeded, failed, took } => {
                self.tasks.fetch_add(1, Ordering::Relaxed);
                self.succeeded.fetch_add(*succeeded as u64, Ordering::Relaxed);
                self.failed.fetch_add(*failed as u64, Ordering::Relaxed);
                if self.bar.is_none() {
                    self.say(&format!(
                        "task {} ({}): {succeeded} succeeded, {failed} failed in {:.2} s",
                        task.task_id,
                        about(task),
                        took.as_secs_f64()
                    ));
                }
            }
            Event::Failed { task, message, retryable, .. } => {
                let again = if *retryable { "retryable" } else { "not retryable" };
                self.say(&format!("task {} ({}) failed ({again}): {message}", task.task_id, about(task)));
            }
            Event::GivenUp { task, reason } => self.say(&format!("task {} given up: {reason}", task.task_id)),
            Event::Unreachable { error, retry_in } => {
                self.say(&format!("{error}; trying again in {:.1} s", retry_in.as_secs_f64()));
            }
            Event::Stopping { running } => self.say(&format!("waiting for {running} running task(s)")),
            _ => {}
        }
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{} task(s) done: {} item(s) succeeded, {} failed",
                self.tasks.load(Ordering::Relaxed),
                self.succeeded.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed)
            ));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn about(task: &Task) -> String {
    format!(
        "{} {}, step {} {}, attempt {}",
        task.async_process_name, task.async_process_id, task.step_number, task.step_name, task.attempt
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn task(indices: &[u64]) -> Task {
        serde_json::from_value(json!({
            "taskId": 7, "leaseToken": "t", "asyncProcessId": "p", "referenceId": "r",
            "asyncProcessName": "n", "stepNumber": 1, "stepName": "Price", "attempt": 2,
            "leaseExpiresAt": "2026-12-02T00:00:00Z", "additionalData": { "k": "v" },
            "items": indices.iter().map(|i| json!({ "index": i, "item": { "n": i } })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn sh(script: &str, timeout: Option<Duration>) -> Program {
        Program::find(&"sh".into(), vec!["-c".into(), script.into()], timeout).unwrap()
    }

    fn run(script: &str, indices: &[u64]) -> Result<Outcomes, TaskFailure> {
        sh(script, Some(Duration::from_secs(10))).run(&task(indices), &|_| {})
    }

    fn error(script: &str, indices: &[u64]) -> String {
        run(script, indices).unwrap_err().message
    }

    #[test]
    fn items_go_in_as_ndjson_and_outcomes_come_back() {
        // Echo the input back as the outcomes, failing odd items, with sed alone.
        let script = r#"while read -r line; do
            i=$(echo "$line" | sed 's/.*"index":\([0-9]*\).*/\1/')
            if [ $((i % 2)) = 1 ]; then echo "{\"index\": $i, \"code\": 7001, \"statusMessage\": \"odd\"}"; else echo "{\"index\": $i}"; fi
        done"#;
        let mut expected = Outcomes::new();
        expected.succeed(4).fail(5, 7001, "odd").succeed(10);
        assert_eq!(run(script, &[4, 5, 10]), Ok(expected));
    }

    #[test]
    fn the_program_sees_the_task_but_not_the_token() {
        let script = r#"cat > /dev/null; [ -z "$ASYNC_ENGINE_TOKEN" ] || exit 9
            [ "$ASYNC_ENGINE_TASK_ID/$ASYNC_ENGINE_ATTEMPT/$ASYNC_ENGINE_STEP_NAME/$ASYNC_ENGINE_ADDITIONAL_DATA" = '7/2/Price/{"k":"v"}' ] || exit 8
            echo '{"index": 1}'"#;
        assert_eq!(run(script, &[1]).map(|o| o.succeeded()), Ok(1));
    }

    #[test]
    fn a_crash_fails_the_attempt_with_the_last_error_line() {
        let failure =
            run("cat > /dev/null; echo first >&2; echo 'boom: no database' >&2; exit 3", &[1]).unwrap_err();
        assert_eq!(failure, TaskFailure::retryable("the program exited with status 3: boom: no database"));
        assert!(error("kill -9 $$", &[1]).starts_with("the program was killed by signal 9"));
    }

    #[test]
    fn wrong_output_fails_the_attempt_naming_the_line() {
        assert!(error("echo '{\"index\": 1}'; echo garbage", &[1, 2]).contains("line 2 is not an outcome"));
        assert!(
            error("echo '{\"index\": 1}'; echo '{\"index\": 1}'", &[1])
                .contains("line 2: item 1 has an outcome already")
        );
        assert!(error("echo '{\"index\": 99}'", &[1]).contains("line 1: item 99 is not in task 7"));
        assert!(error("echo '{\"index\": 1, \"code\": 5}'", &[1]).contains("needs a statusMessage"));
        assert_eq!(
            error("echo '{\"index\": 1}'", &[1, 2, 3]),
            "the program's output: no outcome for item(s) 2, 3"
        );
    }

    #[test]
    fn a_program_that_hangs_is_killed_with_its_children_at_the_timeout() {
        let begun = Instant::now();
        let hang = sh("sleep 30 & sleep 30", Some(Duration::from_millis(300)));
        let failure = hang.run(&task(&[1]), &|_| {}).unwrap_err();
        assert!(failure.message.contains("longer than --timeout 0.3s"), "{}", failure.message);
        // The background sleep held stdout too: had it lived, the reader would still wait.
        assert!(begun.elapsed() < Duration::from_secs(5), "{:?}", begun.elapsed());
    }

    #[test]
    fn a_cancelled_task_stops_its_program() {
        let task = task(&[1]);
        let cancelled = task.clone();
        let program = sh("sleep 30", None);
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            cancelled.cancel();
        });
        let failure = program.run(&task, &|_| {}).unwrap_err();
        stopper.join().unwrap();
        assert!(failure.message.contains("gave the task up"), "{}", failure.message);
    }

    #[test]
    fn a_missing_program_is_named_at_start_up() {
        let error = Program::find(&"no-such-program-here".into(), vec![], None).unwrap_err();
        assert!(error.to_string().contains("'no-such-program-here' is not a file"), "{error}");
        assert!(Program::find(&"./no/such/file".into(), vec![], None).is_err());
    }
}
