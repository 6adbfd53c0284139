//! A rendered status answer: its bytes, its ETag and whether it can still change. Plain
//! reads, long-polls and event streams all send these.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::ETAG;
use actix_web::web::Bytes;

use crate::envelope::Envelope;

/// A status answer ready to send: the same lookup at the same state gives the same bytes, so
/// the same ETag, on every node.
#[derive(Debug)]
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
