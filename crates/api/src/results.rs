//! `GET /v1/asyncprocesses/{id}/steps/{stepNumber}/results`: a whole step's results as a file,
//! NDJSON or CSV, streamed a page at a time in item order, so that memory stays flat and each
//! row costs the same whatever the size of the process (issue 15).

use std::borrow::Cow;
use std::sync::Arc;

use actix_web::http::header::{CONTENT_DISPOSITION, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use async_engine_domain::{
    ItemResult, ItemsError, ProcessStore, ResultRow, ResultsFilter, ResultsQuery, TenantId,
};
use futures_util::stream;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::answering::resolve_target;
use crate::auth::Scope;
use crate::error::ApiError;
use crate::pool::blocking;
use crate::routing::resource;
use crate::state::AppState;

/// Rows read per page.
const PAGE: u32 = 5_000;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/asyncprocesses/{id}/steps/{stepNumber}/results", "GET, HEAD")
            .route(web::get().to(results)),
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Ndjson,
    Csv,
}

/// `GET /v1/asyncprocesses/{id}/steps/{stepNumber}/results?outcome=&format=`
#[utoipa::path(get, path = "/v1/asyncprocesses/{id}/steps/{stepNumber}/results", tag = "status", operation_id = "downloadStepResults",
    description = "Every item of the process with its result at the step, in item order: `succeeded`, `failed` (with code and statusMessage) or `unprocessed` (no outcome at this step: not reached yet, left out by an earlier step's failure, or never run because the process ended). NDJSON: one object a line, {\"index\", \"outcome\", \"code\", \"statusMessage\", \"item\"}. CSV: index, outcome, code, statusMessage, then the item's fields as columns when the first item is a flat object (as from a CSV upload), and a last column `item` with the JSON of any item that is not.",
    params(("id" = String, Path, description = "An asyncProcessId, or a referenceId that names one process", min_length = 1, max_length = 255),
        ("stepNumber" = u32, Path, description = "The step, from 0"),
        ("outcome" = Option<String>, Query, description = "succeeded, failed, unprocessed or all (the default)", pattern = "^(succeeded|failed|unprocessed|all)$"),
        ("format" = Option<String>, Query, description = "ndjson (the default) or csv", pattern = "^(ndjson|csv)$")),
    responses((status = 200, description = "The results, as a file named in Content-Disposition",
            content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process or step)", body = crate::envelope::Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = crate::envelope::Envelope),
        (status = 403, description = "The key lacks the scope", body = crate::envelope::Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = crate::envelope::Envelope)))]
pub async fn results(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::StatusRead)?.tenant;
    let step = req.match_info().get("stepNumber").unwrap_or_default().to_owned();
    results_file(&req, &state, &tenant, &step).await
}

/// The file of the step named `step` of the process the request's `{id}` names, as the
/// query asks; also what the dashboard's download links answer.
pub(crate) async fn results_file(
    req: &HttpRequest,
    state: &AppState,
    tenant: &TenantId,
    step: &str,
) -> Result<HttpResponse, ApiError> {
    let id = resolve_target(state, tenant, req.match_info().get("id").unwrap_or_default()).await?;
    let step = step
        .parse::<u32>()
        .map_err(|_| ApiError::input("stepNumber must be a whole number: 0 for the first step"))?;
    let tenant = tenant.clone();
    let (mut filter, mut format) = (ResultsFilter::All, FileFormat::Ndjson);
    for (name, value) in form_urlencoded::parse(req.query_string().as_bytes()) {
        match name.as_ref() {
            "outcome" => {
                filter = match value.as_ref() {
                    "succeeded" => ResultsFilter::Succeeded,
                    "failed" => ResultsFilter::Failed,
                    "unprocessed" => ResultsFilter::Unprocessed,
                    "all" => ResultsFilter::All,
                    _ => {
                        return Err(ApiError::input("outcome must be succeeded, failed, unprocessed or all"));
                    }
                }
            }
            "format" => {
                format = match value.as_ref() {
                    "ndjson" => FileFormat::Ndjson,
                    "csv" => FileFormat::Csv,
                    _ => return Err(ApiError::input("format must be ndjson or csv")),
                }
            }
            _ => {}
        }
    }
    let outcome = match filter {
        ResultsFilter::Succeeded => "succeeded",
        ResultsFilter::Failed => "failed",
        ResultsFilter::Unprocessed => "unprocessed",
        ResultsFilter::All => "all",
    };
    let (extension, content_type) = match format {
        FileFormat::Ndjson => ("ndjson", "application/x-ndjson"),
        FileFormat::Csv => ("csv", "text/csv; charset=utf-8"),
    };
    let file = format!("{id}-step{step}-{outcome}.{extension}");
    let query =
        ResultsQuery { tenant, async_process_id: id, step_number: step, filter, after: None, limit: PAGE };
    // The first page before the answer: no such process or step is the envelope's 400.
    let first = page(state.processes.clone(), query.clone()).await?;
    let file_stream =
        Pages { store: state.processes.clone(), query, next: Some(Next::Read(first)), format, columns: None };
    let body = stream::unfold(file_stream, |mut pages| async move {
        let chunk = pages.next_chunk().await?;
        Some((chunk, pages))
    });
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{file}\""))
        .map_err(|_| ApiError::Internal("content-disposition header".into()))?;
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((CONTENT_DISPOSITION, disposition))
        .streaming(body))
}

async fn page(store: Arc<dyn ProcessStore>, query: ResultsQuery) -> Result<Vec<ResultRow>, ApiError> {
    blocking(move || store.results(&query)).await?.map_err(|e| match e {
        ItemsError::Storage(error) => error.into(),
        refused => ApiError::Input(refused.to_string()),
    })
}

/// The file, a page at a time.
struct Pages {
    store: Arc<dyn ProcessStore>,
    query: ResultsQuery,
    /// The page to write next; `None` once the last was written.
    next: Option<Next>,
    format: FileFormat,
    /// CSV: the item fields written as columns (decided by the first row), once the header is out.
    columns: Option<Vec<String>>,
}

enum Next {
    /// The first page, read before the answer began.
    Read(Vec<ResultRow>),
    Reading(actix_web::rt::task::JoinHandle<Result<Vec<ResultRow>, ApiError>>),
}

impl Pages {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, actix_web::Error>> {
        let rows = match self.next.take()? {
            Next::Read(rows) => rows,
            Next::Reading(reading) => {
                match reading.await.unwrap_or_else(|_| Err(ApiError::Internal("results page task".into()))) {
                    Ok(rows) if rows.is_empty() => return None,
                    Ok(rows) => rows,
                    Err(error) => {
                        // The answer has begun: all that is left is to cut it short, which
                        // the client sees as a body that ends before its last row.
                        tracing::warn!(%error, "a results file was cut short");
                        return Some(Err(actix_web::error::ErrorInternalServerError("results cut short")));
                    }
                }
            }
        };
        // The next page is read on the blocking pool while this one is written and sent.
        if rows.len() == PAGE as usize {
            self.query.after = rows.last().map(|row| row.index);
            self.next =
                Some(Next::Reading(actix_web::rt::spawn(page(self.store.clone(), self.query.clone()))));
        }
        let chunk = match self.format {
            FileFormat::Ndjson => ndjson(&rows),
            FileFormat::Csv => self.csv(&rows),
        };
        Some(Ok(Bytes::from(chunk)))
    }

    fn csv(&mut self, rows: &[ResultRow]) -> Vec<u8> {
        let mut out =
            csv::WriterBuilder::new().flexible(true).from_writer(Vec::with_capacity(rows.len() * 128));
        if self.columns.is_none() {
            let columns: Vec<String> = rows
                .first()
                .and_then(|row| flat_fields(&row.item))
                .map(|fields| fields.into_iter().map(|(name, _)| name.into_owned()).collect())
                .unwrap_or_default();
            let fixed = ["index", "outcome", "code", "statusMessage"];
            let header = fixed.iter().copied().chain(columns.iter().map(String::as_str)).chain(["item"]);
            let _ = out.write_record(header);
            self.columns = Some(columns);
        }
        let columns = self.columns.as_deref().unwrap_or_default();
        for row in rows {
            let (outcome, code, message) = describe(&row.result);
            let _ = out.write_field(row.index.to_string());
            let _ = out.write_field(outcome);
            let _ = out.write_field(code);
            let _ = out.write_field(message);
            let fields = flat_fields(&row.item).filter(|fields| {
                fields.len() == columns.len()
                    && fields.iter().zip(columns).all(|((name, _), column)| name == column)
            });
            match fields {
                Some(fields) => {
                    for (_, value) in &fields {
                        let _ = out.write_field(value.as_ref());
                    }
                    let _ = out.write_field("");
                }
                None => {
                    for _ in columns {
                        let _ = out.write_field("");
                    }
                    let _ = out.write_field(&row.item);
                }
            }
            let _ = out.write_record(None::<&[u8]>);
        }
        out.into_inner().unwrap_or_default()
    }
}

fn describe(result: &ItemResult) -> (&'static str, String, &str) {
    match result {
        ItemResult::Succeeded => ("succeeded", String::new(), ""),
        ItemResult::Failed { code, status_message } => ("failed", code.to_string(), status_message),
        ItemResult::Unprocessed => ("unprocessed", String::new(), ""),
    }
}

fn ndjson(rows: &[ResultRow]) -> Vec<u8> {
    let mut out = String::new();
    for row in rows {
        let (outcome, code, message) = describe(&row.result);
        out.push_str(&format!("{{\"index\":{},\"outcome\":\"{outcome}\"", row.index));
        if !code.is_empty() {
            out.push_str(&format!(",\"code\":{code},\"statusMessage\":{}", serde_json::Value::from(message)));
        }
        out.push_str(",\"item\":");
        out.push_str(&row.item);
        out.push_str("}\n");
    }
    out.into_bytes()
}

/// The fields of a flat JSON object (every value a string, number, boolean or null), in the
/// order written, values as CSV text; `None` for anything else. Borrowed from `json` where no
/// escape needs decoding: a result file reads every row through this.
fn flat_fields(json: &str) -> Option<Vec<(Cow<'_, str>, Cow<'_, str>)>> {
    struct Flat;
    impl<'de> Visitor<'de> for Flat {
        type Value = Option<Vec<(Cow<'de, str>, Cow<'de, str>)>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut fields = Vec::new();
            let mut flat = true;
            while let Some((name, value)) = map.next_entry::<&'de RawValue, &'de RawValue>()? {
                fields.push((
                    text(name.get()).map_err(serde::de::Error::custom)?,
                    match value.get().as_bytes().first() {
                        Some(b'"') => text(value.get()).map_err(serde::de::Error::custom)?,
                        Some(b'{' | b'[') => {
                            flat = false;
                            Cow::Borrowed("")
                        }
                        _ if value.get() == "null" => Cow::Borrowed(""),
                        _ => Cow::Borrowed(value.get()),
                    },
                ));
            }
            Ok(flat.then_some(fields))
        }
    }
    /// A JSON string's text: its inside as written when it has no escapes.
    fn text(raw: &str) -> Result<Cow<'_, str>, serde_json::Error> {
        match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(inside) if !inside.contains('\\') => Ok(Cow::Borrowed(inside)),
            _ => serde_json::from_str::<String>(raw).map(Cow::Owned),
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(json);
    serde::Deserializer::deserialize_any(&mut deserializer, Flat).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(index: u64, item: &str, result: ItemResult) -> ResultRow {
        ResultRow { index, item: item.to_owned(), result }
    }

    #[test]
    fn flat_objects_keep_their_field_order() {
        assert_eq!(
            flat_fields(r#"{"zeta":"a, b","alpha":2,"n":null}"#),
            Some(vec![("zeta".into(), "a, b".into()), ("alpha".into(), "2".into()), ("n".into(), "".into())])
        );
        assert_eq!(flat_fields(r#"{"a":{"b":1}}"#), None);
        assert_eq!(
            flat_fields(r#"{"q\u0041":"say \"hi\""}"#),
            Some(vec![("qA".into(), "say \"hi\"".into())])
        );
        assert_eq!(flat_fields("[1]"), None);
    }

    #[test]
    fn csv_writes_flat_items_as_columns_and_others_as_json() {
        let mut pages = Pages {
            store: Arc::new(async_engine_domain::work::MockProcessStore::new()),
            query: ResultsQuery {
                tenant: TenantId::default_tenant(),
                async_process_id: "p".into(),
                step_number: 0,
                filter: ResultsFilter::All,
                after: None,
                limit: PAGE,
            },
            next: None,
            format: FileFormat::Csv,
            columns: None,
        };
        let rows = [
            row(0, r#"{"productCode":"TV, 4K","quantity":"2"}"#, ItemResult::Succeeded),
            row(
                1,
                r#"{"productCode":"IOT","quantity":"500"}"#,
                ItemResult::Failed { code: 6001, status_message: "Too \"many\"".into() },
            ),
            row(2, r#"[1,2]"#, ItemResult::Unprocessed),
        ];
        let text = String::from_utf8(pages.csv(&rows)).unwrap();
        assert_eq!(
            text,
            "index,outcome,code,statusMessage,productCode,quantity,item\n\
             0,succeeded,,,\"TV, 4K\",2,\n\
             1,failed,6001,\"Too \"\"many\"\"\",IOT,500,\n\
             2,unprocessed,,,,,\"[1,2]\"\n"
        );
        // The header comes once, with the first page.
        let more = String::from_utf8(pages.csv(&rows[..1])).unwrap();
        assert_eq!(more, "0,succeeded,,,\"TV, 4K\",2,\n");
    }

    #[test]
    fn ndjson_rows_carry_the_item_as_stored() {
        let rows = [row(3, r#"{"a": 1.50}"#, ItemResult::Failed { code: 7, status_message: "no".into() })];
        assert_eq!(
            String::from_utf8(ndjson(&rows)).unwrap(),
            "{\"index\":3,\"outcome\":\"failed\",\"code\":7,\"statusMessage\":\"no\",\"item\":{\"a\": 1.50}}\n"
        );
    }
}
