//! Process definitions: a named, ordered list of steps, each with its handler and policies
//! (contract §4.1). Validated once, when configuration is loaded.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::snapshot::MAX_NAME_CHARS;

/// Who runs a step's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Handler {
    /// A handler compiled into the server (`builtin:NAME`).
    Builtin(String),
    /// External workers that claim tasks from the queue `NAME` (`queue:NAME`).
    Queue(String),
    /// The server POSTs each task to an HTTP endpoint (`handler = "http"`); its queue is
    /// `http:PROCESS/STEP`.
    Http(PushTarget),
}

/// Where and how a push step's tasks are sent. Header values and the secret come from the
/// environment and are never printed (`Debug` hides them).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PushTarget {
    /// `PROCESS/STEP`, the queue's NAME.
    pub name: String,
    pub url: String,
    /// Requests of this step at once.
    pub max_in_flight: u32,
    /// `(header, value)`.
    pub headers: Vec<(String, String)>,
    /// Signs bodies instead of `notifications.signing_secret`.
    pub signing_secret: Option<String>,
}

pub const MAX_IN_FLIGHT: u32 = 1_000;

impl fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("PushTarget")
            .field("name", &self.name)
            .field("max_in_flight", &self.max_in_flight)
            .field("headers", &headers)
            .field("signing_secret", &self.signing_secret.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl Handler {
    /// The queue its tasks wait in; built-in handlers have queues of their own too.
    pub fn queue(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handler::Builtin(name) => write!(f, "builtin:{name}"),
            Handler::Queue(name) => write!(f, "queue:{name}"),
            // Never the URL: its path or query may hold the receiver's secret.
            Handler::Http(target) => write!(f, "http:{}", target.name),
        }
    }
}

impl FromStr for Handler {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = |name: &str| {
            !name.is_empty()
                && name.len() <= 100
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match s.split_once(':') {
            Some(("builtin", name)) if valid(name) => Ok(Handler::Builtin(name.to_owned())),
            Some(("queue", name)) if valid(name) => Ok(Handler::Queue(name.to_owned())),
            _ => {
                Err(format!("'{s}' is not builtin:NAME or queue:NAME (NAME: letters, digits, '-', '_', '.')"))
            }
        }
    }
}

/// What failed items do to the rest of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Failed items do not enter later steps.
    #[default]
    Skip,
    /// Failed items still enter later steps.
    Continue,
    /// The first failed item stops the process: it becomes `Failed`; unrun items are not run.
    Abort,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Skip => "skip",
            FailurePolicy::Continue => "continue",
            FailurePolicy::Abort => "abort",
        }
    }
}

impl FromStr for FailurePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(FailurePolicy::Skip),
            "continue" => Ok(FailurePolicy::Continue),
            "abort" => Ok(FailurePolicy::Abort),
            other => Err(format!("'{other}' is not skip, continue or abort")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDefinition {
    pub name: String,
    pub handler: Handler,
    /// Items per task.
    pub chunk_size: u32,
    /// Attempts per task before its items are recorded as failed.
    pub max_attempts: u32,
    /// How long one attempt may take (the lease of a built-in task).
    pub timeout_secs: u64,
    pub on_item_failure: FailurePolicy,
    /// How many failed items the step bears before it fails its process.
    pub tolerance: Tolerance,
    /// The most tasks of the step's queue leased at once, across every node and worker;
    /// claims beyond it get nothing. `None`: no limit.
    pub max_in_flight: Option<u32>,
}

/// The failed items a step bears (`tolerated_failure_count`, `tolerated_failure_percentage`):
/// once either is passed, the step and its process end `Failed` and its unrun tasks are
/// cancelled, as with Step Functions' Distributed Map. Unset, failures follow
/// `on_item_failure` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tolerance {
    /// The most failed items; one more fails the process.
    pub count: Option<u64>,
    /// The largest share of the items that entered the step that may fail, in hundredths
    /// of a percent (`2.5` % is 250), so that comparisons are exact integers.
    pub hundredths_of_percent: Option<u32>,
}

impl Tolerance {
    /// `tolerated_failure_percentage` as written (0 to 100, at most two decimals).
    pub fn hundredths(percent: f64) -> Result<u32, String> {
        let hundredths = (percent * 100.0).round();
        if !percent.is_finite() || !(0.0..=10_000.0).contains(&hundredths) {
            return Err(format!("tolerated_failure_percentage must be 0 to 100, not {percent}"));
        }
        if (hundredths - percent * 100.0).abs() > 1e-6 {
            return Err(format!("tolerated_failure_percentage takes at most two decimals, not {percent}"));
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked to be 0..=10000"
        )]
        Ok(hundredths as u32)
    }

    pub fn is_set(self) -> bool {
        self.count.is_some() || self.hundredths_of_percent.is_some()
    }

    /// Whether `failed` of the `entered` items having failed is more than the step bears.
    pub fn is_passed(self, entered: u64, failed: u64) -> bool {
        let by_count = self.count.is_some_and(|most| failed > most);
        let by_share = self
            .hundredths_of_percent
            .is_some_and(|most| u128::from(failed) * 10_000 > u128::from(most) * u128::from(entered));
        by_count || by_share
    }

    /// The percentage as configured, for display.
    pub fn percent(self) -> Option<f64> {
        self.hundredths_of_percent.map(|h| f64::from(h) / 100.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessDefinition {
    pub name: String,
    pub steps: Vec<StepDefinition>,
    /// The `callbackUrl` of processes started without one (contract §5).
    pub callback_url: Option<String>,
}

pub const MAX_CHUNK_SIZE: u32 = 10_000;
pub const MAX_ATTEMPTS: u32 = 100;

impl ProcessDefinition {
    /// Checks one definition; `known_builtin` says which built-in handlers exist.
    pub fn validate(&self, known_builtin: &dyn Fn(&str) -> bool) -> Result<(), String> {
        let chars = self.name.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS {
            return Err(format!("a process name must have 1 to {MAX_NAME_CHARS} characters"));
        }
        if self.steps.is_empty() {
            return Err(format!("process '{}' has no steps", self.name));
        }
        let mut names = HashSet::new();
        for (number, step) in self.steps.iter().enumerate() {
            let at = format!("process '{}' step {number}", self.name);
            let chars = step.name.chars().count();
            if chars == 0 || chars > MAX_NAME_CHARS {
                return Err(format!("{at}: a step name must have 1 to {MAX_NAME_CHARS} characters"));
            }
            if !names.insert(step.name.as_str()) {
                return Err(format!("{at}: the step name '{}' is used twice", step.name));
            }
            if let Handler::Builtin(name) = &step.handler
                && !known_builtin(name)
            {
                return Err(format!("{at}: there is no built-in handler '{name}'"));
            }
            if let Handler::Http(target) = &step.handler {
                if !(1..=MAX_IN_FLIGHT).contains(&target.max_in_flight) {
                    return Err(format!("{at}: max_in_flight must be 1..={MAX_IN_FLIGHT}"));
                }
                if target.url.is_empty() {
                    return Err(format!("{at}: handler \"http\" needs a url"));
                }
            }
            if !(1..=MAX_CHUNK_SIZE).contains(&step.chunk_size) {
                return Err(format!("{at}: chunk_size must be 1..={MAX_CHUNK_SIZE}"));
            }
            if !(1..=MAX_ATTEMPTS).contains(&step.max_attempts) {
                return Err(format!("{at}: max_attempts must be 1..={MAX_ATTEMPTS}"));
            }
            if !(1..=86_400).contains(&step.timeout_secs) {
                return Err(format!("{at}: timeout_secs must be 1..=86400"));
            }
            if step.tolerance.is_set() && step.on_item_failure == FailurePolicy::Abort {
                return Err(format!(
                    "{at}: on_item_failure = \"abort\" already stops at the first failure; \
                     tolerated_failure_count and tolerated_failure_percentage go with skip or continue"
                ));
            }
            if step.max_in_flight.is_some_and(|most| !(1..=MAX_IN_FLIGHT).contains(&most)) {
                return Err(format!("{at}: max_in_flight must be 1..={MAX_IN_FLIGHT}"));
            }
            if step.tolerance.count.is_some_and(|c| i64::try_from(c).is_err()) {
                return Err(format!("{at}: tolerated_failure_count must be at most {}", i64::MAX));
            }
            if step.tolerance.hundredths_of_percent.is_some_and(|h| h > 10_000) {
                return Err(format!("{at}: tolerated_failure_percentage must be 0 to 100"));
            }
        }
        Ok(())
    }
}

/// Checks a set of definitions: each valid, names unique.
pub fn validate_all(
    definitions: &[ProcessDefinition],
    known_builtin: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let mut names = HashSet::new();
    let mut queues = HashSet::new();
    for definition in definitions {
        definition.validate(known_builtin)?;
        if !names.insert(definition.name.as_str()) {
            return Err(format!("the process name '{}' is defined twice", definition.name));
        }
        for step in &definition.steps {
            // Names with '/' could otherwise meet in one queue and share one target.
            if let Handler::Http(target) = &step.handler
                && !queues.insert(target.name.as_str())
            {
                return Err(format!("two push steps share the queue 'http:{}'; rename one", target.name));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, handler: &str) -> StepDefinition {
        StepDefinition {
            name: name.into(),
            handler: handler.parse().unwrap(),
            chunk_size: 100,
            max_attempts: 3,
            timeout_secs: 60,
            on_item_failure: FailurePolicy::Skip,
            tolerance: Tolerance::default(),
            max_in_flight: None,
        }
    }

    fn known(name: &str) -> bool {
        name == "noop"
    }

    #[test]
    fn handlers_parse_and_print() {
        assert_eq!("builtin:noop".parse(), Ok(Handler::Builtin("noop".into())));
        assert_eq!("queue:pricing-v2".parse(), Ok(Handler::Queue("pricing-v2".into())));
        assert_eq!(Handler::Queue("q".into()).queue(), "queue:q");
        for bad in ["noop", "builtin:", "http:x", "queue:a b", "queue:a/b"] {
            assert!(bad.parse::<Handler>().is_err(), "{bad}");
        }
    }

    #[test]
    fn policies() {
        for policy in [FailurePolicy::Skip, FailurePolicy::Continue, FailurePolicy::Abort] {
            assert_eq!(policy.as_str().parse(), Ok(policy));
        }
        assert!("stop".parse::<FailurePolicy>().is_err());
    }

    #[test]
    fn validation() {
        let good = ProcessDefinition {
            name: "P".into(),
            steps: vec![step("A", "builtin:noop"), step("B", "queue:x")],
            callback_url: None,
        };
        assert!(validate_all(std::slice::from_ref(&good), &known).is_ok());
        let cases = [
            (ProcessDefinition { name: "P".into(), steps: vec![], callback_url: None }, "no steps"),
            (
                ProcessDefinition {
                    name: "P".into(),
                    steps: vec![step("A", "builtin:noop"), step("A", "builtin:noop")],
                    callback_url: None,
                },
                "used twice",
            ),
            (
                ProcessDefinition {
                    name: "P".into(),
                    steps: vec![step("A", "builtin:nope")],
                    callback_url: None,
                },
                "no built-in handler 'nope'",
            ),
            (
                ProcessDefinition {
                    name: "P".into(),
                    steps: vec![StepDefinition { chunk_size: 0, ..step("A", "builtin:noop") }],
                    callback_url: None,
                },
                "chunk_size",
            ),
            (
                ProcessDefinition {
                    name: "P".into(),
                    steps: vec![StepDefinition { max_attempts: 0, ..step("A", "builtin:noop") }],
                    callback_url: None,
                },
                "max_attempts",
            ),
        ];
        let tolerant = Tolerance { count: Some(1), hundredths_of_percent: None };
        let aborting = StepDefinition {
            on_item_failure: FailurePolicy::Abort,
            tolerance: tolerant,
            ..step("A", "builtin:noop")
        };
        let cases = cases.into_iter().chain([
            (
                ProcessDefinition { name: "P".into(), steps: vec![aborting], callback_url: None },
                "go with skip or continue",
            ),
            (
                ProcessDefinition {
                    name: "P".into(),
                    steps: vec![StepDefinition { max_in_flight: Some(0), ..step("A", "queue:q") }],
                    callback_url: None,
                },
                "step 0: max_in_flight must be 1..=1000",
            ),
        ]);
        for (definition, mention) in cases {
            let error = validate_all(&[definition], &known).unwrap_err();
            assert!(error.contains(mention), "{error}");
        }
        let error = validate_all(&[good.clone(), good], &known).unwrap_err();
        assert!(error.contains("defined twice"), "{error}");
    }

    #[test]
    fn tolerances_are_passed_by_one_failure_more_than_they_bear() {
        let count = Tolerance { count: Some(2), hundredths_of_percent: None };
        assert!(!count.is_passed(10, 2) && count.is_passed(10, 3));
        let share =
            Tolerance { count: None, hundredths_of_percent: Some(Tolerance::hundredths(2.5).unwrap()) };
        assert!(!share.is_passed(1_000, 25) && share.is_passed(1_000, 26));
        assert!(!share.is_passed(0, 0), "a step nothing entered fails nothing");
        let none = Tolerance { count: Some(0), hundredths_of_percent: Some(0) };
        assert!(!none.is_passed(5, 0) && none.is_passed(5, 1));
        let both = Tolerance { count: Some(100), hundredths_of_percent: Some(1_000) };
        assert!(both.is_passed(50, 6), "the share is passed first: 6 of 50 is 12 %");
        assert!(!Tolerance::default().is_passed(1, 1) && !Tolerance::default().is_set());
        let all = Tolerance { count: Some(u64::MAX), hundredths_of_percent: Some(10_000) };
        assert!(!all.is_passed(u64::MAX, u64::MAX), "no overflow at the largest counts");
        assert_eq!((Tolerance::hundredths(0.0), Tolerance::hundredths(100.0)), (Ok(0), Ok(10_000)));
        for bad in [-1.0, 100.5, f64::NAN, f64::INFINITY, 2.555] {
            assert!(Tolerance::hundredths(bad).is_err(), "{bad}");
        }
        assert_eq!(share.percent(), Some(2.5));
    }

    fn push(name: &str, max_in_flight: u32) -> StepDefinition {
        StepDefinition {
            handler: Handler::Http(PushTarget {
                name: name.into(),
                url: "http://h/".into(),
                max_in_flight,
                headers: vec![("Authorization".into(), "Bearer s3cret".into())],
                signing_secret: Some("k3y".into()),
            }),
            ..step("S", "builtin:noop")
        }
    }

    #[test]
    fn push_steps_are_checked_and_hide_their_secrets() {
        let one = |steps| ProcessDefinition { name: "P".into(), steps, callback_url: None };
        assert!(validate_all(&[one(vec![push("P/S", 2)])], &known).is_ok());
        let error = validate_all(&[one(vec![push("P/S", 0)])], &known).unwrap_err();
        assert!(error.contains("step 0: max_in_flight"), "{error}");
        let other = ProcessDefinition { name: "Q".into(), ..one(vec![push("P/S", 1)]) };
        let error = validate_all(&[one(vec![push("P/S", 1)]), other], &known).unwrap_err();
        assert!(error.contains("share the queue 'http:P/S'"), "{error}");
        let shown = format!("{:?} {}", push("P/S", 1).handler, push("P/S", 1).handler);
        assert!(shown.contains("http:P/S") && shown.contains("Authorization"), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("k3y") && !shown.contains("http://h"),
            "{shown}"
        );
    }
}
