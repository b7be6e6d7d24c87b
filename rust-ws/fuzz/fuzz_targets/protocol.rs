//! libFuzzer target: rust-ws's message path (rust-ws/src/protocol.rs: parse, validate,
//! serialise) on arbitrary text, with oracles beyond "does not crash". Run by bench/fuzz.sh; see
//! bench/README.md, "Fuzzing".
//!
//! Twin: python-ws/fuzz/fuzz_protocol.py (the atheris target for python-ws).
//!
//! For every UTF-8 input (a text frame is UTF-8 or the WebSocket library closes it with 1007
//! before protocol code runs) it checks:
//! - the answer is the one PROTOCOL.md §3's rules give (rust_ws_fuzz::spec, written separately);
//! - an accepted message's reply is one JSON object with exactly the reply's keys, holding the
//!   fields as sent (ref and sent_at null when absent) and the header values given;
//! - an error's payload is one JSON object {type:"error", code, detail} with a non-empty detail
//!   whose prefix follows §3 and which never reflects more than a bounded amount of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rust_ws_fuzz::{detail_field, handle, spec, Expected, FROM, SEQ, SERVER_TS};
use serde_json::Value;

/// An error detail longer than this reflects the input unbounded (unknown_type shows at most 64
/// characters of the type, 10 bytes each when escaped; serde_json's messages are short).
const MAX_DETAIL_BYTES: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let h = handle(text);
    let back: Value = serde_json::from_str(&h.payload)
        .unwrap_or_else(|e| panic!("payload is not JSON ({e}): {:?}", h.payload));
    let back = back.as_object().expect("payload is a JSON object");

    let Some(value) = &h.value else {
        // Not JSON: the only possible answer is invalid_json.
        let e = h
            .outcome
            .as_ref()
            .err()
            .expect("unparsable text was accepted");
        assert_eq!(e.code, "invalid_json");
        check_error(back, e.code, &e.detail);
        return;
    };
    let expected = spec(value);
    match &h.outcome {
        Ok(a) => {
            assert!(
                matches!(expected, Expected::Ok | Expected::Either),
                "accepted, but PROTOCOL.md §3 says {expected:?}: {text:?}"
            );
            let keys: Vec<&str> = back.keys().map(String::as_str).collect();
            let mut want = vec![
                "from",
                "ref",
                "sent_at",
                "seq",
                "server_ts",
                "text",
                "type",
                "user",
            ];
            want.sort_unstable();
            let mut got = keys.clone();
            got.sort_unstable();
            assert_eq!(got, want, "reply keys");
            let sent = value.as_object().expect("accepted a non-object");
            let null = Value::Null;
            assert_eq!(back["type"], sent["type"]);
            assert_eq!(back["user"], sent["user"]);
            assert_eq!(back["text"], sent["text"]);
            assert_eq!(back["ref"], *sent.get("ref").unwrap_or(&null));
            assert_eq!(back["user"].as_str(), Some(a.user.as_str()));
            // sent_at as sent: numerically (`-0` parses to -0.0 and is sent back as 0).
            match sent.get("sent_at").unwrap_or(&null) {
                Value::Null => assert!(back["sent_at"].is_null() && a.sent_at.is_none()),
                v => {
                    assert_eq!(back["sent_at"].as_u64(), a.sent_at, "sent_at round trip");
                    assert_eq!(back["sent_at"].as_f64(), v.as_f64(), "sent_at as sent");
                }
            }
            assert_eq!(back["from"], Value::String(FROM.to_string()));
            assert_eq!(back["seq"].as_u64(), Some(SEQ));
            assert_eq!(back["server_ts"].as_u64(), Some(SERVER_TS));
        }
        Err(e) => {
            check_error(back, e.code, &e.detail);
            let got = match (e.code, detail_field(e)) {
                ("invalid_message", Some(field)) => Expected::Invalid(field),
                ("unknown_type", None) => Expected::UnknownType,
                _ => panic!(
                    "error {:?} / {:?} is not one of §3's answers",
                    e.code, e.detail
                ),
            };
            assert!(
                expected == got || expected == Expected::Either,
                "answered {got:?} ({:?}), PROTOCOL.md §3 says {expected:?}: {text:?}",
                e.detail
            );
            if got == Expected::UnknownType {
                // The detail names the type (the first 64 characters of it).
                let kind = value["type"]
                    .as_str()
                    .expect("unknown_type for a non-string");
                let shown: String = kind.chars().take(64).collect();
                let plain = shown
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
                if plain {
                    assert!(e.detail.contains(&shown), "detail does not name the type");
                }
            }
        }
    }
});

/// The error payload as PROTOCOL.md §3 shows it: exactly {type, code, detail}.
fn check_error(back: &serde_json::Map<String, Value>, code: &str, detail: &str) {
    assert_eq!(back.len(), 3, "error keys: {back:?}");
    assert_eq!(back["type"], "error");
    assert_eq!(back["code"], code);
    assert_eq!(back["detail"], detail);
    assert!(!detail.is_empty(), "empty detail");
    assert!(
        detail.len() <= MAX_DETAIL_BYTES,
        "detail of {} bytes reflects the input",
        detail.len()
    );
}
