//! Rows as diesel reads and writes them.

use diesel::prelude::*;

use crate::schema::{failure_groups, items, outcomes, processes, steps};

/// A task's `state`: waiting to be claimed, leased, or closed (done or cancelled).
pub(crate) const QUEUED: &str = "queued";
pub(crate) const LEASED: &str = "leased";
pub(crate) const DONE: &str = "done";
pub(crate) const CANCELLED: &str = "cancelled";
/// The states of tasks still to run.
pub(crate) const OPEN: [&str; 2] = [QUEUED, LEASED];

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = processes, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct ProcessRow {
    pub id: i64,
    pub async_process_id: String,
    pub reference_id: String,
    pub name: String,
    pub status: String,
    pub message: String,
    pub current_step: i32,
    pub total_steps: i32,
    pub additional_data: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub runnable: bool,
}

#[derive(Insertable)]
#[diesel(table_name = processes)]
pub struct NewProcess<'a> {
    pub tenant: &'a str,
    pub async_process_id: &'a str,
    pub reference_id: &'a str,
    pub name: &'a str,
    pub status: &'a str,
    pub message: &'a str,
    pub current_step: i32,
    pub total_steps: i32,
    pub item_count: i64,
    pub additional_data: &'a str,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = steps, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct StepRow {
    pub step_number: i32,
    pub name: String,
    pub status: String,
    pub message: String,
    pub entered: i64,
    pub succeeded: i64,
    pub failed: i64,
}

#[derive(Insertable)]
#[diesel(table_name = steps)]
pub struct NewStep<'a> {
    pub process_id: i64,
    pub step_number: i32,
    pub name: &'a str,
    pub status: &'a str,
    pub message: &'a str,
    pub entered: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub started: bool,
    pub next_seq: i64,
}

#[derive(Insertable)]
#[diesel(table_name = items)]
pub struct NewItem<'a> {
    pub process_id: i64,
    pub item_index: i64,
    pub value: &'a str,
}

#[derive(Insertable)]
#[diesel(table_name = failure_groups)]
pub struct NewFailureGroup<'a> {
    pub process_id: i64,
    pub step_number: i32,
    pub code: i64,
    pub status_message: &'a str,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = failure_groups, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct FailureGroupRow {
    pub id: i64,
    pub step_number: i32,
    pub code: i64,
    pub status_message: String,
}

#[derive(Insertable)]
#[diesel(table_name = outcomes)]
pub struct NewOutcome {
    pub process_id: i64,
    pub step_number: i32,
    pub item_index: i64,
    pub seq: i64,
    pub failure_group: Option<i64>,
}
