//! B11 and B12: a team's own work against the built-in `noop` step of the same size, on the
//! real release server. B11: an HTTP push step whose loopback endpoint answers every index
//! a success. B12: `async-engine worker` running a Python 3 program that echoes every index
//! as a success. Each is start-to-Success of one 1-step process, rounds interleaved.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use super::{ROUNDS, Row, Target, release_server, server_binary, spread};

/// Items of each process.
const ITEMS: u32 = 100_000;
const CHUNK: u32 = 500;
/// Programs `async-engine worker` runs at once, and push requests in flight.
const CONCURRENCY: u32 = 4;

const ECHO: &str = "import sys\nout = sys.stdout\nfor line in sys.stdin:\n    \
                    out.write('{\"index\": %s}\\n' % line[9:line.index(',')])\n";

pub fn rows(name: &'static str, url: &str) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let receiver = receiver()?;
    let config = dir.path().join("own.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\npush_allowed_hosts = [\"127.0.0.1\"]\npush_concurrency = {CONCURRENCY}\n\
             [[processes]]\nname = \"OwnNoop\"\n[[processes.steps]]\nname = \"Work\"\nhandler = \"builtin:noop\"\nchunk_size = {CHUNK}\n\
             [[processes]]\nname = \"OwnPush\"\n[[processes.steps]]\nname = \"Work\"\nhandler = \"http\"\nurl = \"{receiver}\"\nchunk_size = {CHUNK}\nmax_in_flight = {CONCURRENCY}\n\
             [[processes]]\nname = \"OwnQueue\"\n[[processes.steps]]\nname = \"Work\"\nhandler = \"queue:own\"\nchunk_size = {CHUNK}\n"
        ),
    )?;
    let (_server, base) = release_server(url, Some(&config), &[])?;
    let echo = dir.path().join("echo.py");
    std::fs::write(&echo, ECHO)?;
    let python = python()?;
    let _worker = super::Killed(
        Command::new(server_binary())
            .args(["worker", "--server", &base, "--queue", "own", "--concurrency", &CONCURRENCY.to_string()])
            .arg("--")
            .arg(&python)
            .arg("-S")
            .arg(&echo)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting async-engine worker")?,
    );
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600)).build()?;
    let (mut noop, mut push, mut queue) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        noop.push(run(&client, &base, "OwnNoop", round)?);
        push.push(run(&client, &base, "OwnPush", round)?);
        queue.push(run(&client, &base, "OwnQueue", round)?);
    }
    let (noop, noop_noise) = spread(noop);
    let (push, push_noise) = spread(push);
    let (queue, queue_noise) = spread(queue);
    eprintln!("B11/B12 {name}: noop {noop:.0}, push {push:.0}, worker runner {queue:.0} items/s");
    let baseline = format!("{noop:.0} items/s (builtin:noop)");
    Ok(vec![
        Row {
            id: "B11",
            backend: name,
            measured: format!("{push:.0} items/s (http push step)"),
            baseline: baseline.clone(),
            ratio: push / noop,
            noise: push_noise.max(noop_noise),
            target: Target::AtLeast(0.5),
        },
        Row {
            id: "B12",
            backend: name,
            measured: format!("{queue:.0} items/s (async-engine worker, python3)"),
            baseline,
            ratio: queue / noop,
            noise: queue_noise.max(noop_noise),
            target: Target::AtLeast(0.3),
        },
    ])
}

/// The Python 3 interpreter itself: a program starts once per task, and a version manager's
/// shim (pyenv's is a shell script) would cost more than the interpreter's own start.
fn python() -> anyhow::Result<std::path::PathBuf> {
    let system = std::path::PathBuf::from("/usr/bin/python3");
    if system.is_file() {
        return Ok(system);
    }
    let output = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output()?;
    anyhow::ensure!(output.status.success(), "B12 needs python3");
    Ok(String::from_utf8(output.stdout)?.trim().into())
}

/// Starts one process of `definition` and waits for its Success: items per second from the
/// start's answer (the items committed) to Success.
fn run(
    client: &reqwest::blocking::Client,
    base: &str,
    definition: &str,
    round: usize,
) -> anyhow::Result<f64> {
    let took = to_success(client, base, definition, &format!("{definition}-{round}"), ITEMS)?;
    Ok(f64::from(ITEMS) / took.as_secs_f64())
}

/// Starts a process of `definition` over `items` items through the API and waits for its
/// Success: the time from the start's answer (the items committed) to Success.
pub(super) fn to_success(
    client: &reqwest::blocking::Client,
    base: &str,
    definition: &str,
    reference: &str,
    items: u32,
) -> anyhow::Result<Duration> {
    let items: Vec<Value> = (0..items).map(|n| json!({ "n": n })).collect();
    let body = json!({ "asyncProcessName": definition, "referenceId": reference, "items": items });
    let answer = client.post(format!("{base}/v1/asyncprocesses")).json(&body).send()?;
    anyhow::ensure!(answer.status().as_u16() == 202, "{definition}: {}", answer.text()?);
    let begun = Instant::now();
    let answer: Value = answer.json()?;
    let id =
        answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().context("no asyncProcessId")?.to_owned();
    loop {
        let status: Value =
            client.get(format!("{base}/v1/asyncprocesses/{id}?verbose=false")).send()?.json()?;
        match status["AsyncProcessStatus"][0]["status"].as_str() {
            Some("Success") => return Ok(begun.elapsed()),
            Some("Failed" | "Aborted") => anyhow::bail!("{definition} ended: {status}"),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
        anyhow::ensure!(begun.elapsed() < Duration::from_secs(600), "{definition} did not finish in 10 min");
    }
}

/// A push endpoint on a loopback port that answers every index of a task a success.
fn receiver() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/push", listener.local_addr()?);
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            actix_web::HttpServer::new(|| {
                actix_web::App::new().app_data(actix_web::web::JsonConfig::default().limit(64 << 20)).route(
                    "/push",
                    actix_web::web::post().to(|task: actix_web::web::Json<Value>| async move {
                        let indices: Vec<&Value> = task["items"]
                            .as_array()
                            .map(|items| items.iter().map(|i| &i["index"]).collect())
                            .unwrap_or_default();
                        actix_web::HttpResponse::Ok().json(json!({ "successfully": indices }))
                    }),
                )
            })
            .workers(1)
            .listen(listener)?
            .run()
            .await
        })
    });
    Ok(url)
}
