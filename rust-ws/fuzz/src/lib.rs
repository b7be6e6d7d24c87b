//! Oracles for fuzzing rust-ws's message path (rust-ws/src/protocol.rs), shared by the libFuzzer target
//! (fuzz_targets/protocol.rs) and the differential classifier (src/bin/classify.rs).
//!
//! Twin: python-ws/fuzz/twins.py (the same classification and spec model for python-ws).
//!
//! Three things live here:
//! - [`handle`]: what connection.rs does with one text message (parse, validate, serialise the
//!   reply or the error), returning the payload it would send.
//! - [`spec`]: PROTOCOL.md §3's check order written a second time, as a flat list of rules over
//!   the parsed JSON, independent of protocol.rs's code. The fuzz target asserts the server agrees.
//! - [`classify`]: the server's answer reduced to what both twins must agree on (error code, the
//!   field that starts the detail, or the accepted fields), as one JSON object. python-ws's
//!   harness computes the same object, so a difference between the twins is a string compare.

use serde_json::{json, Map, Value};

/// rust-ws's protocol module, compiled from rust-ws's own source file (see Cargo.toml for why
/// not through the crate).
#[path = "../../src/protocol.rs"]
pub mod protocol;

use protocol::{Kind, ProtocolError};

/// The fields whose name may start an `invalid_message` detail, in the protocol's order.
pub const FIELDS: [&str; 6] = ["message", "type", "user", "text", "ref", "sent_at"];

/// Fixed reply header values: the extremes, so their serialisation is checked too.
pub const FROM: u64 = u64::MAX;
pub const SEQ: u64 = u64::MAX;
pub const SERVER_TS: u64 = u64::MAX - 1;

/// The accepted message's fields, as they go into the reply.
pub struct Accepted {
    pub kind: Kind,
    pub user: String,
    pub text: String,
    pub reference: Option<String>,
    pub sent_at: Option<u64>,
}

/// rust-ws's answer to one text message: the payload it sends and what it decided.
pub struct Handled {
    /// The text parsed as JSON, when it was JSON.
    pub value: Option<Value>,
    pub payload: String,
    pub outcome: Result<Accepted, ProtocolError>,
}

/// The message path of connection.rs for a text frame: parse, validate, then either the reply
/// (reply_head + finish_reply) or the error payload.
pub fn handle(text: &str) -> Handled {
    let value = match protocol::parse(text) {
        Ok(v) => v,
        Err(e) => {
            return Handled {
                value: None,
                payload: protocol::error_payload(&e),
                outcome: Err(e),
            }
        }
    };
    let (payload, outcome) = match protocol::validate(&value) {
        Ok(m) => (
            protocol::finish_reply(protocol::reply_head(&m, FROM), SEQ, SERVER_TS),
            Ok(Accepted {
                kind: m.kind,
                user: m.user.to_owned(),
                text: m.text.to_owned(),
                reference: m.reference.map(str::to_owned),
                sent_at: m.sent_at,
            }),
        ),
        Err(e) => (protocol::error_payload(&e), Err(e)),
    };
    Handled {
        value: Some(value),
        payload,
        outcome,
    }
}

/// The field an error's detail starts with (`user` for `user: must be ...`), for
/// `invalid_message` only; PROTOCOL.md fixes no prefix for the other codes.
pub fn detail_field(err: &ProtocolError) -> Option<&'static str> {
    if err.code != "invalid_message" {
        return None;
    }
    let (head, _) = err.detail.split_once(": ")?;
    FIELDS.iter().copied().find(|f| *f == head)
}

/// What the twins must agree on, as one JSON object:
/// `{"code":"ok","field":null,"msg":{type,user,text,ref,sent_at}}` or
/// `{"code":"invalid_message","field":"user","msg":null}`.
pub fn classify(text: &str) -> Value {
    match handle(text).outcome {
        Ok(a) => json!({
            "code": "ok",
            "field": null,
            "msg": {
                "type": match a.kind { Kind::Broadcast => "broadcast", Kind::Echo => "echo" },
                "user": a.user,
                "text": a.text,
                "ref": a.reference,
                "sent_at": a.sent_at,
            },
        }),
        Err(e) => json!({"code": e.code, "field": detail_field(&e), "msg": null}),
    }
}

/// What PROTOCOL.md §3 says the answer must be, given the text parsed as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Ok,
    /// `invalid_message` whose detail starts with this field name and `": "`.
    Invalid(&'static str),
    UnknownType,
    /// The protocol is ambiguous for this input as serde_json represents it (see [`spec`]).
    Either,
}

/// PROTOCOL.md §3, written as its table reads: the first rule that fails answers.
pub fn spec(v: &Value) -> Expected {
    let Some(o) = v.as_object() else {
        return Expected::Invalid("message");
    };
    let Some(Value::String(kind)) = o.get("type") else {
        return Expected::Invalid("type");
    };
    if kind != "broadcast" && kind != "echo" {
        return Expected::UnknownType;
    }
    if !string_of(o, "user", 1, 32) {
        return Expected::Invalid("user");
    }
    if !string_of(o, "text", 1, 4096) {
        return Expected::Invalid("text");
    }
    if !(absent(o, "ref") || string_of(o, "ref", 0, 64)) {
        return Expected::Invalid("ref");
    }
    if !absent(o, "sent_at") {
        match o.get("sent_at") {
            Some(Value::Number(n)) => {
                // serde_json stores `-0` as the float -0.0, like `-0.0` and `-0e0`; the first is
                // the integer 0, the others fractions, and the parsed value cannot tell them
                // apart. The differential with python-ws (whose parser keeps `-0` an int) is what
                // checks that case.
                if n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()) {
                    return Expected::Either;
                }
                // An integer: serde_json keeps integers that fit 64 bits as u64/i64 and turns
                // anything with a fraction or an exponent (or beyond 64 bits) into f64.
                let int = n.is_u64() || n.is_i64();
                let in_range = n.as_u64().is_some_and(|x| x <= protocol::MAX_SENT_AT);
                if !(int && in_range) {
                    return Expected::Invalid("sent_at");
                }
            }
            _ => return Expected::Invalid("sent_at"),
        }
    }
    Expected::Ok
}

fn absent(o: &Map<String, Value>, key: &str) -> bool {
    matches!(o.get(key), None | Some(Value::Null))
}

fn string_of(o: &Map<String, Value>, key: &str, min: usize, max: usize) -> bool {
    match o.get(key) {
        Some(Value::String(s)) => (min..=max).contains(&s.chars().count()),
        _ => false,
    }
}
