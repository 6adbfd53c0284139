//! [`Client`]: one blocking method per API call, errors as [`Error`], bodies as the types of
//! [`crate::types`].

use std::io::{BufRead, BufReader};
use std::time::Duration;

use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::types::{
    Claim, Definitions, Envelope, ItemOutcome, ItemsPage, ListFilter, Outcomes, Part, Parts, ResultOutcome,
    StatusOptions, Task, UploadFormat,
};
use crate::{Error, Start};

/// A client of one Async Engine server. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl Client {
    /// A client of the server at `server` (`http://host:port` or `https://...`, without a path).
    pub fn new(server: &str) -> Result<Self, Error> {
        let base = server.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(Error::BadServer(server.to_owned()));
        }
        // No overall timeout: an event stream lasts as long as its process, and a claim may
        // wait up to 30 s. A connection that cannot be made in 10 s counts as unreachable.
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .map_err(|e| Error::Invalid(format!("building the HTTP client: {e}")))?;
        Ok(Self { base, token: None, http })
    }

    /// Sends `Authorization: Bearer TOKEN` on every call (servers with `auth.enabled`); an
    /// empty token sends none.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// The server's base URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// Starts a process; the answer's one record is the new process.
    pub fn submit(&self, start: &Start) -> Result<Envelope, Error> {
        parse(&self.submit_text(start)?)
    }

    /// The start's answer exactly as the server sent it.
    pub fn submit_text(&self, start: &Start) -> Result<String, Error> {
        let mut request = self
            .http
            .post(self.url("/v1/asyncprocesses"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(start.body());
        if let Some(key) = &start.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request)?.text().map_err(|e| self.broke_off(&e))
    }

    /// Starts a process over items streamed from `body` as NDJSON (one JSON item a line) or
    /// CSV (a header row, then one item a row), sent as they are read: the server checks each
    /// item as it arrives and stores the process only if the whole body was valid. `start`
    /// gives the name and the options (made with [`Start::from_raw`] and no items: the body
    /// holds them).
    pub fn submit_stream(
        &self,
        start: &Start,
        format: UploadFormat,
        body: impl std::io::Read + Send + 'static,
    ) -> Result<Envelope, Error> {
        parse(&self.submit_stream_text(start, format, body)?)
    }

    /// [`Client::submit_stream`]'s answer exactly as the server sent it.
    pub fn submit_stream_text(
        &self,
        start: &Start,
        format: UploadFormat,
        body: impl std::io::Read + Send + 'static,
    ) -> Result<String, Error> {
        if start.open || !start.items.is_empty() {
            return Err(Error::Invalid("a streamed start sends its items as the body: give it none".into()));
        }
        let mut request = self
            .http
            .post(self.url("/v1/asyncprocesses"))
            .query(&start.query())
            .header(header::CONTENT_TYPE, upload_type(format))
            .body(reqwest::blocking::Body::new(body));
        if let Some(key) = &start.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request)?.text().map_err(|e| self.broke_off(&e))
    }

    /// Stores part `part` (1 to 10000) of a process started with [`Start::open`]: items as
    /// NDJSON or CSV (a CSV part with its own header row), replacing what that part held.
    pub fn put_part(
        &self,
        async_process_id: &str,
        part: u32,
        format: UploadFormat,
        body: impl std::io::Read + Send + 'static,
    ) -> Result<Part, Error> {
        let url = self.url(&format!("/v1/asyncprocesses/{}/parts/{part}", encode(async_process_id)));
        let request = self
            .http
            .put(url)
            .header(header::CONTENT_TYPE, upload_type(format))
            .body(reqwest::blocking::Body::new(body));
        json(self.send(request)?)
    }

    /// The parts an open process holds so far.
    pub fn parts(&self, async_process_id: &str) -> Result<Parts, Error> {
        json(self.send(
            self.http.get(self.url(&format!("/v1/asyncprocesses/{}/parts", encode(async_process_id)))),
        )?)
    }

    /// Closes an open process: its parts' items, in part order, become its items and it runs.
    pub fn close(&self, async_process_id: &str) -> Result<Envelope, Error> {
        parse(&self.close_text(async_process_id)?)
    }

    /// [`Client::close`]'s answer exactly as the server sent it.
    pub fn close_text(&self, async_process_id: &str) -> Result<String, Error> {
        let url = self.url(&format!("/v1/asyncprocesses/{}/close", encode(async_process_id)));
        self.send(self.http.post(url))?.text().map_err(|e| self.broke_off(&e))
    }

    /// A step's results as a file (NDJSON or CSV), to be read as it streams in.
    pub fn results(
        &self,
        async_process_id: &str,
        step: u32,
        outcome: ResultOutcome,
        format: UploadFormat,
    ) -> Result<impl std::io::Read + Send + use<>, Error> {
        let outcome = match outcome {
            ResultOutcome::All => "all",
            ResultOutcome::Succeeded => "succeeded",
            ResultOutcome::Failed => "failed",
            ResultOutcome::Unprocessed => "unprocessed",
        };
        let format = match format {
            UploadFormat::Ndjson => "ndjson",
            UploadFormat::Csv => "csv",
        };
        let url = self.url(&format!("/v1/asyncprocesses/{}/steps/{step}/results", encode(async_process_id)));
        self.send(self.http.get(url).query(&[("outcome", outcome), ("format", format)]))
    }

    /// Where the processes an asyncProcessId or referenceId names stand.
    pub fn status(&self, id: &str, options: StatusOptions) -> Result<Envelope, Error> {
        parse(&self.status_text(id, options)?)
    }

    /// The status answer's text exactly as the server sent it.
    pub fn status_text(&self, id: &str, options: StatusOptions) -> Result<String, Error> {
        self.send(self.http.get(self.status_url(id, options)))?.text().map_err(|e| self.broke_off(&e))
    }

    /// A page of processes, newest first; follow `next_cursor` for the next.
    pub fn list(&self, filter: &ListFilter) -> Result<Envelope, Error> {
        let mut query: Vec<(&str, String)> = Vec::new();
        let fields = [
            ("status", &filter.status),
            ("asyncProcessName", &filter.async_process_name),
            ("referenceId", &filter.reference_id),
            ("cursor", &filter.cursor),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        if let Some(limit) = filter.limit {
            query.push(("limit", limit.to_string()));
        }
        json(self.send(self.http.get(self.url("/v1/asyncprocesses")).query(&query))?)
    }

    /// Cancels a waiting or running process (it becomes `Aborted`); a finished one, or a
    /// record of history, is refused with status 409.
    pub fn cancel(&self, async_process_id: &str) -> Result<Envelope, Error> {
        self.command(async_process_id, "cancel")
    }

    /// Runs a `Failed` process's failed items again, from the step where they failed; any
    /// other process is refused with status 409.
    pub fn retry(&self, async_process_id: &str) -> Result<Envelope, Error> {
        self.command(async_process_id, "retry")
    }

    fn command(&self, id: &str, verb: &str) -> Result<Envelope, Error> {
        let url = self.url(&format!("/v1/asyncprocesses/{}/{verb}", encode(id)));
        json(self.send(self.http.post(url))?)
    }

    /// A page of one step's items: at most `limit` (the server's default when `None`) after
    /// `cursor` (the previous page's `next_cursor`).
    pub fn items(
        &self,
        async_process_id: &str,
        step: u32,
        outcome: ItemOutcome,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<ItemsPage, Error> {
        let mut query: Vec<(&str, String)> = Vec::new();
        match outcome {
            ItemOutcome::All => {}
            ItemOutcome::Successful => query.push(("outcome", "successful".into())),
            ItemOutcome::Failed => query.push(("outcome", "failed".into())),
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_owned()));
        }
        let url = self.url(&format!("/v1/asyncprocesses/{}/steps/{step}/items", encode(async_process_id)));
        json(self.send(self.http.get(url).query(&query))?)
    }

    /// The process definitions the server runs.
    pub fn definitions(&self) -> Result<Definitions, Error> {
        json(self.send(self.http.get(self.url("/v1/processdefinitions")))?)
    }

    /// Follows the processes an ID names through the server's event stream, calling `seen`
    /// with each new status (steps with counters, no item lists), until all of them have
    /// ended; returns the last status.
    pub fn watch(&self, id: &str, mut seen: impl FnMut(&Envelope)) -> Result<Envelope, Error> {
        self.watch_text(id, |_, envelope| seen(envelope))
    }

    /// [`Client::watch`], giving `seen` each status's text too, exactly as the server sent it.
    pub fn watch_text(&self, id: &str, mut seen: impl FnMut(&str, &Envelope)) -> Result<Envelope, Error> {
        let url = self.url(&format!("/v1/asyncprocesses/{}/events", encode(id)));
        let response = self.send(self.http.get(url).header(header::ACCEPT, "text/event-stream"))?;
        let mut last = None;
        let mut data = String::new();
        for line in BufReader::new(response).lines() {
            let line = line.map_err(|e| self.broke_off(&e))?;
            if let Some(part) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(part.strip_prefix(' ').unwrap_or(part));
            } else if line.is_empty() && !data.is_empty() {
                let envelope: Envelope = serde_json::from_str(&data)
                    .map_err(|e| Error::BadAnswer(format!("an event that is not a status envelope: {e}")))?;
                if envelope.code >= 400 {
                    return Err(Error::Api {
                        status: envelope.code,
                        message: envelope.technical_message.unwrap_or_else(|| "the process is gone".into()),
                    });
                }
                seen(&data, &envelope);
                data.clear();
                last = Some(envelope);
            }
        }
        last.ok_or_else(|| Error::BadAnswer("the event stream ended before any status".into()))
    }

    /// Leases up to `claim.max_tasks` due tasks of a queue, waiting up to `claim.wait_seconds`
    /// for one; an empty list when none came.
    pub fn claim(&self, claim: &Claim) -> Result<Vec<Task>, Error> {
        #[derive(serde::Deserialize)]
        struct Claimed {
            tasks: Vec<Task>,
        }
        let answer: Claimed = json(self.send(self.http.post(self.url("/v1/tasks/claim")).json(claim))?)?;
        Ok(answer.tasks)
    }

    /// Extends a task's lease by `lease_seconds` from now.
    pub fn heartbeat(&self, task: &Task, lease_seconds: u32) -> Result<(), Error> {
        let body = serde_json::json!({ "leaseToken": task.lease_token, "leaseSeconds": lease_seconds });
        self.task_call(task.task_id, "heartbeat", &body)
    }

    /// Records a task's outcomes: every item exactly once (see [`Outcomes::check`]).
    pub fn complete(&self, task: &Task, outcomes: &Outcomes) -> Result<(), Error> {
        self.task_call(task.task_id, "complete", &outcomes.body(&task.lease_token))
    }

    /// Gives a task back: retried (when `retryable`, while attempts remain) or its items
    /// recorded failed with `message`.
    pub fn fail(&self, task: &Task, message: &str, retryable: bool) -> Result<(), Error> {
        let message: String = message.chars().take(1_000).collect();
        let message = if message.is_empty() { "the worker failed the task".to_owned() } else { message };
        let body = serde_json::json!({ "leaseToken": task.lease_token, "statusMessage": message, "retryable": retryable });
        self.task_call(task.task_id, "fail", &body)
    }

    fn task_call(&self, task_id: i64, verb: &str, body: &Value) -> Result<(), Error> {
        let url = self.url(&format!("/v1/tasks/{task_id}/{verb}"));
        self.send(self.http.post(url).json(body)).map(drop)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn status_url(&self, id: &str, o: StatusOptions) -> String {
        self.url(&format!(
            "/v1/asyncprocesses/{}?verbose={}&itemsList={}&failMessage={}",
            encode(id),
            o.verbose,
            o.items_list,
            o.fail_message
        ))
    }

    fn send(&self, request: RequestBuilder) -> Result<Response, Error> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().map_err(|e| self.broke_off(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // The server's own explanation, when it gave one in the envelope.
        let body: Value = response.json().unwrap_or(Value::Null);
        let message = body["technicalMessage"]
            .as_str()
            .map_or_else(|| status.canonical_reason().unwrap_or("").to_owned(), str::to_owned);
        Err(Error::Api { status: status.as_u16(), message })
    }

    fn broke_off(&self, error: &dyn std::error::Error) -> Error {
        let mut cause = error;
        while let Some(next) = cause.source() {
            cause = next;
        }
        Error::Unreachable { server: self.base.clone(), reason: cause.to_string() }
    }
}

fn json<T: DeserializeOwned>(response: Response) -> Result<T, Error> {
    parse(&response.text().map_err(|e| Error::BadAnswer(e.to_string()))?)
}

fn upload_type(format: UploadFormat) -> &'static str {
    match format {
        UploadFormat::Ndjson => "application/x-ndjson",
        UploadFormat::Csv => "text/csv",
    }
}

fn parse<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::BadAnswer(e.to_string()))
}

/// A path segment, percent-encoded.
fn encode(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_name_a_server() {
        assert!(matches!(Client::new("127.0.0.1:8080"), Err(Error::BadServer(_))));
        let client = Client::new("http://127.0.0.1:8080/").unwrap().with_token("");
        assert_eq!(client.server(), "http://127.0.0.1:8080");
        assert!(client.token.is_none());
        assert_eq!(
            client.status_url("order 42/Zürich", StatusOptions::counters()),
            "http://127.0.0.1:8080/v1/asyncprocesses/order%2042%2FZ%C3%BCrich?verbose=true&itemsList=false&failMessage=true"
        );
    }

    #[test]
    fn a_server_that_is_not_there_is_unreachable_and_transient() {
        // A port that was free a moment ago: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = format!("http://127.0.0.1:{port}");
        let error = Client::new(&server).unwrap().definitions().unwrap_err();
        assert!(error.is_transient(), "{error}");
        assert!(error.to_string().starts_with(&format!("cannot reach {server}")), "{error}");
    }
}
