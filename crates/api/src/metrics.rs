//! The process-wide `metrics` recorder (rendered as Prometheus text by `GET /metrics` in
//! `operations.rs`), which every layer records into (the engine's notification attempts, the
//! API's waiting clients and refusals) without knowing who exports it. [`METRICS`] describes every metric recorded
//! anywhere; the recorder is installed with those descriptions and with every counter of known
//! labels already at 0, so that a rate or an alert on it has data before its first increment.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Buckets of every `*_seconds` histogram: from a cached status answer to a slow callback.
const SECONDS_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// What a metric is, for `# HELP` and `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Which series exist before anything is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// One series without labels, at 0.
    Zero,
    /// One series per known value of the label, each at 0.
    ZeroPer(&'static str, &'static [&'static str]),
    /// None: its labels are known only when it is recorded (a request's route), or it is a
    /// histogram, or it is a gauge that every scrape sets.
    Later,
}

/// One metric: its name, kind, help text and the series it starts with.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub start: Start,
}

pub(crate) const PROCESS_STATUSES: [&str; 5] =
    ["WaitingToProcess", "InProgress", "Success", "Failed", "Aborted"];
pub(crate) const TASK_STATES: [&str; 2] = ["queued", "leased"];
pub(crate) const DELIVERY_STATES: [&str; 4] = ["pending", "delivered", "failed", "superseded"];

/// Every metric recorded anywhere in the server (a test reads the workspace's sources to hold
/// to it). A new metric is one entry here and its `metrics::counter!`/`gauge!`/`histogram!`
/// where it happens.
pub const METRICS: &[Metric] = &[
    Metric {
        name: "async_engine_http_requests_total",
        kind: Kind::Counter,
        help: "HTTP requests answered, by route pattern, method and status code.",
        start: Start::Later,
    },
    Metric {
        name: "async_engine_http_request_duration_seconds",
        kind: Kind::Histogram,
        help: "Time to answer an HTTP request, by route pattern, method and status code.",
        start: Start::Later,
    },
    Metric {
        name: "async_engine_database_up",
        kind: Kind::Gauge,
        help: "1 when the last scrape could read the database, else 0.",
        start: Start::Later,
    },
    Metric {
        name: "async_engine_processes",
        kind: Kind::Gauge,
        help: "Stored processes by status, counted at scrape time.",
        start: Start::Later,
    },
    Metric {
        name: "async_engine_tasks",
        kind: Kind::Gauge,
        help: "Open tasks, queued or leased, counted at scrape time.",
        start: Start::Later,
    },
    Metric {
        name: "async_engine_notification_deliveries",
        kind: Kind::Gauge,
        help: "FinishProcess notification deliveries by state, counted at scrape time.",
        start: Start::Later,
    },
    Metric {
        name: "async_engine_items_recorded_total",
        kind: Kind::Counter,
        help: "Item outcomes recorded by this node, by the engine, by external workers or by push steps.",
        start: Start::ZeroPer("by", &["engine", "worker", "push"]),
    },
    Metric {
        name: "async_engine_notification_attempts_total",
        kind: Kind::Counter,
        help: "FinishProcess notification attempts made by this node, by outcome.",
        start: Start::ZeroPer("outcome", &["delivered", "retry", "gave_up", "refused"]),
    },
    Metric {
        name: "async_engine_notification_attempt_seconds",
        kind: Kind::Histogram,
        help: "Time a FinishProcess notification attempt took, until the receiver answered or failed.",
        start: Start::Later,
    },
    Metric {
        name: "async_engine_push_attempts_total",
        kind: Kind::Counter,
        help: "Push steps' requests (handler = \"http\") made by this node, by outcome: completed, or why the attempt failed.",
        start: Start::ZeroPer(
            "outcome",
            &["completed", "http_error", "timeout", "unreachable", "bad_answer", "refused"],
        ),
    },
    Metric {
        name: "async_engine_push_attempt_seconds",
        kind: Kind::Histogram,
        help: "Time a push step's request took, until the endpoint answered or failed.",
        start: Start::Later,
    },
    Metric {
        name: "async_engine_status_reads_limited_total",
        kind: Kind::Counter,
        help: "Status reads refused with 429 for coming sooner than limits.min_status_interval_secs.",
        start: Start::Zero,
    },
    Metric {
        name: "async_engine_status_reads_from_memory_total",
        kind: Kind::Counter,
        help: "Status reads answered with a held answer and no storage read, for callers that sent Cache-Control: max-age.",
        start: Start::Zero,
    },
    Metric {
        name: "async_engine_watched_lookups",
        kind: Kind::Gauge,
        help: "Status lookups that waiting clients (long-polls, event streams) share.",
        start: Start::Zero,
    },
    Metric {
        name: "async_engine_waiting_clients",
        kind: Kind::Gauge,
        help: "Clients waiting on a status change: long-polls and event streams.",
        start: Start::Zero,
    },
    Metric {
        name: "async_engine_waiting_claims",
        kind: Kind::Gauge,
        help: "External workers' claims waiting (waitSeconds) for a task to become due.",
        start: Start::Zero,
    },
    Metric {
        name: "async_engine_auth_failures_throttled_total",
        kind: Kind::Counter,
        help: "Requests refused with 429 because their address failed authentication too often.",
        start: Start::Zero,
    },
];

/// A recorder that knows [`METRICS`]: each described, and each series of known labels at 0.
pub fn recorder() -> PrometheusRecorder {
    let builder = PrometheusBuilder::new();
    let builder = builder.set_buckets(&SECONDS_BUCKETS).unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    metrics::with_local_recorder(&recorder, || {
        for metric in METRICS {
            let (name, help) = (metric.name, metric.help);
            match metric.kind {
                Kind::Counter => metrics::describe_counter!(name, help),
                Kind::Gauge => metrics::describe_gauge!(name, help),
                Kind::Histogram => metrics::describe_histogram!(name, help),
            }
            let series: Vec<Vec<(&str, &str)>> = match metric.start {
                Start::Zero => vec![vec![]],
                Start::ZeroPer(label, values) => values.iter().map(|value| vec![(label, *value)]).collect(),
                Start::Later => vec![],
            };
            for labels in series {
                match metric.kind {
                    Kind::Counter => metrics::counter!(name, &labels).increment(0),
                    Kind::Gauge => metrics::gauge!(name, &labels).set(0.0),
                    Kind::Histogram => {}
                }
            }
        }
    });
    recorder
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder's handle, installing the recorder on first use (at start-up, before anything
/// records). Should another recorder be installed already (an embedding program's), ours
/// still renders what it is given.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed before ours; /metrics shows only ours");
        }
        handle
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// `(family, type)` of every `# TYPE` line, and the families that have a `# HELP` line.
    pub(crate) fn families(text: &str) -> (Vec<(String, String)>, BTreeSet<String>) {
        let typed = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
            .collect();
        let helped = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect();
        (typed, helped)
    }

    pub(crate) fn assert_every_family_is_described(text: &str) {
        let (typed, helped) = families(text);
        assert!(!typed.is_empty(), "{text}");
        for (name, _) in &typed {
            assert!(helped.contains(name), "{name} has no # HELP line:\n{text}");
        }
    }

    #[test]
    fn a_new_recorder_describes_its_metrics_and_starts_known_counters_at_zero() {
        let text = recorder().handle().render();
        for line in [
            r#"async_engine_notification_attempts_total{outcome="delivered"} 0"#,
            r#"async_engine_notification_attempts_total{outcome="retry"} 0"#,
            r#"async_engine_notification_attempts_total{outcome="gave_up"} 0"#,
            r#"async_engine_notification_attempts_total{outcome="refused"} 0"#,
            "async_engine_status_reads_limited_total 0",
            "async_engine_status_reads_from_memory_total 0",
            r#"async_engine_items_recorded_total{by="engine"} 0"#,
            r#"async_engine_items_recorded_total{by="worker"} 0"#,
            r#"async_engine_items_recorded_total{by="push"} 0"#,
            r#"async_engine_push_attempts_total{outcome="http_error"} 0"#,
            "async_engine_waiting_clients 0",
            "async_engine_watched_lookups 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert_every_family_is_described(&text);
        let (typed, _) = families(&text);
        for (name, kind) in typed {
            let metric = METRICS.iter().find(|m| m.name == name).unwrap();
            let expected = match metric.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert_eq!(kind, expected, "{name}");
        }
    }

    /// Every counter, gauge and histogram macro with a literal name in the workspace's sources
    /// names a metric of [`METRICS`], of that kind: a metric added elsewhere without a
    /// description fails here rather than at `promtool check metrics`.
    #[test]
    fn every_metric_recorded_anywhere_is_described() {
        fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    if path.file_name().is_some_and(|n| n != "target") {
                        sources(&path, out);
                    }
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = Vec::new();
        for dir in ["crates", "xtask", "tests"] {
            sources(&root.join(dir), &mut files);
        }
        let mut found = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (macro_name, kind) in [
                ("counter!(\"", Kind::Counter),
                ("gauge!(\"", Kind::Gauge),
                ("histogram!(\"", Kind::Histogram),
            ] {
                for (at, _) in text.match_indices(macro_name) {
                    let rest = &text[at + macro_name.len()..];
                    let name = &rest[..rest.find('"').unwrap()];
                    let metric = METRICS.iter().find(|m| m.name == name);
                    assert!(
                        metric.is_some(),
                        "{} records {name}, which METRICS does not describe",
                        file.display()
                    );
                    assert_eq!(metric.map(|m| m.kind), Some(kind), "{name} in {}", file.display());
                    found += 1;
                }
            }
        }
        assert!(
            found >= METRICS.len(),
            "only {found} recordings found: is the scan looking in the right place?"
        );
    }
}
