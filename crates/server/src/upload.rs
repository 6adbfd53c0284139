//! `async-engine submit --part-size`: a file of items sent in parts of an open process, cut at
//! item boundaries, so that a big file needs no single huge request and a rerun of the same
//! command resumes, sending only the parts the server does not hold yet.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use async_engine_client::{Client, Envelope, Start, UploadFormat};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::client::ItemsFormat;

/// Where the items to send are: the file itself (NDJSON, CSV), or a JSON array's items
/// rewritten as NDJSON in memory.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Memory(Arc<Vec<u8>>),
}

impl Source {
    pub(crate) fn len(&self) -> anyhow::Result<u64> {
        Ok(match self {
            Source::File(path) => std::fs::metadata(path)?.len(),
            Source::Memory(bytes) => bytes.len() as u64,
        })
    }

    pub(crate) fn reader(&self) -> anyhow::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Source::File(path) => Box::new(File::open(path)?),
            Source::Memory(bytes) => Box::new(Cursor::new(bytes.to_vec())),
        })
    }

    /// The bytes `from..to`, read as they are sent.
    fn range(&self, from: u64, to: u64) -> anyhow::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Source::File(path) => {
                let mut file = File::open(path)?;
                file.seek(SeekFrom::Start(from))?;
                Box::new(file.take(to - from))
            }
            Source::Memory(bytes) => {
                let (from, to) = (usize::try_from(from)?, usize::try_from(to)?);
                Box::new(Cursor::new(bytes[from..to].to_vec()))
            }
        })
    }
}

/// The format of the items file (by `--format`, else its extension, else its first
/// character), and where its items are to be read as NDJSON or CSV.
pub fn items_source(path: &Path, format: Option<ItemsFormat>) -> anyhow::Result<(UploadFormat, Source)> {
    let shown = path.display();
    let mut file = File::open(path).with_context(|| format!("--items: cannot read {shown}"))?;
    let format = match format {
        Some(format) => format,
        None if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) => ItemsFormat::Csv,
        None => {
            let mut start = [0_u8; 512];
            let read = file.read(&mut start).with_context(|| format!("--items: cannot read {shown}"))?;
            let text = String::from_utf8_lossy(&start[..read]);
            if text.trim_start_matches('\u{feff}').trim_start().starts_with('[') {
                ItemsFormat::Json
            } else {
                ItemsFormat::Ndjson
            }
        }
    };
    Ok(match format {
        ItemsFormat::Csv => (UploadFormat::Csv, Source::File(path.to_owned())),
        ItemsFormat::Ndjson => (UploadFormat::Ndjson, Source::File(path.to_owned())),
        ItemsFormat::Json => {
            let mut text = String::new();
            file.rewind()?;
            file.read_to_string(&mut text).with_context(|| format!("--items: cannot read {shown}"))?;
            let items: Vec<Box<RawValue>> = serde_json::from_str(text.trim_start_matches('\u{feff}'))
                .with_context(|| format!("--items: {shown} is not a JSON array"))?;
            // A JSON value's text holds no raw line break but in its whitespace.
            let mut lines = String::with_capacity(text.len());
            for item in &items {
                lines.extend(item.get().chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
                lines.push('\n');
            }
            (UploadFormat::Ndjson, Source::Memory(Arc::new(lines.into_bytes())))
        }
    })
}

/// How a file is cut: each part sends `header` (a CSV file's header row, so that every part
/// names its fields) and then its byte range of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub header: Vec<u8>,
    pub ranges: Vec<(u64, u64)>,
}

impl Plan {
    /// The bytes part `n` (from 0) sends.
    fn bytes(&self, n: usize) -> u64 {
        let (from, to) = self.ranges[n];
        self.header.len() as u64 + (to - from)
    }
}

/// Cuts the items into parts of at least `size` bytes each (the last one smaller), at item
/// boundaries: lines of NDJSON, records of CSV (whose quoted fields may hold line breaks).
pub fn plan(source: &Source, format: UploadFormat, size: u64) -> anyhow::Result<Plan> {
    let total = source.len()?;
    // Where each item starts, after the CSV header.
    let mut starts = Vec::new();
    let mut header_end = 0;
    match format {
        UploadFormat::Ndjson => {
            let mut reader = BufReader::new(source.reader()?);
            let (mut at, mut line) = (0_u64, Vec::new());
            loop {
                line.clear();
                let read = reader.read_until(b'\n', &mut line)?;
                if read == 0 {
                    break;
                }
                starts.push(at);
                at += read as u64;
            }
        }
        UploadFormat::Csv => {
            let mut reader =
                csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(source.reader()?);
            reader.byte_headers().context("--items: the CSV header row")?;
            let mut record = csv::ByteRecord::new();
            let mut first = true;
            loop {
                let at = reader.position().byte();
                if !reader.read_byte_record(&mut record).context("--items: not CSV")? {
                    if first {
                        header_end = at;
                    }
                    break;
                }
                if first {
                    header_end = at;
                    first = false;
                }
                starts.push(at);
            }
        }
    }
    let header = match format {
        UploadFormat::Csv => {
            header_end = whole_line(source, format, header_end)?;
            if let Some(first) = starts.first_mut() {
                *first = header_end;
            }
            let mut bytes = Vec::new();
            source.range(0, header_end)?.read_to_end(&mut bytes)?;
            bytes
        }
        UploadFormat::Ndjson => Vec::new(),
    };
    let mut ranges = Vec::new();
    let mut from = starts.first().copied().unwrap_or(total);
    for &start in &starts {
        if start - from >= size.max(1) {
            let cut = whole_line(source, format, start)?;
            ranges.push((from, cut));
            from = cut;
        }
    }
    if from < total {
        ranges.push((from, total));
    }
    Ok(Plan { header, ranges })
}

/// The csv crate places a record's start after the `\r` of a CRLF that ends the one before:
/// a cut there moves past the `\n`, so that each part ends its last line whole.
fn whole_line(source: &Source, format: UploadFormat, at: u64) -> anyhow::Result<u64> {
    if format == UploadFormat::Ndjson || at >= source.len()? {
        return Ok(at);
    }
    let mut byte = [0_u8];
    source.range(at, at + 1)?.read_exact(&mut byte)?;
    Ok(if byte[0] == b'\n' { at + 1 } else { at })
}

/// A size such as `64M`, `1G`, `500K` (powers of 1024) or `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scale: u64 = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("'{text}' is not a size: give bytes, or a number with K, M or G")),
    };
    let size = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{text}' is not a size: give bytes, or a number with K, M or G"))?;
    Ok(size)
}

/// The idempotency key of a submit in parts without `--idempotency-key`: the same for a rerun
/// of the same command on the unchanged file, so that it resumes; another for anything else.
fn derived_key(name: &str, reference_id: &str, path: &Path, part_size: u64) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let path = std::fs::canonicalize(path)?;
    let mut hash = Sha256::new();
    for field in [
        name.as_bytes(),
        reference_id.as_bytes(),
        path.as_os_str().as_encoded_bytes(),
        &meta.len().to_le_bytes(),
        &modified.map_or(0, |t| t.as_nanos()).to_le_bytes(),
        &part_size.to_le_bytes(),
    ] {
        hash.update((field.len() as u64).to_le_bytes());
        hash.update(field);
    }
    Ok(format!("submit-parts-{}", hex::encode(&hash.finalize()[..16])))
}

/// What `submit --part-size` asks for.
pub struct PartsSubmit<'a> {
    pub name: &'a str,
    pub reference_id: &'a str,
    pub path: &'a Path,
    pub format: Option<ItemsFormat>,
    pub part_size: u64,
    pub idempotency_key: Option<String>,
    /// The start's other options (`startAt`, `priority`).
    pub options: &'a dyn Fn(Start) -> Start,
}

/// Starts (or finds again) an open process, sends each part the server does not hold with
/// the bytes this file gives it, and closes it; returns the close's answer (or the start's,
/// for a process closed before) as the server wrote it.
pub fn submit_in_parts(client: &Client, submit: &PartsSubmit<'_>) -> anyhow::Result<String> {
    let (format, source) = items_source(submit.path, submit.format)?;
    let plan = plan(&source, format, submit.part_size)?;
    let key = match &submit.idempotency_key {
        Some(key) => key.clone(),
        None => derived_key(submit.name, submit.reference_id, submit.path, submit.part_size)?,
    };
    let start = (submit.options)(Start::open(submit.name, submit.reference_id).idempotency_key(key));
    let answer = client.submit_text(&start)?;
    let started: Envelope = serde_json::from_str(&answer).context("the server's answer to the start")?;
    let id = started
        .processes
        .first()
        .map(|p| p.async_process_id.clone())
        .context("the server answered the start without its process")?;
    let held = client.parts(&id)?;
    if !held.open {
        eprintln!("async-engine: process {id} was sent and closed before ({}): nothing to send", held.status);
        return Ok(answer);
    }
    let count = plan.ranges.len();
    if let Some(extra) = held.parts.iter().find(|p| p.part as usize > count) {
        bail!(
            "process {id} holds part {} but this file makes {count} part(s) (another --part-size or file \
             under the same --idempotency-key?): cancel it, or use another key",
            extra.part
        );
    }
    let holds = |n: usize| held.parts.iter().any(|p| p.part as usize == n + 1 && p.bytes == plan.bytes(n));
    let resumed = (0..count).filter(|&n| holds(n)).count();
    if resumed > 0 {
        eprintln!("async-engine: resuming process {id}: {resumed} of {count} part(s) are in");
    }
    let bar = progress(source.len()?)?;
    for n in 0..count {
        let (from, to) = plan.ranges[n];
        if holds(n) {
            bar.inc(to - from);
            continue;
        }
        let body = Cursor::new(plan.header.clone()).chain(source.range(from, to)?);
        let body: Box<dyn Read + Send> =
            if bar.is_hidden() { Box::new(body) } else { Box::new(bar.wrap_read(body)) };
        let part = u32::try_from(n + 1)?;
        client.put_part(&id, part, format, body).with_context(|| {
            format!("part {part} of {count} of process {id}: run the same command again to resume")
        })?;
    }
    bar.finish_and_clear();
    Ok(client.close_text(&id)?)
}

/// A bar of the bytes sent, in a terminal only.
pub(crate) fn progress(total: u64) -> anyhow::Result<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return Ok(ProgressBar::hidden());
    }
    Ok(ProgressBar::new(total).with_style(
        ProgressStyle::with_template("sending {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .context("progress bar template")?
            .progress_chars("=> "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(format: UploadFormat, text: &str, size: u64) -> Vec<String> {
        let source = Source::Memory(Arc::new(text.as_bytes().to_vec()));
        let plan = plan(&source, format, size).unwrap();
        let header = String::from_utf8(plan.header.clone()).unwrap();
        plan.ranges
            .iter()
            .enumerate()
            .map(|(n, &(from, to))| {
                let part = format!("{header}{}", &text[from as usize..to as usize]);
                assert_eq!(part.len() as u64, plan.bytes(n));
                part
            })
            .collect()
    }

    #[test]
    fn ndjson_is_cut_at_line_ends() {
        assert_eq!(cut(UploadFormat::Ndjson, "1\n22\n333\n4", 3), ["1\n22\n", "333\n", "4"]);
        assert_eq!(cut(UploadFormat::Ndjson, "1\n2\n", 100), ["1\n2\n"]);
        assert!(cut(UploadFormat::Ndjson, "", 100).is_empty());
    }

    #[test]
    fn csv_is_cut_at_record_ends_each_part_with_the_header() {
        let text = "\u{feff}a,b\r\n1,\"two\nlines\"\r\n3,4\r\n5,6\r\n";
        assert_eq!(
            cut(UploadFormat::Csv, text, 10),
            ["\u{feff}a,b\r\n1,\"two\nlines\"\r\n", "\u{feff}a,b\r\n3,4\r\n5,6\r\n"]
        );
        assert!(cut(UploadFormat::Csv, "a,b\n", 10).is_empty(), "a header alone: no part");
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("500kb"), Ok(500 << 10));
        for bad in ["", "0", "M", "12X", "-1", "99999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
