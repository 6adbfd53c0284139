//! The engine's state machine, as pure decisions: which items enter the next step, when a
//! failure stops a process, what follows a finished step, and which commands a process in a
//! given status accepts. The engine applies them inside its transactions.

use crate::definition::{FailurePolicy, Tolerance};
use crate::status::{ProcessEnd, Status};

/// Whether an item with this outcome at a step enters the next step.
pub fn enters_next_step(policy: FailurePolicy, succeeded: bool) -> bool {
    succeeded || policy == FailurePolicy::Continue
}

/// How a step's failures stop its process, if they do: `abort` at its first failure
/// (`failed_now`, those just recorded), a tolerance once its step's totals pass it.
pub fn stops_process(
    policy: FailurePolicy,
    tolerance: Tolerance,
    failed_now: u64,
    entered: u64,
    failed: u64,
) -> Option<ProcessEnd> {
    if policy == FailurePolicy::Abort && failed_now > 0 {
        Some(ProcessEnd::AbortedByPolicy)
    } else if failed_now > 0 && tolerance.is_passed(entered, failed) {
        Some(ProcessEnd::FailuresNotTolerated)
    } else {
        None
    }
}

/// Whether a step's failures could stop its process, so that they are recorded at once
/// rather than held for a batch.
pub fn may_stop_process(policy: FailurePolicy, tolerance: Tolerance) -> bool {
    policy == FailurePolicy::Abort || tolerance.is_set()
}

/// What follows once every item that entered `step` has an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStep {
    /// Start this step with the items that qualify.
    Start(usize),
    /// That was the last step: the process is finished.
    Finish,
}

pub fn after_step(step: usize, total_steps: usize) -> AfterStep {
    if step + 1 < total_steps { AfterStep::Start(step + 1) } else { AfterStep::Finish }
}

/// A caller's command on a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Cancel,
    Retry,
}

/// Why a command was refused; the text is shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command} a process that is {status}: {why}")]
pub struct Refused {
    pub command: &'static str,
    pub status: Status,
    pub why: &'static str,
}

/// Cancel takes a waiting or running process; retry takes a failed one.
pub fn check_command(command: Command, status: Status) -> Result<(), Refused> {
    let refuse = |command, why| Err(Refused { command, status, why });
    match (command, status) {
        (Command::Cancel, Status::WaitingToProcess | Status::InProgress) => Ok(()),
        (Command::Cancel, _) => refuse("cancel", "it has already finished"),
        (Command::Retry, Status::Failed) => Ok(()),
        (Command::Retry, Status::Success) => refuse("retry", "nothing failed"),
        (Command::Retry, Status::Aborted) => refuse("retry", "it was cancelled"),
        (Command::Retry, _) => refuse("retry", "it has not finished"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ProcessEnd, StepState, current_step, process_status};

    #[test]
    fn who_enters_the_next_step() {
        let cases = [
            (FailurePolicy::Skip, true, true),
            (FailurePolicy::Skip, false, false),
            (FailurePolicy::Continue, true, true),
            (FailurePolicy::Continue, false, true),
            (FailurePolicy::Abort, true, true),
            (FailurePolicy::Abort, false, false),
        ];
        for (policy, succeeded, enters) in cases {
            assert_eq!(enters_next_step(policy, succeeded), enters, "{policy:?} {succeeded}");
        }
    }

    #[test]
    fn abort_stops_at_a_failure_and_a_tolerance_once_passed() {
        let none = Tolerance::default();
        for policy in [FailurePolicy::Skip, FailurePolicy::Continue] {
            assert_eq!(stops_process(policy, none, 5, 10, 5), None);
            assert!(!may_stop_process(policy, none));
        }
        assert_eq!(stops_process(FailurePolicy::Abort, none, 0, 10, 0), None);
        assert_eq!(stops_process(FailurePolicy::Abort, none, 1, 10, 1), Some(ProcessEnd::AbortedByPolicy));
        assert!(may_stop_process(FailurePolicy::Abort, none));
        let two = Tolerance { count: Some(2), hundredths_of_percent: None };
        assert!(may_stop_process(FailurePolicy::Skip, two));
        assert_eq!(stops_process(FailurePolicy::Skip, two, 2, 10, 2), None);
        assert_eq!(
            stops_process(FailurePolicy::Continue, two, 1, 10, 3),
            Some(ProcessEnd::FailuresNotTolerated)
        );
        assert_eq!(stops_process(FailurePolicy::Skip, two, 0, 10, 3), None, "only new failures stop");
    }

    #[test]
    fn what_follows_a_step() {
        assert_eq!(after_step(0, 2), AfterStep::Start(1));
        assert_eq!(after_step(1, 2), AfterStep::Finish);
        assert_eq!(after_step(0, 1), AfterStep::Finish);
    }

    #[test]
    fn commands_from_every_state() {
        let cases = [
            (Command::Cancel, Status::WaitingToProcess, true),
            (Command::Cancel, Status::InProgress, true),
            (Command::Cancel, Status::Success, false),
            (Command::Cancel, Status::Failed, false),
            (Command::Cancel, Status::Aborted, false),
            (Command::Retry, Status::WaitingToProcess, false),
            (Command::Retry, Status::InProgress, false),
            (Command::Retry, Status::Success, false),
            (Command::Retry, Status::Failed, true),
            (Command::Retry, Status::Aborted, false),
        ];
        for (command, status, accepted) in cases {
            assert_eq!(check_command(command, status).is_ok(), accepted, "{command:?} on {status}");
        }
        let refused = check_command(Command::Cancel, Status::Success).unwrap_err();
        assert_eq!(refused.to_string(), "cannot cancel a process that is Success: it has already finished");
    }

    /// Runs items through steps with these policies using only the decisions above and the
    /// status rules: `fails[s]` holds the items that fail at step s.
    fn simulate(policies: &[FailurePolicy], items: u64, fails: &[&[u64]]) -> (Status, Vec<StepState>) {
        let mut states: Vec<StepState> = policies
            .iter()
            .map(|_| StepState { entered: 0, succeeded: 0, failed: 0, started: false, aborted: false })
            .collect();
        let mut entering: Vec<u64> = (0..items).collect();
        let mut end = None;
        let mut step = 0;
        loop {
            states[step].started = true;
            states[step].entered = entering.len() as u64;
            let mut next = Vec::new();
            for &item in &entering {
                let failed = fails[step].contains(&item);
                if failed {
                    states[step].failed += 1;
                } else {
                    states[step].succeeded += 1;
                }
                let state = states[step];
                end = stops_process(
                    policies[step],
                    Tolerance::default(),
                    u64::from(failed),
                    state.entered,
                    state.failed,
                );
                if end.is_some() {
                    break;
                }
                if enters_next_step(policies[step], !failed) {
                    next.push(item);
                }
            }
            if end.is_some() {
                for later in &mut states[step..] {
                    later.aborted = true;
                }
                break;
            }
            match after_step(step, policies.len()) {
                AfterStep::Start(following) => {
                    step = following;
                    entering = next;
                }
                AfterStep::Finish => break,
            }
        }
        (process_status(&states, end), states)
    }

    #[test]
    fn failure_policies_end_to_end() {
        use FailurePolicy::{Abort, Continue, Skip};
        // (policies, failing items per step, final status, entered per step, current step)
        type Case<'a> = (&'a [FailurePolicy], &'a [&'a [u64]], Status, [u64; 2], usize);
        let cases: [Case; 6] = [
            (&[Skip, Skip], &[&[], &[]], Status::Success, [6, 6], 1),
            (&[Skip, Skip], &[&[1, 2], &[]], Status::Failed, [6, 4], 1),
            (&[Continue, Skip], &[&[1, 2], &[]], Status::Failed, [6, 6], 1),
            (&[Skip, Skip], &[&[0, 1, 2, 3, 4, 5], &[]], Status::Failed, [6, 0], 1),
            (&[Abort, Skip], &[&[3], &[]], Status::Failed, [6, 0], 0),
            (&[Abort, Skip], &[&[], &[]], Status::Success, [6, 6], 1),
        ];
        for (policies, fails, status, entered, current) in cases {
            let (got, states) = simulate(policies, 6, fails);
            assert_eq!(got, status, "{policies:?} {fails:?}");
            assert_eq!([states[0].entered, states[1].entered], entered, "{policies:?} {fails:?}");
            assert_eq!(current_step(&states), current, "{policies:?} {fails:?}");
        }
    }
}
