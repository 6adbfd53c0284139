//! Uploads in parts (issue 15): a process started open takes its items in numbered parts,
//! each replaceable until the close fixes their order and starts step 0.

use crate::ids::TenantId;
use crate::repository::RepositoryError;
use crate::status::Status;

/// Parts are numbered 1 to this, like S3's multipart uploads.
pub const MAX_PART_NUMBER: u32 = 10_000;

/// One part to store: `items` replace whatever part `part` held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartUpload {
    pub tenant: TenantId,
    pub async_process_id: String,
    /// 1 to [`MAX_PART_NUMBER`].
    pub part: u32,
    /// The size of the upload the items came from, as received.
    pub bytes: u64,
    pub now_micros: i64,
}

/// A part as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub part: u32,
    pub items: u64,
    pub bytes: u64,
    pub received_at_micros: i64,
}

/// What [`crate::ProcessStore::put_part`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReceipt {
    pub info: PartInfo,
    /// The part had been put before: its earlier items are gone.
    pub replaced: bool,
}

/// An open process's parts so far, in part order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    pub async_process_id: String,
    /// Still taking parts; `false` once closed, cancelled or expired (then `parts` is empty:
    /// the items are the process's own).
    pub open: bool,
    pub status: Status,
    pub parts: Vec<PartInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error("no process has the asyncProcessId '{0}'")]
    NotFound(String),
    #[error(
        "process '{id}' takes no parts: it is {status} and not open (only a process started with \"open\": true takes parts, until it is closed or cancelled)"
    )]
    NotOpen { id: String, status: Status },
    #[error("process '{0}' was imported as a record of history; the engine does not run it")]
    NotRunnable(String),
    /// Reading the part's items failed (the caller's upload, already checked, could not be
    /// read back): nothing was stored.
    #[error("{0}")]
    Items(String),
    #[error(transparent)]
    Storage(#[from] RepositoryError),
}

/// The message an open process shows while it waits for its parts.
pub fn open_message(parts: u64, items: u64) -> String {
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "Waiting for items: open for parts until closed ({} so far, {})",
        plural(parts, "part", "parts"),
        plural(items, "item", "items")
    )
}

/// The part number in a path, checked.
pub fn part_number(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n @ 1..=MAX_PART_NUMBER) => Ok(n),
        _ => Err(format!("a part number is a whole number from 1 to {MAX_PART_NUMBER}, not '{text}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_message_counts_parts_and_items() {
        assert_eq!(
            open_message(0, 0),
            "Waiting for items: open for parts until closed (0 parts so far, 0 items)"
        );
        assert_eq!(
            open_message(1, 1),
            "Waiting for items: open for parts until closed (1 part so far, 1 item)"
        );
    }

    #[test]
    fn part_numbers_run_from_1_to_the_most() {
        assert_eq!(part_number("1"), Ok(1));
        assert_eq!(part_number("10000"), Ok(10_000));
        for bad in ["0", "10001", "-1", "x", "", "1.0"] {
            assert!(part_number(bad).is_err(), "{bad}");
        }
    }
}
