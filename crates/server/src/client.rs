//! What `async-engine submit` and `async-engine status` show: summaries, the exit code of a
//! watched process, one progress bar per step (contract §9). The calls themselves are the
//! client library's.

use std::path::Path;

use anyhow::Context;
use async_engine_client::{Envelope, ProcessStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};
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
