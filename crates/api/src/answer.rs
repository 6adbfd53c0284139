//! A rendered status answer: its bytes, its ETag and whether it can still change. Plain
//! reads, long-polls and event streams all send these; the last ones rendered are held, each
//! with the change marks it was read at, to answer an unchanged lookup again without reading it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::ETAG;
use actix_web::web::Bytes;

use async_engine_domain::TenantId;

use crate::envelope::Envelope;
use crate::params::StatusRequest;

/// A status answer ready to send: the same lookup at the same state gives the same bytes, so
/// the same ETag, on every node.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// `None` on an error answer.
    pub etag: Option<String>,
    /// Every process in the answer is in a final status: nothing will change any more.
    pub finished: bool,
}

impl Answer {
    pub fn input_error(text: &str) -> Self {
        let body = serde_json::to_vec(&Envelope {
            code: 400,
            status_message: "Input Error",
            technical_message: Some(text),
            records: Vec::new(),
        })
        .unwrap_or_default();
        Answer { status: StatusCode::BAD_REQUEST, body: body.into(), etag: None, finished: false }
    }

    /// The client holds this representation already (`*` holds any).
    pub fn matches(&self, held: &[String]) -> bool {
        self.etag.as_ref().is_some_and(|etag| held.iter().any(|tag| tag == etag || tag == "*"))
    }

    pub fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        response.content_type("application/json");
        if let Some(etag) = &self.etag {
            response.insert_header((ETAG, etag.as_str()));
        }
        response.body(self.body.clone())
    }

    pub fn not_modified(&self) -> HttpResponse {
        let mut response = HttpResponse::NotModified();
        if let Some(etag) = &self.etag {
            response.insert_header((ETAG, etag.as_str()));
        }
        response.finish()
    }
}

/// A held answer sent without reading storage, and how long ago its marks were last found
/// current: the response's `Age` (RFC 9111, whole seconds).
pub struct Recent {
    pub answer: Answer,
    pub age: Duration,
}

/// Answers held at most, and the largest body held: enough for every lookup that callers poll
/// at once, bounded in memory (at most 256 MiB, and far less for ordinary answers).
const HELD_ANSWERS: usize = 1024;
const LARGEST_HELD: usize = 256 * 1024;

/// The last answers rendered, by tenant and request, each with the change marks (the rows and
/// versions of the processes it lists) read before it was. Marks equal to the current ones mean
/// nothing it shows has changed since, on any node: the answer can be sent again as it is.
#[derive(Default)]
pub struct AnswerCache {
    held: Mutex<Held>,
}

struct HeldAnswer {
    marks: Vec<(i64, i64)>,
    answer: Answer,
    /// When the latest read that found `marks` current began: the answer showed the stored
    /// state at least then.
    checked: Instant,
    /// The cache's clock at its latest use.
    used: u64,
}

#[derive(Default)]
struct Held {
    entries: HashMap<(TenantId, StatusRequest), HeldAnswer>,
    /// Bumped by every use: the entry with the smallest is the least recently used.
    clock: u64,
}

impl AnswerCache {
    /// The answer held for this lookup, if it was read at exactly these marks, read from
    /// `asked` on.
    pub fn get(
        &self,
        tenant: &TenantId,
        request: &StatusRequest,
        marks: &[(i64, i64)],
        asked: Instant,
    ) -> Option<Answer> {
        let mut held = self.held.lock().ok()?;
        let now = held.clock + 1;
        held.clock = now;
        let entry = held.entries.get_mut(&(tenant.clone(), request.clone()))?;
        if entry.marks.as_slice() != marks {
            return None;
        }
        entry.used = now;
        entry.checked = entry.checked.max(asked);
        Some(entry.answer.clone())
    }

    /// The answer held for this lookup if its marks were found current at most `within` ago,
    /// with no read at all: for a caller that accepts an answer that old (`Cache-Control:
    /// max-age`).
    pub fn recent(&self, tenant: &TenantId, request: &StatusRequest, within: Duration) -> Option<Recent> {
        let mut held = self.held.lock().ok()?;
        let now = held.clock + 1;
        held.clock = now;
        let entry = held.entries.get_mut(&(tenant.clone(), request.clone()))?;
        let age = entry.checked.elapsed();
        if age > within {
            return None;
        }
        entry.used = now;
        Some(Recent { answer: entry.answer.clone(), age })
    }

    /// Holds `answer`, read after `marks` (whose read began at `asked`), for the next read of
    /// this lookup.
    pub fn put(
        &self,
        tenant: &TenantId,
        request: &StatusRequest,
        marks: Vec<(i64, i64)>,
        asked: Instant,
        answer: &Answer,
    ) {
        if answer.etag.is_none() || answer.body.len() > LARGEST_HELD {
            return;
        }
        let Ok(mut held) = self.held.lock() else { return };
        let key = (tenant.clone(), request.clone());
        if held.entries.len() >= HELD_ANSWERS && !held.entries.contains_key(&key) {
            let oldest = held.entries.iter().min_by_key(|(_, entry)| entry.used).map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                held.entries.remove(&oldest);
            }
        }
        let now = held.clock + 1;
        held.clock = now;
        held.entries.insert(key, HeldAnswer { marks, answer: answer.clone(), checked: asked, used: now });
    }
}

#[cfg(test)]
mod tests {
    use async_engine_domain::{IdKind, LookupId};

    use super::*;
    use crate::envelope::Shape;

    fn request(id: &str) -> StatusRequest {
        StatusRequest { id: LookupId::new(id).unwrap(), kind: IdKind::Either, shape: Shape::default() }
    }

    fn answer(body: &str) -> Answer {
        Answer {
            status: StatusCode::ACCEPTED,
            body: body.to_owned().into(),
            etag: Some(format!("\"{body}\"")),
            finished: false,
        }
    }

    #[test]
    fn an_answer_is_given_again_only_at_the_marks_it_was_read_at_and_only_to_its_tenant() {
        let cache = AnswerCache::default();
        let at = Instant::now();
        let (mine, theirs) = (TenantId::default_tenant(), TenantId::new("other").unwrap());
        cache.put(&mine, &request("p"), vec![(1, 7)], at, &answer("a"));
        assert_eq!(cache.get(&mine, &request("p"), &[(1, 7)], at).unwrap().body, "a");
        assert!(cache.get(&mine, &request("p"), &[(1, 8)], at).is_none(), "changed since");
        assert!(cache.get(&mine, &request("p"), &[(1, 7), (2, 0)], at).is_none(), "one more matches");
        assert!(cache.get(&theirs, &request("p"), &[(1, 7)], at).is_none());
        assert!(cache.get(&mine, &request("q"), &[(1, 7)], at).is_none());
        // Error answers and very large ones are not held.
        cache.put(&mine, &request("e"), vec![(3, 0)], at, &Answer::input_error("no"));
        assert!(cache.get(&mine, &request("e"), &[(3, 0)], at).is_none());
        cache.put(&mine, &request("big"), vec![(4, 0)], at, &answer(&"x".repeat(LARGEST_HELD + 1)));
        assert!(cache.get(&mine, &request("big"), &[(4, 0)], at).is_none());
    }

    #[test]
    fn the_least_recently_used_answer_makes_room() {
        let cache = AnswerCache::default();
        let at = Instant::now();
        let tenant = TenantId::default_tenant();
        for n in 0..HELD_ANSWERS {
            cache.put(&tenant, &request(&format!("p{n}")), vec![(1, 0)], at, &answer("a"));
        }
        // p0 was used last of all, so p1 is the one to go.
        assert!(cache.get(&tenant, &request("p0"), &[(1, 0)], at).is_some());
        cache.put(&tenant, &request("new"), vec![(1, 0)], at, &answer("b"));
        assert!(cache.get(&tenant, &request("p0"), &[(1, 0)], at).is_some());
        assert!(cache.get(&tenant, &request("p1"), &[(1, 0)], at).is_none());
        assert!(cache.get(&tenant, &request("new"), &[(1, 0)], at).is_some());
    }

    #[test]
    fn an_answer_is_recent_for_as_long_as_its_marks_were_last_found_current() {
        let cache = AnswerCache::default();
        let tenant = TenantId::default_tenant();
        let long_ago = Instant::now().checked_sub(Duration::from_secs(10)).unwrap();
        assert!(cache.recent(&tenant, &request("p"), Duration::from_secs(60)).is_none(), "nothing held");
        cache.put(&tenant, &request("p"), vec![(1, 0)], long_ago, &answer("a"));
        assert!(cache.recent(&tenant, &request("p"), Duration::from_secs(5)).is_none(), "too old");
        let recent = cache.recent(&tenant, &request("p"), Duration::from_secs(60)).unwrap();
        assert_eq!(recent.answer.body, "a");
        assert!(recent.age >= Duration::from_secs(10));
        // A read that finds the marks current makes the answer recent again; one that finds
        // them moved, or an older read finishing later, does not.
        assert!(cache.get(&tenant, &request("p"), &[(1, 1)], Instant::now()).is_none());
        assert!(cache.recent(&tenant, &request("p"), Duration::from_secs(5)).is_none());
        cache.get(&tenant, &request("p"), &[(1, 0)], Instant::now()).unwrap();
        let recent = cache.recent(&tenant, &request("p"), Duration::from_secs(5)).unwrap();
        assert!(recent.age < Duration::from_secs(5));
        cache.get(&tenant, &request("p"), &[(1, 0)], long_ago).unwrap();
        assert!(cache.recent(&tenant, &request("p"), Duration::from_secs(5)).is_some());
        assert!(
            cache.recent(&TenantId::new("other").unwrap(), &request("p"), Duration::from_secs(60)).is_none()
        );
    }
}
