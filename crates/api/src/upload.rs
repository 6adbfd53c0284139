//! Streamed starts: a body of items as NDJSON or CSV, parsed as it arrives and spooled, each
//! item checked, to an unnamed temporary file, so that memory stays flat whatever its size and
//! nothing reaches the database unless the whole upload was read and valid.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, web};
use async_engine_domain::RawJson;
use futures_util::StreamExt;
use serde_json::value::RawValue;

use crate::error::ApiError;
pub use crate::params::Format;
use crate::pool::blocking;

/// The items of an upload, checked, in a temporary file that goes when this is dropped.
pub struct Spool {
    file: File,
    /// The body's size as received.
    pub bytes: u64,
}

impl Spool {
    /// The items in upload order. An error here is the temporary file's, not the caller's.
    pub fn into_items(self) -> impl Iterator<Item = Result<RawJson, String>> {
        BufReader::new(self.file).lines().map(|line| {
            let line = line.map_err(|e| format!("reading the spooled upload back: {e}"))?;
            RawJson::from_text(line).map_err(|e| format!("the spooled upload is damaged: {e}"))
        })
    }
}

/// Limits of one upload.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// The whole body (`limits.max_upload_bytes`).
    pub max_bytes: usize,
    /// One item: a line of NDJSON, a record of CSV (`limits.max_body_bytes`).
    pub max_item_bytes: usize,
    /// The longest wait for the next part of the body (`server.body_timeout_secs`).
    pub idle: std::time::Duration,
}

/// Reads, checks and spools an upload's items. A malformed item (naming its line, and for CSV
/// its column), a body over the limit or cut off, or a client that goes away is the error, and
/// leaves nothing behind.
pub async fn spool(
    req: &HttpRequest,
    mut payload: web::Payload,
    format: Format,
    limits: UploadLimits,
) -> Result<Spool, ApiError> {
    let declared =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limits.max_bytes) {
        return Err(ApiError::PayloadTooLarge { limit: limits.max_bytes });
    }
    let (chunks, received) = tokio::sync::mpsc::channel::<Bytes>(8);
    let parsing = blocking(move || parse(ChannelReader { received, current: Bytes::new() }, format, limits));
    let forwarding = async move {
        let mut total = 0_usize;
        loop {
            let next = tokio::time::timeout(limits.idle, payload.next()).await;
            let chunk = match next {
                Err(_) => return Err(ApiError::BodyTimeout { secs: limits.idle.as_secs() }),
                Ok(None) => return Ok(total),
                Ok(Some(Err(e))) => {
                    return Err(ApiError::input(format!("the upload could not be read to its end: {e}")));
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            total += chunk.len();
            if total > limits.max_bytes {
                return Err(ApiError::PayloadTooLarge { limit: limits.max_bytes });
            }
            if chunks.send(chunk).await.is_err() {
                // The parser stopped at a bad item: its error is the answer.
                return Ok(total);
            }
        }
    };
    let (forwarded, parsed) = tokio::join!(forwarding, parsing);
    // A body cut off or over the limit ends the parser's input early: what it made of the
    // part it saw does not count.
    let bytes = u64::try_from(forwarded?).unwrap_or(u64::MAX);
    Ok(Spool { bytes, ..parsed?? })
}

/// The body's chunks as a blocking reader, for the parsers.
struct ChannelReader {
    received: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.received.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn internal(e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("spooling an upload: {e}"))
}

fn parse(body: impl Read, format: Format, limits: UploadLimits) -> Result<Spool, ApiError> {
    let mut out = BufWriter::new(tempfile::tempfile().map_err(internal)?);
    match format {
        Format::Ndjson => ndjson(body, &mut out, limits.max_item_bytes)?,
        Format::Csv => csv(body, &mut out, limits.max_item_bytes)?,
    };
    let mut file = out.into_inner().map_err(|e| internal(e.into_error()))?;
    file.rewind().map_err(internal)?;
    Ok(Spool { file, bytes: 0 })
}

fn ndjson(body: impl Read, out: &mut impl Write, max_item: usize) -> Result<(), ApiError> {
    let mut reader = BufReader::new(body);
    let mut line = Vec::new();
    for number in 1_u64.. {
        line.clear();
        let read = (&mut reader)
            .take(max_item as u64 + 2)
            .read_until(b'\n', &mut line)
            .map_err(|e| ApiError::input(format!("line {number}: {e}")))?;
        if read == 0 {
            break;
        }
        if line.len() > max_item + 1 {
            return Err(ApiError::input(format!(
                "line {number} is longer than {max_item} bytes (limits.max_body_bytes), the most one item may have"
            )));
        }
        let mut text = std::str::from_utf8(&line).map_err(|e| {
            ApiError::input(format!("line {number}, byte {}: not UTF-8", e.valid_up_to() + 1))
        })?;
        if number == 1 {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let raw: Box<RawValue> = serde_json::from_str(text).map_err(|e| {
            ApiError::input(format!("line {number}, column {}: not a JSON value: {}", e.column(), reason(&e)))
        })?;
        let item =
            RawJson::from_input(raw).map_err(|e| ApiError::input(format!("line {number}: the item {e}")))?;
        writeln!(out, "{}", item.as_str()).map_err(internal)?;
    }
    Ok(())
}

/// serde_json's message without its own "at line L column C", which would count within the
/// one line.
fn reason(error: &serde_json::Error) -> String {
    let text = error.to_string();
    text.split(" at line ").next().unwrap_or(&text).to_owned()
}

fn csv(body: impl Read, out: &mut impl Write, max_item: usize) -> Result<(), ApiError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(body);
    let headers = reader.headers().map_err(csv_error)?.clone();
    if headers.is_empty() || headers.iter().all(str::is_empty) {
        return Err(ApiError::input("line 1: a CSV upload starts with a header row naming each field"));
    }
    let mut seen = std::collections::HashSet::new();
    for (column, name) in headers.iter().enumerate() {
        if !seen.insert(name) {
            return Err(ApiError::input(format!(
                "line 1, column {}: the header names '{name}' twice",
                column + 1
            )));
        }
    }
    // Each name's JSON text once: an item is the names and its values, in the header's order.
    let names: Vec<String> = headers.iter().map(|h| serde_json::Value::from(h).to_string()).collect();
    let mut record = csv::StringRecord::new();
    let mut item = String::new();
    while reader.read_record(&mut record).map_err(csv_error)? {
        let line = record.position().map_or(0, csv::Position::line);
        if record.as_slice().len() > max_item {
            return Err(ApiError::input(format!(
                "line {line} is longer than {max_item} bytes (limits.max_body_bytes), the most one item may have"
            )));
        }
        item.clear();
        item.push('{');
        for (n, (name, value)) in names.iter().zip(record.iter()).enumerate() {
            if n > 0 {
                item.push(',');
            }
            item.push_str(name);
            item.push(':');
            item.push_str(&serde_json::Value::from(value).to_string());
        }
        item.push('}');
        writeln!(out, "{item}").map_err(internal)?;
    }
    Ok(())
}

fn csv_error(error: csv::Error) -> ApiError {
    let at = |position: Option<&csv::Position>| position.map_or(0, csv::Position::line);
    match error.kind() {
        csv::ErrorKind::UnequalLengths { pos, expected_len, len } => ApiError::input(format!(
            "line {}: {len} field(s), but the header row has {expected_len}",
            at(pos.as_ref())
        )),
        csv::ErrorKind::Utf8 { pos, err } => {
            ApiError::input(format!("line {}, column {}: not UTF-8", at(pos.as_ref()), err.field() + 1))
        }
        csv::ErrorKind::Io(e) => ApiError::input(format!("the upload could not be read: {e}")),
        _ => ApiError::input(format!("not CSV: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(format: Format, body: &str) -> Result<Vec<String>, String> {
        let limits = UploadLimits {
            max_bytes: 1 << 20,
            max_item_bytes: 1_000,
            idle: std::time::Duration::from_secs(1),
        };
        let spool = parse(body.as_bytes(), format, limits).map_err(|e| e.to_string())?;
        Ok(spool.into_items().map(|i| i.unwrap().as_str().to_owned()).collect())
    }

    #[test]
    fn ndjson_items_come_as_written_line_by_line() {
        let body = "\u{feff}{\"a\": 1.50}\r\n\n  \n[1,2]\n\"three\"";
        assert_eq!(items(Format::Ndjson, body).unwrap(), ["{\"a\": 1.50}", "[1,2]", "\"three\""]);
        assert_eq!(items(Format::Ndjson, "").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_bad_ndjson_line_is_named() {
        assert_eq!(
            items(Format::Ndjson, "1\n{\"a\": }\n").unwrap_err(),
            "line 2, column 7: not a JSON value: expected value"
        );
        assert!(
            items(Format::Ndjson, "1 2\n").unwrap_err().starts_with("line 1, column 3: not a JSON value")
        );
        let long = format!("\"{}\"\n", "x".repeat(2_000));
        assert!(items(Format::Ndjson, &long).unwrap_err().starts_with("line 1 is longer than 1000 bytes"));
        let deep = format!("{}{}\n", "[".repeat(65), "]".repeat(65));
        assert!(items(Format::Ndjson, &format!("1\n{deep}")).unwrap_err().starts_with("line 2: the item "));
    }

    #[test]
    fn csv_rows_become_objects_of_strings_in_header_order() {
        let body = "\u{feff}zeta,alpha\r\n\"TV, premium\",\"2\"\r\n\"line\nbreak\",\"say \"\"hi\"\"\"\r\n";
        assert_eq!(
            items(Format::Csv, body).unwrap(),
            [r#"{"zeta":"TV, premium","alpha":"2"}"#, r#"{"zeta":"line\nbreak","alpha":"say \"hi\""}"#]
        );
    }

    #[test]
    fn a_bad_csv_row_is_named_by_line_and_column() {
        assert_eq!(
            items(Format::Csv, "a,b\n1,2\n3\n").unwrap_err(),
            "line 3: 1 field(s), but the header row has 2"
        );
        assert_eq!(
            items(Format::Csv, "a,a\n1,2\n").unwrap_err(),
            "line 1, column 2: the header names 'a' twice"
        );
        assert!(items(Format::Csv, "").unwrap_err().contains("header row"));
        let latin1 = b"a,b\n1,\xe9\n";
        let limits =
            UploadLimits { max_bytes: 1 << 20, max_item_bytes: 100, idle: std::time::Duration::from_secs(1) };
        let error = parse(&latin1[..], Format::Csv, limits).err().unwrap().to_string();
        assert_eq!(error, "line 2, column 2: not UTF-8");
    }
}
