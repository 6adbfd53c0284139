//! `async-engine submit` and `async-engine status`: a command-line client of a running server
//! (contract §9). `status --watch` follows the process's event stream and draws one progress
//! bar per step; its exit code says how the process ended, so scripts can wait on it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};
use serde_json::Value;
use serde_json::value::RawValue;

/// How a watched process ended, as an exit code: 0 Success, 2 Failed, 3 Aborted (1 is an
/// error of the command itself).
pub fn exit_code(status: &str) -> u8 {
    match status {
        "Success" => 0,
        "Aborted" => 3,
        _ => 2,
    }
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let base = server.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--server: '{server}' is not an http:// or https:// URL");
        }
        // No overall timeout: an event stream lasts as long as its process.
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .context("building the HTTP client")?;
        Ok(Self { base, token: token.filter(|t| !t.is_empty()), http })
    }

    fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<reqwest::blocking::Response> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response =
            request.send().map_err(|e| anyhow!("cannot reach {}: {}", self.base, root_cause(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // One line: the server's own explanation when it gave one.
        let body: Value = response.json().unwrap_or(Value::Null);
        let reason =
            body["technicalMessage"].as_str().unwrap_or_else(|| status.canonical_reason().unwrap_or(""));
        bail!("the server answered {}: {reason}", status.as_u16())
    }

    /// Starts a process; the answer is the envelope with its record.
    pub fn submit(&self, name: &str, reference_id: &str, items: &[Box<RawValue>]) -> anyhow::Result<Value> {
        let body = format!(
            "{{\"asyncProcessName\":{},\"referenceId\":{},\"items\":[{}]}}",
            Value::from(name),
            Value::from(reference_id),
            items.iter().map(|i| i.get()).collect::<Vec<_>>().join(",")
        );
        let request = self
            .http
            .post(format!("{}/v1/asyncprocesses", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        Ok(self.send(request)?.json()?)
    }

    /// The status envelope of an asyncProcessId or referenceId.
    pub fn status(&self, id: &str, items_list: bool) -> anyhow::Result<String> {
        let url = format!("{}/v1/asyncprocesses/{}?itemsList={items_list}", self.base, encode(id));
        Ok(self.send(self.http.get(url))?.text()?)
    }

    /// Follows the event stream until the processes are final, calling `seen` with each
    /// envelope; returns the last one.
    pub fn watch(&self, id: &str, mut seen: impl FnMut(&Value)) -> anyhow::Result<Value> {
        let url = format!("{}/v1/asyncprocesses/{}/events", self.base, encode(id));
        let response = self.send(self.http.get(url).header(reqwest::header::ACCEPT, "text/event-stream"))?;
        let mut last = None;
        let mut data = String::new();
        for line in BufReader::new(response).lines() {
            let line = line.context("reading the event stream")?;
            if let Some(part) = line.strip_prefix("data: ") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(part);
            } else if line.is_empty() && !data.is_empty() {
                let envelope: Value = serde_json::from_str(&data).context("an event that is not JSON")?;
                data.clear();
                if envelope["code"].as_u64().is_some_and(|c| c >= 400) {
                    let reason = envelope["technicalMessage"].as_str().unwrap_or("the process is gone");
                    bail!("{reason}");
                }
                seen(&envelope);
                last = Some(envelope);
            }
        }
        last.ok_or_else(|| anyhow!("the event stream ended before any status"))
    }
}

/// The worst final status among the records: Aborted, then Failed, then Success.
pub fn outcome(envelope: &Value) -> String {
    let statuses: Vec<&str> =
        records(envelope).iter().map(|r| r["status"].as_str().unwrap_or("Failed")).collect();
    ["Aborted", "Failed", "WaitingToProcess", "InProgress"]
        .into_iter()
        .find(|s| statuses.contains(s))
        .unwrap_or("Success")
        .to_owned()
}

fn records(envelope: &Value) -> &[Value] {
    envelope["AsyncProcessStatus"].as_array().map_or(&[], Vec::as_slice)
}

/// A short human summary of an envelope.
pub fn summary(envelope: &Value) -> String {
    let mut text = String::new();
    for record in records(envelope) {
        text.push_str(&format!(
            "{} ({}, reference {}): {}, {}\n",
            record["asyncProcessId"].as_str().unwrap_or("?"),
            record["asyncProcessName"].as_str().unwrap_or("?"),
            record["referenceId"].as_str().unwrap_or("?"),
            record["status"].as_str().unwrap_or("?"),
            record["message"].as_str().unwrap_or(""),
        ));
        for step in record["itemsProcessed"].as_array().map_or(&[][..], Vec::as_slice) {
            text.push_str(&format!(
                "  step {} {}: {}/{} {}\n",
                step["stepNumber"],
                step["stepName"].as_str().unwrap_or("?"),
                step["currentNumberOfItemsProccessed"],
                step["totalNumberOfItemsToBeProccessed"],
                step["status"].as_str().unwrap_or("?"),
            ));
        }
    }
    text
}

/// One bar per step of every watched process, with items/s and ETA.
pub struct Bars {
    multi: MultiProgress,
    bars: Vec<(String, u64, ProgressBar)>,
    style: ProgressStyle,
}

impl Bars {
    pub fn new() -> anyhow::Result<Self> {
        let style = ProgressStyle::with_template(
            "{prefix:30} [{bar:30}] {pos:>8}/{len:<8} {rate:>12} eta {eta:>4} {msg}",
        )
        .context("progress bar template")?
        // Whole items per second: indicatif's own per_sec prints every decimal it has.
        .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{:.0} items/s", state.per_sec());
        })
        .progress_chars("=> ");
        Ok(Self { multi: MultiProgress::new(), bars: Vec::new(), style })
    }

    pub fn update(&mut self, envelope: &Value) {
        for record in records(envelope) {
            let id = record["asyncProcessId"].as_str().unwrap_or("?").to_owned();
            for step in record["itemsProcessed"].as_array().map_or(&[][..], Vec::as_slice) {
                let number = step["stepNumber"].as_u64().unwrap_or(0);
                let bar = match self.bars.iter().find(|(p, n, _)| *p == id && *n == number) {
                    Some((_, _, bar)) => bar.clone(),
                    None => {
                        let bar = self.multi.add(ProgressBar::new(0).with_style(self.style.clone()));
                        bar.set_prefix(format!(
                            "{} {}",
                            short(&id),
                            step["stepName"].as_str().unwrap_or("?")
                        ));
                        self.bars.push((id.clone(), number, bar.clone()));
                        bar
                    }
                };
                bar.set_length(step["totalNumberOfItemsToBeProccessed"].as_u64().unwrap_or(0));
                bar.set_position(step["currentNumberOfItemsProccessed"].as_u64().unwrap_or(0));
                bar.set_message(step["status"].as_str().unwrap_or("").to_owned());
            }
        }
    }

    pub fn finish(&self) {
        for (_, _, bar) in &self.bars {
            bar.abandon();
        }
    }
}

fn short(id: &str) -> String {
    if id.chars().count() > 12 {
        format!("{}…", id.chars().take(11).collect::<String>())
    } else {
        id.to_owned()
    }
}

/// A path segment, percent-encoded.
fn encode(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The items of a file: a JSON array, or one JSON value per line (NDJSON).
pub fn read_items(path: &Path) -> anyhow::Result<Vec<Box<RawValue>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--items: cannot read {}", path.display()))?;
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(&text)
            .with_context(|| format!("--items: {} is not a JSON array", path.display()));
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str::<Box<RawValue>>(line)
                .with_context(|| format!("--items: {} line {} is not JSON", path.display(), n + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn items_come_from_a_json_array_or_ndjson() {
        let dir = tempfile::tempdir().unwrap();
        let array = dir.path().join("a.json");
        std::fs::write(&array, r#"[ {"a": 1}, 2, "three" ]"#).unwrap();
        let got: Vec<String> = read_items(&array).unwrap().iter().map(|v| v.get().to_owned()).collect();
        assert_eq!(got, [r#"{"a": 1}"#, "2", r#""three""#]);
        let lines = dir.path().join("a.ndjson");
        std::fs::write(&lines, "{\"a\": 1}\n\n2\n").unwrap();
        assert_eq!(read_items(&lines).unwrap().len(), 2);
        std::fs::write(&lines, "{\"a\": 1}\nnope\n").unwrap();
        assert!(format!("{:#}", read_items(&lines).unwrap_err()).contains("line 2"));
    }

    #[test]
    fn the_worst_status_decides() {
        let envelope = |statuses: &[&str]| json!({ "AsyncProcessStatus": statuses.iter().map(|s| json!({ "status": s })).collect::<Vec<_>>() });
        assert_eq!(outcome(&envelope(&["Success", "Success"])), "Success");
        assert_eq!(outcome(&envelope(&["Success", "Failed"])), "Failed");
        assert_eq!(outcome(&envelope(&["Failed", "Aborted"])), "Aborted");
        assert_eq!((exit_code("Success"), exit_code("Failed"), exit_code("Aborted")), (0, 2, 3));
    }
}
