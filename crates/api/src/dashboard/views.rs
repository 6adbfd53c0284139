//! The dashboard's pages: the views its templates show, and rendering them.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use askama::Template;
use async_engine_domain::{
    DeliveryRecord, FailureCount, Loads, ProcessDefinition, ProcessStatus, Status, StepDefinition, Totals,
};

use crate::clock::{now_micros, rfc3339};

pub(super) struct StepView {
    pub(super) number: u32,
    pub(super) name: String,
    pub(super) status: String,
    pub(super) message: String,
    pub(super) processed: u64,
    pub(super) total: u64,
    /// `max` of the progress bar: never 0, which browsers draw as indeterminate.
    pub(super) max: u64,
    pub(super) groups: Vec<GroupView>,
    pub(super) groups_shown: bool,
}

pub(super) struct GroupView {
    pub(super) code: i64,
    pub(super) message: String,
    pub(super) count: u64,
    /// The first few items, when the page lists them; empty when only counted.
    pub(super) sample: String,
}

pub(super) struct ProcessView {
    pub(super) id: String,
    pub(super) id_path: String,
    pub(super) name: String,
    pub(super) reference: String,
    pub(super) status: String,
    pub(super) message: String,
    pub(super) created: String,
    pub(super) updated: String,
    /// When it reached its final state; empty while it has not.
    pub(super) finished: String,
    /// `created` and `finished` to the second, for the list's narrow columns.
    pub(super) created_short: String,
    pub(super) finished_short: String,
    pub(super) duration: String,
    pub(super) current_step: u32,
    pub(super) total_steps: u32,
    pub(super) steps: Vec<StepView>,
    pub(super) additional_data: String,
    /// Imported as it was: the engine does not run it, so it is neither running nor takes
    /// commands, whatever its status says.
    pub(super) history: bool,
}

impl ProcessView {
    pub(super) fn new(process: &ProcessStatus, groups_shown: bool) -> Self {
        let end = if process.status.is_final() { process.updated_at_micros } else { now_micros() };
        let steps = process
            .steps
            .iter()
            .flatten()
            .map(|step| StepView {
                number: step.step_number,
                name: step.step_name.clone(),
                status: step.status.as_str().to_owned(),
                message: step.message.clone(),
                processed: step.processed,
                total: step.total,
                max: step.total.max(1),
                groups: step
                    .items
                    .iter()
                    .flat_map(|items| &items.failed)
                    .map(|group| GroupView {
                        code: group.code,
                        message: group.status_message.clone(),
                        count: group.items.len() as u64,
                        sample: sample(group.items.iter().map(|i| i.as_str())),
                    })
                    .collect(),
                groups_shown,
            })
            .collect();
        ProcessView {
            id_path: id_path(&process.async_process_id),
            id: process.async_process_id.clone(),
            name: process.name.clone(),
            reference: process.reference_id.clone(),
            status: process.status.as_str().to_owned(),
            message: process.message.clone(),
            created: rfc3339(process.created_at_micros),
            updated: rfc3339(process.updated_at_micros),
            finished: if process.status.is_final() {
                rfc3339(process.updated_at_micros)
            } else {
                String::new()
            },
            created_short: short(process.created_at_micros),
            finished_short: if process.status.is_final() {
                short(process.updated_at_micros)
            } else {
                String::new()
            },
            duration: duration(end.saturating_sub(process.created_at_micros)),
            current_step: process.current_step_number,
            total_steps: process.total_number_of_steps,
            steps,
            additional_data: serde_json::from_str::<serde_json::Value>(process.additional_data.as_str())
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or_else(|_| process.additional_data.as_str().to_owned()),
            history: !process.runnable,
        }
    }
}

impl ProcessView {
    /// Every step's failure groups from their counts, for a process too large to list item
    /// by item.
    pub(super) fn with_counts(mut self, counts: &[FailureCount]) -> Self {
        for step in &mut self.steps {
            step.groups = counts
                .iter()
                .filter(|c| c.step_number == step.number)
                .map(|c| GroupView {
                    code: c.code,
                    message: c.status_message.clone(),
                    count: u64::try_from(c.items).unwrap_or(0),
                    sample: String::new(),
                })
                .collect();
            step.groups_shown = true;
        }
        self
    }
}

/// The first few items of a group, as written.
pub(super) fn sample<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut items = items.peekable();
    let mut shown: Vec<&str> = Vec::new();
    while let Some(item) = items.next() {
        if shown.len() == 3 {
            return format!("{}, …", shown.join(", "));
        }
        shown.push(item);
        if items.peek().is_none() {
            break;
        }
    }
    shown.join(", ")
}

/// An ID as one segment of a page's path.
pub(super) fn id_path(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A time to the second, UTC: "2026-12-03 07:00:52".
pub(super) fn short(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// How long ago `micros` was, as of `now`: "12 s ago".
pub(super) fn ago(now: i64, micros: i64) -> String {
    format!("{} ago", duration(now.saturating_sub(micros)))
}

pub(super) fn duration(micros: i64) -> String {
    let seconds = micros.max(0) / 1_000_000;
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3_600 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3_600, (seconds % 3_600) / 60),
    }
}

/// One status of the totals above the list: how many, and the list of them.
pub(super) struct TotalView {
    pub(super) status: &'static str,
    pub(super) count: i64,
    pub(super) link: String,
}

/// The totals above the list and what finished lately, from one read.
pub(super) struct SummaryView {
    pub(super) totals: Vec<TotalView>,
    pub(super) window_minutes: i64,
    /// "12 processes (9 Success, 3 Failed), 4800 items": empty when none finished.
    pub(super) finished: String,
    /// Items of finished processes per minute over the window.
    pub(super) items_per_minute: String,
}

impl SummaryView {
    pub(super) fn new(counted: &Totals, window_minutes: i64) -> Self {
        let totals = Status::ALL
            .iter()
            .map(|status| TotalView {
                status: status.as_str(),
                count: counted.processes.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n),
                link: format!("/?status={}", status.as_str()),
            })
            .collect();
        let processes: i64 = counted.finished.iter().map(|(_, n, _)| n).sum();
        let items: i64 = counted.finished.iter().map(|(_, _, items)| items).sum();
        let finished = if processes == 0 {
            String::new()
        } else {
            let by_status: Vec<String> =
                counted.finished.iter().map(|(status, n, _)| format!("{n} {}", status.as_str())).collect();
            format!(
                "{processes} process{} ({}), {items} item{}",
                if processes == 1 { "" } else { "es" },
                by_status.join(", "),
                if items == 1 { "" } else { "s" }
            )
        };
        let rate = items as f64 / window_minutes.max(1) as f64;
        let items_per_minute = if rate < 10.0 { format!("{rate:.1}") } else { format!("{rate:.0}") };
        SummaryView { totals, window_minutes, finished, items_per_minute }
    }
}

#[derive(Template)]
#[template(path = "list.html")]
pub(super) struct ListPage {
    pub(super) signed_in: bool,
    pub(super) csrf: String,
    pub(super) summary: SummaryView,
    pub(super) statuses: Vec<&'static str>,
    pub(super) filter_status: String,
    pub(super) filter_name: String,
    pub(super) filter_reference: String,
    pub(super) processes: Vec<ProcessView>,
    pub(super) next_page: Option<String>,
}

#[derive(Template)]
#[template(path = "process.html")]
pub(super) struct ProcessPage {
    pub(super) signed_in: bool,
    pub(super) csrf: String,
    pub(super) process: ProcessView,
    pub(super) running: bool,
    pub(super) can_cancel: bool,
    pub(super) can_retry: bool,
}

pub(super) struct QueueView {
    pub(super) queue: String,
    pub(super) queued: i64,
    pub(super) leased: i64,
    /// "waiting for 2 min 5 s" since the oldest due task became due; empty when none is due.
    pub(super) oldest: String,
}

pub(super) struct WorkerView {
    pub(super) queue: String,
    pub(super) worker_id: String,
    pub(super) leased: i64,
    pub(super) last_seen: String,
    pub(super) last_seen_at: String,
    pub(super) next_expiry: String,
}

#[derive(Template)]
#[template(path = "queues.html")]
pub(super) struct QueuesPage {
    pub(super) signed_in: bool,
    pub(super) csrf: String,
    pub(super) queues: Vec<QueueView>,
    pub(super) workers: Vec<WorkerView>,
}

impl QueuesPage {
    pub(super) fn new(signed_in: bool, csrf: String, loads: &Loads, now: i64) -> Self {
        QueuesPage {
            signed_in,
            csrf,
            queues: loads
                .queues
                .iter()
                .map(|q| QueueView {
                    queue: q.queue.clone(),
                    queued: q.queued,
                    leased: q.leased,
                    oldest: q
                        .oldest_due_micros
                        .map(|due| duration(now.saturating_sub(due)))
                        .unwrap_or_default(),
                })
                .collect(),
            workers: loads
                .workers
                .iter()
                .map(|w| WorkerView {
                    queue: w.queue.clone(),
                    worker_id: w.worker_id.clone(),
                    leased: w.leased,
                    last_seen: w.last_seen_micros.map(|at| ago(now, at)).unwrap_or_default(),
                    last_seen_at: w.last_seen_micros.map(rfc3339).unwrap_or_default(),
                    next_expiry: w.next_expiry_micros.map(rfc3339).unwrap_or_default(),
                })
                .collect(),
        }
    }
}

pub(super) struct DefinitionView<'a> {
    pub(super) name: &'a str,
    pub(super) link: String,
    pub(super) steps: &'a [StepDefinition],
}

#[derive(Template)]
#[template(path = "definitions.html")]
pub(super) struct DefinitionsPage<'a> {
    pub(super) signed_in: bool,
    pub(super) csrf: String,
    pub(super) definitions: Vec<DefinitionView<'a>>,
}

impl<'a> DefinitionsPage<'a> {
    pub(super) fn new(signed_in: bool, csrf: String, definitions: &'a [ProcessDefinition]) -> Self {
        DefinitionsPage {
            signed_in,
            csrf,
            definitions: definitions
                .iter()
                .map(|d| DefinitionView {
                    name: &d.name,
                    link: format!(
                        "/?asyncProcessName={}",
                        form_urlencoded::byte_serialize(d.name.as_bytes()).collect::<String>()
                    ),
                    steps: &d.steps,
                })
                .collect(),
        }
    }
}

pub(super) struct DeliveryView {
    pub(super) delivery_id: String,
    pub(super) url: String,
    pub(super) finished_status: String,
    pub(super) state: String,
    pub(super) attempts: u32,
    pub(super) last_answer: String,
    pub(super) created: String,
    pub(super) delivered: String,
    pub(super) next_attempt: String,
}

#[derive(Template)]
#[template(path = "deliveries.html")]
pub(super) struct DeliveriesPage {
    pub(super) signed_in: bool,
    pub(super) csrf: String,
    pub(super) id: String,
    pub(super) id_path: String,
    pub(super) deliveries: Vec<DeliveryView>,
}

impl DeliveryView {
    pub(super) fn new(d: &DeliveryRecord) -> Self {
        let last_answer = match (&d.last_status_code, &d.last_error) {
            (Some(code), Some(error)) => format!("{code}: {error}"),
            (Some(code), None) => code.to_string(),
            (None, Some(error)) => error.clone(),
            (None, None) => String::new(),
        };
        DeliveryView {
            delivery_id: d.delivery_id.clone(),
            url: d.url.clone(),
            finished_status: d.finished_status.clone(),
            state: d.state.clone(),
            attempts: d.attempts,
            last_answer,
            created: rfc3339(d.created_at_micros),
            delivered: d.delivered_at_micros.map(rfc3339).unwrap_or_default(),
            next_attempt: d.next_attempt_at_micros.map(rfc3339).unwrap_or_default(),
        }
    }
}

pub(super) struct ItemView {
    pub(super) index: u64,
    pub(super) item: String,
    pub(super) code: String,
    pub(super) message: String,
}

#[derive(Template)]
#[template(path = "items.html")]
pub(super) struct ItemsPage {
    pub(super) signed_in: bool,
    pub(super) csrf: String,
    pub(super) id: String,
    pub(super) id_path: String,
    pub(super) step: u32,
    pub(super) outcome: Option<&'static str>,
    pub(super) items: Vec<ItemView>,
    pub(super) next_page: Option<String>,
}

#[derive(Template)]
#[template(path = "message.html")]
pub(super) struct MessagePage {
    pub(super) signed_in: bool,
    pub(super) csrf: String,
    pub(super) title: String,
    pub(super) text: String,
    pub(super) login: bool,
}

pub(super) fn html(status: StatusCode, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(body) => HttpResponse::build(status).content_type("text/html; charset=utf-8").body(body),
        Err(error) => {
            tracing::error!(%error, "a dashboard page could not be rendered");
            HttpResponse::InternalServerError()
                .content_type("text/html; charset=utf-8")
                .body("Internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_durations_read_well() {
        assert_eq!(sample(["1", "2"].into_iter()), "1, 2");
        assert_eq!(sample(["1", "2", "3", "4"].into_iter()), "1, 2, 3, …");
        assert_eq!(sample(std::iter::empty()), "");
        assert_eq!(duration(59_000_000), "59 s");
        assert_eq!(duration(61_000_000), "1 min 1 s");
        assert_eq!(duration(7_260_000_000), "2 h 1 min");
    }
}
