//! The status vocabulary and the rules that tell a step's and a process's status (contract §2).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The five statuses of a process or a step. Output always uses these spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    WaitingToProcess,
    InProgress,
    Success,
    Failed,
    Aborted,
}

/// A status text that is none of the five (nor the documented alias).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status '{0}'; expected one of WaitingToProcess, InProgress, Success, Failed, Aborted")]
pub struct UnknownStatus(pub String);

impl Status {
    pub const ALL: [Status; 5] =
        [Status::WaitingToProcess, Status::InProgress, Status::Success, Status::Failed, Status::Aborted];

    /// The documentation's own misspelling of `InProgress`, accepted on input only.
    pub const IN_PROGRESS_ALIAS: &'static str = "InProgess";

    pub fn as_str(self) -> &'static str {
        match self {
            Status::WaitingToProcess => "WaitingToProcess",
            Status::InProgress => "InProgress",
            Status::Success => "Success",
            Status::Failed => "Failed",
            Status::Aborted => "Aborted",
        }
    }

    /// Finished statuses never change again (retry starts a new run of the failed items).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Success | Status::Failed | Status::Aborted)
    }

    /// The standard message of a step in this status; "Completed with errors" is contractual.
    pub fn step_message(self) -> &'static str {
        match self {
            Status::WaitingToProcess => "Waiting to process",
            Status::InProgress => "In progress",
            Status::Success => "Completed",
            Status::Failed => "Completed with errors",
            Status::Aborted => "Aborted",
        }
    }
}

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == Self::IN_PROGRESS_ALIAS {
            return Ok(Status::InProgress);
        }
        Status::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a step stands, as far as the status rules need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepState {
    /// Items that entered the step (`totalNumberOfItemsToBeProccessed`).
    pub entered: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// The engine has begun the step (a task of it was claimed, or an outcome recorded).
    pub started: bool,
    /// The process was cancelled or stopped by a failure policy before this step finished.
    pub aborted: bool,
}

impl StepState {
    /// `currentNumberOfItemsProccessed`: items with a recorded outcome.
    pub fn processed(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// A step is finished once every item that entered it has an outcome.
    pub fn is_finished(&self) -> bool {
        self.started && self.processed() >= self.entered
    }

    /// Contract §2: `Success` when every item succeeded, `Failed` when it finished with at least
    /// one failure, `Aborted` when stopped before finishing.
    pub fn status(&self) -> Status {
        if self.is_finished() {
            if self.failed > 0 { Status::Failed } else { Status::Success }
        } else if self.aborted {
            Status::Aborted
        } else if self.started {
            Status::InProgress
        } else {
            Status::WaitingToProcess
        }
    }
}

/// How a process ended early, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    /// A caller cancelled it.
    Cancelled,
    /// A step with `on_item_failure = abort` saw a failed item.
    AbortedByPolicy,
    /// Started open, it was not closed within `limits.open_process_hours`.
    NeverClosed,
    /// A step's failed items passed its `tolerated_failure_count` or
    /// `tolerated_failure_percentage`.
    FailuresNotTolerated,
}

/// The status of a process from its steps' states (contract §2).
pub fn process_status(steps: &[StepState], end: Option<ProcessEnd>) -> Status {
    match end {
        Some(ProcessEnd::Cancelled | ProcessEnd::NeverClosed) => return Status::Aborted,
        Some(ProcessEnd::AbortedByPolicy | ProcessEnd::FailuresNotTolerated) => return Status::Failed,
        None => {}
    }
    if steps.iter().all(StepState::is_finished) {
        if steps.iter().any(|s| s.failed > 0) { Status::Failed } else { Status::Success }
    } else if steps.iter().any(|s| s.started) {
        Status::InProgress
    } else {
        Status::WaitingToProcess
    }
}

/// `currentStepNumber`: the step now running, or once finished the last step that ran.
/// A process that has not started points at step 0.
pub fn current_step(steps: &[StepState]) -> usize {
    if let Some(running) = steps.iter().position(|s| s.started && !s.is_finished()) {
        return running;
    }
    if let Some(next) = steps.iter().position(|s| !s.started && !s.aborted) {
        // Between steps: the last finished one is still the current one until the next starts.
        return next.saturating_sub(1);
    }
    steps.iter().rposition(|s| s.started).unwrap_or(0)
}

/// The message of a process waiting for its delayed start, while `now` is before it.
pub fn scheduled_message(start_at_micros: Option<i64>, now_micros: i64) -> Option<String> {
    start_at_micros.filter(|&at| at > now_micros).map(|at| format!("Scheduled to start at {}", rfc3339(at)))
}

/// RFC 3339 with milliseconds, UTC: how the API writes every time.
pub fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The step whose failures stopped a process: the last that started with a failure (the
/// steps after it never started).
fn stopping_step(steps: &[StepState]) -> Option<usize> {
    steps.iter().rposition(|s| s.started && s.failed > 0)
}

/// Each step's status: [`StepState::status`], except that the step whose failures passed
/// what it tolerates is `Failed`, finished or not: its unrun items were cancelled because
/// of it.
pub fn step_statuses(steps: &[StepState], end: Option<ProcessEnd>) -> Vec<Status> {
    let stopper = match end {
        Some(ProcessEnd::FailuresNotTolerated) => stopping_step(steps),
        _ => None,
    };
    steps
        .iter()
        .enumerate()
        .map(|(n, s)| if Some(n) == stopper { Status::Failed } else { s.status() })
        .collect()
}

/// The process-level message that goes with [`process_status`].
pub fn process_message(steps: &[StepState], names: &[&str], end: Option<ProcessEnd>) -> String {
    let status = process_status(steps, end);
    let first_failed = steps.iter().position(|s| s.failed > 0);
    match (status, end) {
        (Status::Aborted, Some(ProcessEnd::NeverClosed)) => {
            "Aborted: it was left open for parts longer than limits.open_process_hours".to_owned()
        }
        (Status::Aborted, _) => "Cancelled".to_owned(),
        (Status::Failed, Some(ProcessEnd::AbortedByPolicy)) => {
            // The steps after the one that stopped the process never started.
            let at = stopping_step(steps).unwrap_or_else(|| current_step(steps));
            format!("Stopped: an item failed at step {at} ({})", names.get(at).unwrap_or(&"?"))
        }
        (Status::Failed, Some(ProcessEnd::FailuresNotTolerated)) => {
            let at = stopping_step(steps).unwrap_or_else(|| current_step(steps));
            let (failed, entered) = steps.get(at).map_or((0, 0), |s| (s.failed, s.entered));
            format!(
                "Stopped: {failed} of {entered} items failed at step {at} ({}), more than it tolerates",
                names.get(at).unwrap_or(&"?")
            )
        }
        (Status::InProgress, _) => match first_failed {
            Some(at) => format!("In progress; step {at} ({}) had errors", names.get(at).unwrap_or(&"?")),
            None => "In progress".to_owned(),
        },
        (status, _) => status.step_message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(entered: u64, succeeded: u64, failed: u64, started: bool, aborted: bool) -> StepState {
        StepState { entered, succeeded, failed, started, aborted }
    }

    #[test]
    fn every_status_round_trips_through_its_spelling() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            assert_eq!(serde_json::to_string(&status).unwrap(), format!("\"{status}\""));
        }
    }

    #[test]
    fn the_documented_misspelling_is_accepted_on_input_only() {
        assert_eq!("InProgess".parse::<Status>(), Ok(Status::InProgress));
        let parsed: Status = serde_json::from_str("\"InProgess\"").unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), "\"InProgress\"");
    }

    #[test]
    fn unknown_and_differently_cased_statuses_are_refused() {
        for text in ["", "inprogress", "SUCCESS", "Done", "InProgres"] {
            assert!(text.parse::<Status>().is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn final_statuses() {
        let finals: Vec<_> = Status::ALL.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(finals, [Status::Success, Status::Failed, Status::Aborted]);
    }

    #[test]
    fn step_status_rules() {
        let cases = [
            // (state, expected, why)
            (step(6, 0, 0, false, false), Status::WaitingToProcess, "not started"),
            (step(6, 3, 0, true, false), Status::InProgress, "started, some outcomes"),
            (step(6, 0, 0, true, false), Status::InProgress, "started, no outcome yet"),
            (step(6, 6, 0, true, false), Status::Success, "every item succeeded"),
            (step(6, 2, 4, true, false), Status::Failed, "finished with failures"),
            (step(6, 3, 1, true, true), Status::Aborted, "cancelled mid-way"),
            (step(6, 0, 0, false, true), Status::Aborted, "cancelled before it started"),
            (step(6, 5, 1, true, true), Status::Failed, "finished before the abort: keeps its result"),
            (step(0, 0, 0, true, false), Status::Success, "no item entered: nothing failed"),
        ];
        for (state, expected, why) in cases {
            assert_eq!(state.status(), expected, "{why}");
        }
    }

    #[test]
    fn processed_counts_successes_and_failures() {
        assert_eq!(step(6, 2, 4, true, false).processed(), 6);
    }

    #[test]
    fn step_messages() {
        assert_eq!(Status::Failed.step_message(), "Completed with errors");
        assert_eq!(Status::Success.step_message(), "Completed");
        assert_eq!(Status::InProgress.step_message(), "In progress");
    }

    #[test]
    fn process_status_rules() {
        let done_ok = step(6, 6, 0, true, false);
        let done_failed = step(6, 2, 4, true, false);
        let running = step(6, 3, 0, true, false);
        let waiting = step(6, 0, 0, false, false);
        let cases: [(&[StepState], Option<ProcessEnd>, Status); 9] = [
            (&[waiting, waiting], None, Status::WaitingToProcess),
            (&[running, waiting], None, Status::InProgress),
            (&[done_failed, running], None, Status::InProgress),
            (&[done_ok, waiting], None, Status::InProgress),
            (&[done_ok, done_ok], None, Status::Success),
            (&[done_failed, done_ok], None, Status::Failed),
            (&[done_ok, done_failed], None, Status::Failed),
            (&[done_failed, waiting], Some(ProcessEnd::AbortedByPolicy), Status::Failed),
            (&[running, waiting], Some(ProcessEnd::Cancelled), Status::Aborted),
        ];
        for (steps, end, expected) in cases {
            assert_eq!(process_status(steps, end), expected, "{steps:?} {end:?}");
        }
    }

    #[test]
    fn current_step_is_the_running_one_or_the_last_that_ran() {
        let done = step(6, 6, 0, true, false);
        let running = step(6, 1, 0, true, false);
        let waiting = step(6, 0, 0, false, false);
        let aborted = step(6, 0, 0, false, true);
        assert_eq!(current_step(&[waiting, waiting]), 0);
        assert_eq!(current_step(&[running, waiting]), 0);
        assert_eq!(current_step(&[done, running]), 1);
        assert_eq!(current_step(&[done, waiting]), 0);
        assert_eq!(current_step(&[done, done]), 1);
        assert_eq!(current_step(&[done, aborted]), 0);
        assert_eq!(current_step(&[aborted, aborted]), 0);
    }

    #[test]
    fn process_messages() {
        let names = ["Validate", "Price"];
        let failed = step(6, 2, 4, true, false);
        let running = step(6, 3, 0, true, false);
        let ok = step(6, 6, 0, true, false);
        assert_eq!(
            process_message(&[failed, running], &names, None),
            "In progress; step 0 (Validate) had errors"
        );
        assert_eq!(process_message(&[ok, ok], &names, None), "Completed");
        assert_eq!(process_message(&[failed, ok], &names, None), "Completed with errors");
        assert_eq!(
            process_message(&[failed, step(2, 0, 0, false, true)], &names, Some(ProcessEnd::AbortedByPolicy)),
            "Stopped: an item failed at step 0 (Validate)"
        );
        assert_eq!(process_message(&[running, ok], &names, Some(ProcessEnd::Cancelled)), "Cancelled");
        let waiting = step(0, 0, 0, false, true);
        assert_eq!(process_status(&[waiting, waiting], Some(ProcessEnd::NeverClosed)), Status::Aborted);
        assert!(
            process_message(&[waiting], &names, Some(ProcessEnd::NeverClosed)).contains("open_process_hours")
        );
        // A failure at an earlier skip step does not take the blame for a later step's abort.
        assert_eq!(
            process_message(&[failed, step(4, 1, 1, true, true)], &names, Some(ProcessEnd::AbortedByPolicy)),
            "Stopped: an item failed at step 1 (Price)"
        );
    }

    #[test]
    fn a_delayed_start_says_when_until_then() {
        let at = 1_764_931_500_000_000; // 2025-12-05T10:45:00Z
        assert_eq!(
            scheduled_message(Some(at), at - 1).as_deref(),
            Some("Scheduled to start at 2025-12-05T10:45:00.000Z")
        );
        assert_eq!(scheduled_message(Some(at), at), None);
        assert_eq!(scheduled_message(None, 0), None);
    }

    #[test]
    fn a_step_that_passed_its_tolerance_fails_with_its_process() {
        let names = ["Validate", "Price"];
        let earlier = step(10, 8, 2, true, true);
        let stopper = step(8, 3, 3, true, true);
        let never = step(0, 0, 0, false, true);
        let end = Some(ProcessEnd::FailuresNotTolerated);
        assert_eq!(process_status(&[earlier, stopper, never], end), Status::Failed);
        assert_eq!(
            process_message(&[earlier, stopper, never], &names, end),
            "Stopped: 3 of 8 items failed at step 1 (Price), more than it tolerates"
        );
        assert_eq!(
            step_statuses(&[earlier, stopper, never], end),
            [Status::Failed, Status::Failed, Status::Aborted],
            "the stopper fails unfinished; a finished step keeps its result"
        );
        assert_eq!(
            step_statuses(&[earlier, stopper, never], Some(ProcessEnd::Cancelled)),
            [Status::Failed, Status::Aborted, Status::Aborted]
        );
    }
}
