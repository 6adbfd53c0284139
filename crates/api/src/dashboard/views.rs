//! The dashboard's pages: the views its templates show, and rendering them.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use askama::Template;
use async_engine_domain::ProcessStatus;

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
    pub(super) count: usize,
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
                        count: group.items.len(),
                        sample: sample(group.items.iter().map(|i| i.as_str())),
                    })
                    .collect(),
                groups_shown,
            })
            .collect();
        ProcessView {
            id_path: percent_encoding::utf8_percent_encode(
                &process.async_process_id,
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string(),
            id: process.async_process_id.clone(),
            name: process.name.clone(),
            reference: process.reference_id.clone(),
            status: process.status.as_str().to_owned(),
            message: process.message.clone(),
            created: rfc3339(process.created_at_micros),
            updated: rfc3339(process.updated_at_micros),
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

pub(super) fn duration(micros: i64) -> String {
    let seconds = micros.max(0) / 1_000_000;
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3_600 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3_600, (seconds % 3_600) / 60),
    }
}

#[derive(Template)]
#[template(path = "list.html")]
pub(super) struct ListPage {
    pub(super) signed_in: bool,
    pub(super) csrf: String,
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
