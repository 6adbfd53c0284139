//! What a start may carry: values nested deeper than the documented limit are refused before
//! anything is stored, on both backends.

use serde_json::{Value, json};

use super::waiting::definitions;
use super::*;

/// `levels` arrays, one inside the other, written as text (serde_json could not build it).
fn nested(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

fn post_text(server: &TestServer, body: String) -> (u16, Value) {
    let response = server
        .client
        .post(format!("{}/v1/asyncprocesses", server.base))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

on_both_backends! {
    fn items_and_additional_data_nested_past_the_limit_are_refused(db: TestDb) {
        let server = TestServer::start_with(db, definitions(10), ApiConfig::default());
        let start = |items: &str, additional: &str| {
            format!(r#"{{"asyncProcessName":"Q","referenceId":"deep","items":[1,{items}],"additionalData":{{"a":{additional}}}}}"#)
        };
        for (body, named) in [
            (start(&nested(100_000), "1"), "item 1"),
            (start(&nested(65), "1"), "item 1"),
            (start("2", &nested(64)), "additionalData"),
        ] {
            let (status, answer) = post_text(&server, body);
            assert_eq!(status, 400, "{answer}");
            let message = answer["technicalMessage"].as_str().unwrap_or_default();
            assert!(message.contains(named) && message.contains("64"), "{message}");
        }
        // Nothing was stored: the tenant's list is still readable and empty.
        let (status, list) = server.get("/v1/asyncprocesses");
        assert_eq!(status, 202, "{list}");
        assert_eq!(list["AsyncProcessStatus"], json!([]));

        // At the limit: stored and served back as sent.
        let (status, answer) = post_text(&server, start(&nested(64), &nested(63)));
        assert_eq!(status, 202, "{answer}");
        let (status, record) = server.get("/v1/asyncprocesses/deep");
        assert_eq!(status, 202, "{record}");
    }
}
