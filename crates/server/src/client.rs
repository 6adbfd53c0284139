//! What the client commands (`submit`, `status`, `list`, `items`, `definitions`...) show:
//! summaries, the exit code of a watched process, one progress bar per step (contract §9).
//! The calls themselves are the client library's.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::Context;
use async_engine_client::{Client, Definitions, Envelope, ItemOutcome, ProcessStatus, UploadFormat};
use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};

/// How a watched process ended, as an exit code: 0 Success, 2 Failed, 3 Aborted (1 is an
/// error of the command itself).
pub fn exit_code(status: &str) -> u8 {
    match status {
        "Success" => 0,
        "Aborted" => 3,
        _ => 2,
    }
}

/// The worst final status among the records: Aborted, then Failed, then Success.
pub fn outcome(envelope: &Envelope) -> String {
    let statuses: Vec<&str> = envelope.processes.iter().map(|r| r.status.as_str()).collect();
    ["Aborted", "Failed", "WaitingToProcess", "InProgress"]
        .into_iter()
        .find(|s| statuses.contains(s))
        .unwrap_or("Success")
        .to_owned()
}

/// A short human summary of an envelope: each process, its steps, their failure groups.
pub fn summary(envelope: &Envelope) -> String {
    let mut text = String::new();
    for record in &envelope.processes {
        text.push_str(&record_line(record));
        for step in &record.items_processed {
            text.push_str(&format!(
                "  step {} {}: {}/{} {}\n",
                step.step_number, step.step_name, step.processed, step.total, step.status
            ));
            for group in &step.failed {
                text.push_str(&format!(
                    "    failed {} ({} item(s)): {}\n",
                    group.code,
                    group.items.len(),
                    group.status_message.as_deref().unwrap_or("")
                ));
            }
        }
    }
    text
}

fn record_line(record: &ProcessStatus) -> String {
    format!(
        "{} ({}, reference {}): {}, {}\n",
        record.async_process_id,
        record.async_process_name,
        record.reference_id,
        record.status,
        record.message
    )
}

/// `list`: a line per process, then where the next page starts.
pub fn list_lines(page: &Envelope) -> String {
    let mut text: String = page.processes.iter().map(record_line).collect();
    if page.processes.is_empty() {
        text.push_str("no processes\n");
    }
    if let Some(cursor) = &page.next_cursor {
        text.push_str(&format!("more: --cursor {cursor}\n"));
    }
    text
}

/// `--start-at`: an RFC 3339 time with its offset.
pub fn parse_start_at(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC 3339 time with its offset, like 2026-12-05T10:00:00Z: {e}"))
}

/// `definitions`: each definition and its steps, as the server runs them.
pub fn definition_lines(definitions: &Definitions) -> String {
    let mut text = String::new();
    for definition in &definitions.process_definitions {
        text.push_str(&format!("{}\n", definition.name));
        for step in &definition.steps {
            let bears: Vec<String> = [
                step.tolerated_failure_count.map(|count| format!("{count} failed item(s)")),
                step.tolerated_failure_percentage.map(|share| format!("{share} % failed")),
            ]
            .into_iter()
            .flatten()
            .collect();
            let bears =
                if bears.is_empty() { String::new() } else { format!(", bears {}", bears.join(" or ")) };
            let most = step.max_in_flight.map(|most| format!(", at most {most} at once")).unwrap_or_default();
            text.push_str(&format!(
                "  step {} {}: {} ({} item(s) a task, {} attempt(s), on item failure: {}{bears}{most})\n",
                step.step_number,
                step.name,
                step.handler,
                step.chunk_size,
                step.max_attempts,
                step.on_item_failure
            ));
        }
    }
    text
}

/// `items`: every item a step recorded (or the first `limit`), one JSON object a line, read
/// from the server a page at a time.
pub fn write_items(
    client: &Client,
    id: &str,
    step: u32,
    outcome: ItemOutcome,
    limit: Option<u64>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut written = 0_u64;
    let mut cursor: Option<String> = None;
    loop {
        let left = limit.map(|limit| limit - written);
        let page_size = left.map_or(1000, |left| u32::try_from(left.min(1000)).unwrap_or(1000));
        let page = client.items(id, step, outcome, Some(page_size), cursor.as_deref())?;
        for item in &page.items {
            let mut line = serde_json::json!({ "index": item.index, "item": item.item });
            if let Some(code) = item.code {
                line["code"] = code.into();
                line["statusMessage"] = item.status_message.clone().unwrap_or_default().into();
            }
            writeln!(out, "{line}").context("writing the items")?;
            written += 1;
        }
        cursor = page.next_cursor;
        if cursor.is_none() || limit.is_some_and(|limit| written >= limit) {
            break;
        }
    }
    out.flush()?;
    Ok(written)
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

    pub fn update(&mut self, envelope: &Envelope) {
        for record in &envelope.processes {
            let id = &record.async_process_id;
            for step in &record.items_processed {
                let number = u64::from(step.step_number);
                let bar = match self.bars.iter().find(|(p, n, _)| p == id && *n == number) {
                    Some((_, _, bar)) => bar.clone(),
                    None => {
                        let bar = self.multi.add(ProgressBar::new(0).with_style(self.style.clone()));
                        bar.set_prefix(format!("{} {}", short(id), step.step_name));
                        self.bars.push((id.clone(), number, bar.clone()));
                        bar
                    }
                };
                bar.set_length(step.total);
                bar.set_position(step.processed);
                bar.set_message(step.status.clone());
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

/// How `submit --items FILE` lists its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ItemsFormat {
    /// A JSON array.
    Json,
    /// One JSON item a line.
    Ndjson,
    /// A header row naming the fields, then one item a row.
    Csv,
}

/// How `results` writes its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultsFormat {
    Ndjson,
    Csv,
}

impl From<ResultsFormat> for UploadFormat {
    fn from(format: ResultsFormat) -> Self {
        match format {
            ResultsFormat::Ndjson => UploadFormat::Ndjson,
            ResultsFormat::Csv => UploadFormat::Csv,
        }
    }
}

/// The body `submit` streams for a file of items, with a bar of the bytes sent in a terminal.
/// NDJSON and CSV files go as they are, read as they are sent; a JSON array is read whole and
/// sent as NDJSON.
pub fn open_items(
    path: &Path,
    format: Option<ItemsFormat>,
) -> anyhow::Result<(UploadFormat, Box<dyn Read + Send>)> {
    let (upload, source) = crate::upload::items_source(path, format)?;
    let body = source.reader()?;
    let bar = crate::upload::progress(source.len()?)?;
    if bar.is_hidden() {
        return Ok((upload, body));
    }
    Ok((upload, Box::new(bar.wrap_read(body))))
}

/// Copies a download to `out`, with the bytes so far on standard error in a terminal.
pub fn copy_with_progress(mut from: impl Read, out: &mut impl Write) -> anyhow::Result<u64> {
    let copied = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                .context("progress bar template")?,
        );
        let copied = std::io::copy(&mut bar.wrap_read(from), out);
        bar.finish_and_clear();
        copied
    } else {
        std::io::copy(&mut from, out)
    };
    let copied = copied.context("writing the results")?;
    out.flush()?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn start_at_takes_rfc_3339_with_an_offset() {
        let at = parse_start_at("2026-12-05T11:00:00+01:00").unwrap();
        assert_eq!(at.timestamp(), parse_start_at("2026-12-05T10:00:00Z").unwrap().timestamp());
        for bad in ["2026-12-05T10:00:00", "tomorrow", ""] {
            assert!(parse_start_at(bad).unwrap_err().contains("RFC 3339"), "{bad}");
        }
    }

    #[test]
    fn definitions_print_a_line_a_step_with_what_it_bears() {
        let definitions: Definitions = serde_json::from_value(json!({ "processDefinitions": [{
            "name": "P",
            "steps": [
                { "stepNumber": 0, "name": "A", "handler": "queue:q", "chunkSize": 10, "maxAttempts": 3,
                  "timeoutSecs": 60, "onItemFailure": "skip", "toleratedFailureCount": 5,
                  "toleratedFailurePercentage": 2.5, "maxInFlight": 4 },
                { "stepNumber": 1, "name": "B", "handler": "builtin:noop", "chunkSize": 100, "maxAttempts": 1,
                  "timeoutSecs": 60, "onItemFailure": "abort" }
            ]
        }] }))
        .unwrap();
        assert_eq!(
            definition_lines(&definitions),
            "P\n  step 0 A: queue:q (10 item(s) a task, 3 attempt(s), on item failure: skip, bears 5 failed item(s) \
             or 2.5 % failed, at most 4 at once)\n  step 1 B: builtin:noop (100 item(s) a task, 1 attempt(s), on item failure: abort)\n"
        );
    }

    #[test]
    fn items_files_are_sent_as_ndjson_or_csv() {
        let read = |path: &Path, format| {
            let (format, mut body) = open_items(path, format).unwrap();
            let mut text = String::new();
            body.read_to_string(&mut text).unwrap();
            (format, text)
        };
        let dir = tempfile::tempdir().unwrap();
        let array = dir.path().join("a.json");
        std::fs::write(&array, "[ {\"a\":\n 1}, 2, \"three\" ]").unwrap();
        assert_eq!(read(&array, None), (UploadFormat::Ndjson, "{\"a\":  1}\n2\n\"three\"\n".to_owned()));
        let lines = dir.path().join("a.ndjson");
        std::fs::write(&lines, "{\"a\": 1}\n\n2\n").unwrap();
        assert_eq!(read(&lines, None), (UploadFormat::Ndjson, "{\"a\": 1}\n\n2\n".to_owned()));
        let csv = dir.path().join("q.CSV");
        std::fs::write(&csv, "a,b\n1,2\n").unwrap();
        assert_eq!(read(&csv, None).0, UploadFormat::Csv);
        assert_eq!(read(&lines, Some(ItemsFormat::Csv)).0, UploadFormat::Csv);
        std::fs::write(&array, "[1, nope]").unwrap();
        assert!(format!("{:#}", open_items(&array, None).err().unwrap()).contains("is not a JSON array"));
        assert!(open_items(&dir.path().join("missing.json"), None).is_err());
    }

    #[test]
    fn the_worst_status_decides() {
        let envelope = |statuses: &[&str]| -> Envelope {
            let records: Vec<_> = statuses
                .iter()
                .map(|s| {
                    json!({ "referenceId": "r", "asyncProcessName": "n", "asyncProcessId": "p", "status": s,
                    "message": "", "stepName": "s", "currentStepNumber": 0, "totalNumberOfSteps": 1 })
                })
                .collect();
            serde_json::from_value(
                json!({ "code": 200, "statusMessage": "Success", "AsyncProcessStatus": records }),
            )
            .unwrap()
        };
        assert_eq!(outcome(&envelope(&["Success", "Success"])), "Success");
        assert_eq!(outcome(&envelope(&["Success", "Failed"])), "Failed");
        assert_eq!(outcome(&envelope(&["Failed", "Aborted"])), "Aborted");
        assert_eq!((exit_code("Success"), exit_code("Failed"), exit_code("Aborted")), (0, 2, 3));
    }

    #[test]
    fn a_summary_names_every_failure_group() {
        let example: Envelope =
            serde_json::from_str(include_str!("../../../fixtures/documented-example.json")).unwrap();
        let text = summary(&example);
        assert!(
            text.starts_with("9876543 (Bulk CPQ, reference 12324): InProgress, Step 1 had errors\n"),
            "{text}"
        );
        assert!(
            text.contains("  step 0 Validate: 6/6 Failed\n    failed 5001 (2 item(s)): Invalid status\n"),
            "{text}"
        );
    }
}
