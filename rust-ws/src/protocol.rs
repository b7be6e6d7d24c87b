//! Protocol v1 messages: parsing and validating client text, serialising server payloads.
//!
//! Twin: python-ws/python_ws/protocol.py.
//!
//! Everything here is pure and synchronous, so the handling timer can wrap it exactly and unit
//! tests need no socket.
//!
//! Validation is explicit code over the parsed `serde_json::Value`, not a `validator` derive on a
//! typed message, because PROTOCOL.md §3 asks for answers such a derive cannot give:
//! - *Check order.* The first failure in the order `type`, `user`, `text`, `ref`, `sent_at`
//!   answers. A typed `#[derive(Deserialize, Validate)]` message fails in serde on the first
//!   wrong JSON type in the *document's* key order, before any `validator` rule has run: for
//!   `{"ref":1,"user":""}` serde reports `ref` while the protocol's answer is `user`. And
//!   `validator::ValidationErrors` is a `HashMap` keyed by field, so even its own failures come
//!   back unordered and need a table of the protocol's order to pick the first.
//! - *Wrong JSON types get the field's `detail`.* serde_json's error for `"sent_at":true` is
//!   `invalid type: boolean ..., expected u64 at line 1 column N`: it does not start with
//!   `sent_at: `, and a missing or `null` required field reads differently again. Mapping those
//!   back to a field would mean parsing serde's message text.
//! - *`sent_at` 1.0 is invalid*, `1e3` too: serde_json keeps any number written with a fraction
//!   or exponent as f64, and `Value::as_u64` is `None` for it, which is exactly "an integer".
//!   The one integer literal serde_json also reads as f64 is `-0`; `parse` turns it into 0.
//!
//! What a `validator` derive would add (character-counted lengths and a range) is one
//! comparison per field here, so the crate is not used.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The largest `sent_at` a client may send: 2^53 − 1, the largest integer a JSON number in
/// JavaScript holds exactly.
pub const MAX_SENT_AT: u64 = 9_007_199_254_740_991;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Broadcast,
    Echo,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Broadcast => "broadcast",
            Kind::Echo => "echo",
        }
    }
}

/// A valid client message, borrowing its strings from the parsed JSON.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientMessage<'a> {
    pub kind: Kind,
    pub user: &'a str,
    pub text: &'a str,
    pub reference: Option<&'a str>,
    pub sent_at: Option<u64>,
}

/// An error answer: `code` and a human-readable `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: &'static str,
    pub detail: String,
}

impl ProtocolError {
    fn invalid(detail: impl Into<String>) -> Self {
        ProtocolError {
            code: "invalid_message",
            detail: detail.into(),
        }
    }
}

const USER_RULE: &str = "user: must be a string of 1-32 characters";
const TEXT_RULE: &str = "text: must be a string of 1-4096 characters";
const REF_RULE: &str = "ref: must be null or a string of at most 64 characters";
const SENT_AT_RULE: &str = "sent_at: must be null or an integer from 0 to 9007199254740991";

/// Whether a client may send `code` in a close frame (PROTOCOL.md §3, RFC 6455 §7.4): 1000-1003,
/// 1007-1014 and 3000-4999. Any other code is answered with 1002 and counted as a protocol error.
pub fn close_code_may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses client text into JSON. Kept apart from [`validate`] because the message borrows from
/// the returned value.
pub fn parse(text: &str) -> Result<Value, ProtocolError> {
    let mut value = serde_json::from_str::<Value>(text).map_err(|e| ProtocolError {
        code: "invalid_json",
        detail: e.to_string(),
    })?;
    minus_zero_sent_at_is_zero(&mut value, text);
    Ok(value)
}

/// PROTOCOL.md §3: the integer literal `-0` is a valid `sent_at` (0), `-0.0` is not. serde_json
/// reads both as the float -0.0, so only the literal tells them apart: when `sent_at` came out as
/// -0.0 (rare), read the raw text of the top-level `sent_at` again and turn a `-0` into 0. A map
/// keeps the last of repeated keys, as `Value` does.
fn minus_zero_sent_at_is_zero(value: &mut Value, text: &str) {
    let Some(slot) = value.as_object_mut().and_then(|o| o.get_mut("sent_at")) else {
        return;
    };
    let minus_zero = slot.is_f64()
        && slot
            .as_f64()
            .is_some_and(|f| f == 0.0 && f.is_sign_negative());
    if !minus_zero {
        return;
    }
    let raw = serde_json::from_str::<std::collections::HashMap<String, &RawValue>>(text);
    if raw.is_ok_and(|fields| {
        fields
            .get("sent_at")
            .is_some_and(|r| r.get().trim() == "-0")
    }) {
        *slot = Value::from(0u64);
    }
}

/// Applies the protocol's checks in its order; the first failure answers.
pub fn validate(value: &Value) -> Result<ClientMessage<'_>, ProtocolError> {
    let obj = value
        .as_object()
        .ok_or_else(|| ProtocolError::invalid("message: must be a JSON object"))?;
    let kind = match obj.get("type") {
        Some(Value::String(t)) if t == "broadcast" => Kind::Broadcast,
        Some(Value::String(t)) if t == "echo" => Kind::Echo,
        Some(Value::String(t)) => {
            // Name the type, but don't reflect an arbitrarily long string back.
            let shown: String = t.chars().take(64).collect();
            return Err(ProtocolError {
                code: "unknown_type",
                detail: format!(
                    "unknown message type {shown:?}: expected \"broadcast\" or \"echo\""
                ),
            });
        }
        _ => {
            return Err(ProtocolError::invalid(
                "type: must be a string, \"broadcast\" or \"echo\"",
            ))
        }
    };
    // Each line fails with its field's rule, in the protocol's field order.
    let user = string(obj, "user", 1, 32)
        .flatten()
        .ok_or_else(|| ProtocolError::invalid(USER_RULE))?;
    let text = string(obj, "text", 1, 4096)
        .flatten()
        .ok_or_else(|| ProtocolError::invalid(TEXT_RULE))?;
    let reference = string(obj, "ref", 0, 64).ok_or_else(|| ProtocolError::invalid(REF_RULE))?;
    let sent_at = match obj.get("sent_at") {
        None | Some(Value::Null) => None,
        // as_u64 is None for negatives and for any number written with a fraction or exponent
        // (serde_json keeps those as f64), which is what "an integer" means here. Booleans and
        // strings are not numbers at all.
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .filter(|&v| v <= MAX_SENT_AT)
                .ok_or_else(|| ProtocolError::invalid(SENT_AT_RULE))?,
        ),
        Some(_) => return Err(ProtocolError::invalid(SENT_AT_RULE)),
    };
    Ok(ClientMessage {
        kind,
        user,
        text,
        reference,
        sent_at,
    })
}

/// A string field of `min..=max` characters (Unicode scalar values, not bytes).
///
/// `Some(None)`: absent or `null`, which only an optional field accepts. `Some(Some(s))`: valid.
/// `None`: present but not a string, or a string of the wrong length.
fn string<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    min: usize,
    max: usize,
) -> Option<Option<&'a str>> {
    match obj.get(key) {
        None | Some(Value::Null) => Some(None),
        // Count at most max + 1 characters: a 64 KiB text is not walked to the end to reject it.
        Some(Value::String(s)) => {
            let chars = s.chars().take(max + 1).count();
            (min..=max).contains(&chars).then_some(Some(s.as_str()))
        }
        Some(_) => None,
    }
}

/// A conn_id: the decimal counter, after `NODE_ID:` with a broker (PROTOCOL.md §3). Serialised as
/// a JSON string without a temporary String.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId<'a> {
    pub node: Option<&'a str>,
    pub n: u64,
}

impl From<u64> for ConnId<'static> {
    fn from(n: u64) -> Self {
        ConnId { node: None, n }
    }
}

impl std::fmt::Display for ConnId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(node) = self.node {
            write!(f, "{node}:")?;
        }
        write!(f, "{}", self.n)
    }
}

impl Serialize for ConnId<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.node {
            None => s.collect_str(&self.n),
            Some(_) => s.collect_str(self),
        }
    }
}

#[derive(Serialize)]
struct ReplyHead<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    from: ConnId<'a>,
    user: &'a str,
    text: &'a str,
    #[serde(rename = "ref")]
    reference: Option<&'a str>,
    sent_at: Option<u64>,
}

/// A broadcast or echo reply serialised up to, not including, `seq`: the room assigns `seq` under
/// its lock, so [`finish_reply`] appends it there without re-serialising the rest.
pub fn reply_head<'a>(msg: &ClientMessage<'_>, from: impl Into<ConnId<'a>>) -> Vec<u8> {
    let head = ReplyHead {
        kind: msg.kind.as_str(),
        from: from.into(),
        user: msg.user,
        text: msg.text,
        reference: msg.reference,
        sent_at: msg.sent_at,
    };
    // user + text + ref, worst case 6 bytes per escaped char is rare; this avoids most regrowth.
    let mut out = Vec::with_capacity(128 + msg.user.len() + msg.text.len());
    // Serialising borrowed strs and integers into a Vec cannot fail.
    serde_json::to_writer(&mut out, &head).expect("serialising a reply into memory");
    out.pop(); // the closing '}', re-added by finish_reply
    out
}

/// Completes a [`reply_head`] with `seq` and `server_ts`, giving the final payload text.
pub fn finish_reply(mut head: Vec<u8>, seq: u64, server_ts: u64) -> String {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(head, ",\"seq\":{seq},\"server_ts\":{server_ts}}}");
    // The head came from serde_json and the tail is ASCII, so this is valid UTF-8; a check costs
    // one pass and keeps this function free of `unsafe`.
    String::from_utf8(head).expect("serde_json writes UTF-8")
}

/// A broadcast for the broker (PROTOCOL.md §5): the [`reply_head`] completed up to and including
/// `"seq":` (HEAD), and everything after the number (TAIL). `HEAD + seq + TAIL` is exactly what
/// [`finish_reply`] would give.
pub fn split_reply(mut head: Vec<u8>, server_ts: u64) -> (Vec<u8>, Vec<u8>) {
    head.extend_from_slice(b",\"seq\":");
    let tail = format!(",\"server_ts\":{server_ts}}}").into_bytes();
    (head, tail)
}

#[derive(Serialize)]
struct Welcome<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    conn_id: ConnId<'a>,
    room: &'a str,
    server: &'static str,
    connections: usize,
}

pub const SERVER_NAME: &str = "rust-ws";

pub fn welcome<'a>(conn_id: impl Into<ConnId<'a>>, room: &str, connections: usize) -> String {
    serde_json::to_string(&Welcome {
        kind: "welcome",
        conn_id: conn_id.into(),
        room,
        server: SERVER_NAME,
        connections,
    })
    .expect("serialising a welcome into memory")
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    detail: &'a str,
}

pub fn error_payload(err: &ProtocolError) -> String {
    serde_json::to_string(&ErrorReply {
        kind: "error",
        code: err.code,
        detail: &err.detail,
    })
    .expect("serialising an error into memory")
}

#[derive(Serialize)]
struct BrokerUnavailable<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    detail: &'static str,
    #[serde(rename = "ref")]
    reference: Option<&'a str>,
}

/// The error a broadcast gets when the broker did not confirm it (PROTOCOL.md §3): the one error
/// with a `ref`, the broadcast's as sent (`null` when absent).
pub fn broker_unavailable(reference: Option<&str>) -> String {
    serde_json::to_string(&BrokerUnavailable {
        kind: "error",
        code: "broker_unavailable",
        detail: "broadcast not delivered: the broker is unavailable",
        reference,
    })
    .expect("serialising an error into memory")
}

/// The answer to a binary frame.
pub fn binary_unsupported() -> ProtocolError {
    ProtocolError {
        code: "binary_unsupported",
        detail: "binary frames are not supported; send JSON in text frames".into(),
    }
}

/// A valid room name: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_room(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// (kind, user, text, ref, sent_at), owned.
    type Parsed = (Kind, String, String, Option<String>, Option<u64>);

    fn check(text: &str) -> Result<Parsed, ProtocolError> {
        let v = parse(text)?;
        let m = validate(&v)?;
        Ok((
            m.kind,
            m.user.to_string(),
            m.text.to_string(),
            m.reference.map(str::to_string),
            m.sent_at,
        ))
    }

    fn err(text: &str) -> ProtocolError {
        check(text).expect_err(text)
    }

    #[test]
    fn accepts_valid_messages() {
        let (k, u, t, r, s) = check(
            r#"{"type":"broadcast","user":"ann","text":"hi","ref":"r1","sent_at":1732358400000}"#,
        )
        .unwrap();
        assert_eq!((k, u.as_str(), t.as_str()), (Kind::Broadcast, "ann", "hi"));
        assert_eq!((r.as_deref(), s), (Some("r1"), Some(1_732_358_400_000)));

        let (k, _, _, r, s) =
            check(r#"{"type":"echo","user":"a","text":"b","extra":[1,2]}"#).unwrap();
        assert_eq!((k, r, s), (Kind::Echo, None, None));

        let (_, _, _, r, s) =
            check(r#"{"type":"echo","user":"a","text":"b","ref":null,"sent_at":null}"#).unwrap();
        assert_eq!((r, s), (None, None));
        let (_, _, _, r, s) =
            check(r#"{"type":"echo","user":"a","text":"b","ref":"","sent_at":9007199254740991}"#)
                .unwrap();
        assert_eq!((r.as_deref(), s), (Some(""), Some(MAX_SENT_AT)));
        check(r#"{"type":"echo","user":"a","text":"b","sent_at":0}"#).unwrap();
    }

    #[test]
    fn counts_characters_not_bytes() {
        let user = "é".repeat(32);
        let text = "日".repeat(4096);
        let reference = "😀".repeat(64);
        let msg = json!({"type":"echo","user":user,"text":text,"ref":reference}).to_string();
        check(&msg).unwrap();
        let msg = json!({"type":"echo","user":"é".repeat(33),"text":"x"}).to_string();
        assert!(err(&msg).detail.starts_with("user: "));
        let msg = json!({"type":"echo","user":"u","text":"x".repeat(4097)}).to_string();
        assert!(err(&msg).detail.starts_with("text: "));
        let msg = json!({"type":"echo","user":"u","text":"x","ref":"r".repeat(65)}).to_string();
        assert!(err(&msg).detail.starts_with("ref: "));
    }

    #[test]
    fn errors_follow_the_protocol_order() {
        let e = err("not json");
        assert_eq!(e.code, "invalid_json");
        assert!(!e.detail.is_empty());
        assert_eq!(err("{").code, "invalid_json");

        for text in ["[1]", "\"s\"", "3", "null"] {
            let e = err(text);
            assert_eq!(
                (e.code, e.detail.as_str()),
                ("invalid_message", "message: must be a JSON object")
            );
        }
        for text in [r#"{}"#, r#"{"type":5,"user":""}"#, r#"{"type":null}"#] {
            let e = err(text);
            assert_eq!(e.code, "invalid_message");
            assert!(e.detail.starts_with("type: "), "{}", e.detail);
        }
        let e = err(r#"{"type":"shout","user":""}"#);
        assert_eq!(e.code, "unknown_type");
        assert!(e.detail.contains("shout"));

        // user before text before ref before sent_at, whatever the key order in the JSON.
        let e = err(r#"{"sent_at":-1,"ref":5,"text":"","user":"","type":"echo"}"#);
        assert_eq!(e.detail, "user: must be a string of 1-32 characters");
        let e = err(r#"{"type":"echo","user":"u","text":7,"ref":5,"sent_at":-1}"#);
        assert_eq!(e.detail, "text: must be a string of 1-4096 characters");
        let e = err(r#"{"type":"echo","user":"u","text":"t","ref":5,"sent_at":-1}"#);
        assert!(e.detail.starts_with("ref: "));
        let e = err(r#"{"type":"echo","user":"u","text":"t","sent_at":"1"}"#);
        assert!(e.detail.starts_with("sent_at: "));
        assert_eq!(e.code, "invalid_message");
    }

    #[test]
    fn sent_at_must_be_an_integer_in_range() {
        for bad in [
            "1.5",
            "1.0",
            "1e3",
            "-1",
            "true",
            "\"5\"",
            "9007199254740992",
            "[]",
            "-0.0",
            "-0e0",
            "0.0",
        ] {
            let text = format!(r#"{{"type":"echo","user":"u","text":"t","sent_at":{bad}}}"#);
            let e = err(&text);
            assert!(e.detail.starts_with("sent_at: "), "{bad}: {}", e.detail);
        }
    }

    #[test]
    fn sent_at_minus_zero_is_zero() {
        for text in [
            r#"{"type":"echo","user":"u","text":"t","sent_at":-0}"#,
            r#"{"type":"echo","user":"u","text":"t","sent_at": -0 }"#,
            // The last of repeated keys counts, in the check and in the value alike.
            r#"{"type":"echo","user":"u","text":"t","sent_at":-0.0,"sent_at":-0}"#,
        ] {
            assert_eq!(check(text).expect(text).4, Some(0), "{text}");
        }
        let e = err(r#"{"type":"echo","user":"u","text":"t","sent_at":-0,"sent_at":-0.0}"#);
        assert!(e.detail.starts_with("sent_at: "));
        // A nested -0 is not the message's sent_at.
        let e = err(r#"{"type":"echo","user":"u","text":"t","x":{"sent_at":-0},"sent_at":-0.0}"#);
        assert!(e.detail.starts_with("sent_at: "));
    }

    #[test]
    fn wrong_types_fail_their_field() {
        assert!(err(r#"{"type":"echo","user":1,"text":"t"}"#)
            .detail
            .starts_with("user: "));
        assert!(err(r#"{"type":"echo","text":"t"}"#)
            .detail
            .starts_with("user: "));
        assert!(err(r#"{"type":"echo","user":"u"}"#)
            .detail
            .starts_with("text: "));
        assert!(err(r#"{"type":"echo","user":"u","text":null}"#)
            .detail
            .starts_with("text: "));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert_eq!(err(&deep).code, "invalid_json");
    }

    #[test]
    fn reply_serialises_every_field_once() {
        let v = parse(
            r#"{"type":"broadcast","user":"ann \"q\"","text":"hi\n","ref":"r1","sent_at":5}"#,
        )
        .unwrap();
        let m = validate(&v).unwrap();
        let payload = finish_reply(reply_head(&m, 17), 42, 1_732_358_400_003);
        let back: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            back,
            json!({"type":"broadcast","from":"17","user":"ann \"q\"","text":"hi\n","ref":"r1",
                   "sent_at":5,"seq":42,"server_ts":1_732_358_400_003u64})
        );
        assert!(payload.starts_with(r#"{"type":"broadcast","from":"17","#));

        let v = parse(r#"{"type":"echo","user":"a","text":"b"}"#).unwrap();
        let payload = finish_reply(reply_head(&validate(&v).unwrap(), 3), 0, 9);
        assert_eq!(
            payload,
            r#"{"type":"echo","from":"3","user":"a","text":"b","ref":null,"sent_at":null,"seq":0,"server_ts":9}"#
        );
    }

    #[test]
    fn node_conn_ids_and_the_broker_split() {
        let v = parse(r#"{"type":"broadcast","user":"a","text":"b","ref":"r"}"#).unwrap();
        let m = validate(&v).unwrap();
        let from = ConnId {
            node: Some("web-1"),
            n: 7,
        };
        let whole = finish_reply(reply_head(&m, from), 12, 99);
        assert!(
            whole.starts_with(r#"{"type":"broadcast","from":"web-1:7","#),
            "{whole}"
        );
        let (head, tail) = split_reply(reply_head(&m, from), 99);
        let head = String::from_utf8(head).unwrap();
        assert!(head.ends_with(r#""seq":"#), "{head}");
        assert_eq!(tail, br#","server_ts":99}"#);
        assert_eq!(
            format!("{head}12{}", String::from_utf8(tail).unwrap()),
            whole
        );
        assert_eq!(
            welcome(from, "lobby", 1),
            r#"{"type":"welcome","conn_id":"web-1:7","room":"lobby","server":"rust-ws","connections":1}"#
        );
        assert_eq!(
            broker_unavailable(Some("r1")),
            r#"{"type":"error","code":"broker_unavailable","detail":"broadcast not delivered: the broker is unavailable","ref":"r1"}"#
        );
        assert!(broker_unavailable(None).ends_with(r#""ref":null}"#));
    }

    #[test]
    fn welcome_and_error_payloads() {
        assert_eq!(
            welcome(17, "lobby", 3),
            r#"{"type":"welcome","conn_id":"17","room":"lobby","server":"rust-ws","connections":3}"#
        );
        let e = ProtocolError::invalid("user: must be a string of 1-32 characters");
        assert_eq!(
            error_payload(&e),
            r#"{"type":"error","code":"invalid_message","detail":"user: must be a string of 1-32 characters"}"#
        );
        let b: Value = serde_json::from_str(&error_payload(&binary_unsupported())).unwrap();
        assert_eq!(b["code"], "binary_unsupported");
    }

    #[test]
    fn room_names() {
        for ok in ["lobby", "a", "A-z_0.9", &"r".repeat(64)] {
            assert!(valid_room(ok), "{ok}");
        }
        for bad in ["", &"r".repeat(65), "a b", "é", "a/b", "a%20"] {
            assert!(!valid_room(bad), "{bad}");
        }
    }
}
