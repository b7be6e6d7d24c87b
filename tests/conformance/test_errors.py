"""PROTOCOL.md section 3, Errors: every code, every field boundary, check order, and the
connection staying usable (and the error private to the sender) after each one."""

from __future__ import annotations

import json

import pytest

from .support import MAX_SAFE_INT, Clients, unique_room

ERROR_KEYS = {"type", "code", "detail"}
BASE = {"type": "echo", "user": "u", "text": "t"}


def with_field(field: str, value, base=BASE) -> str:
    msg = dict(base)
    msg[field] = value
    return json.dumps(msg)


def without(field: str) -> str:
    return json.dumps({k: v for k, v in BASE.items() if k != field})


def assert_error(reply: dict, code: str) -> str:
    assert reply.get("type") == "error", reply
    assert set(reply) == ERROR_KEYS, reply
    assert reply["code"] == code, reply
    assert isinstance(reply["detail"], str) and reply["detail"], reply
    return reply["detail"]


# (raw text, expected: None for a valid echo, else the field whose name starts the detail)
FIELD_CASES = {
    # user: required string, 1-32 characters
    "user-missing": (without("user"), "user"),
    "user-null": (with_field("user", None), "user"),
    "user-0": (with_field("user", ""), "user"),
    "user-1": (with_field("user", "a"), None),
    "user-32": (with_field("user", "a" * 32), None),
    "user-33": (with_field("user", "a" * 33), "user"),
    "user-number": (with_field("user", 5), "user"),
    "user-list": (with_field("user", ["a"]), "user"),
    # text: required string, 1-4096 characters
    "text-missing": (without("text"), "text"),
    "text-null": (with_field("text", None), "text"),
    "text-0": (with_field("text", ""), "text"),
    "text-1": (with_field("text", "a"), None),
    "text-4096": (with_field("text", "a" * 4096), None),
    "text-4097": (with_field("text", "a" * 4097), "text"),
    "text-object": (with_field("text", {"a": 1}), "text"),
    # ref: optional string, 0-64 characters, null as absent
    "ref-absent": (json.dumps(BASE), None),
    "ref-null": (with_field("ref", None), None),
    "ref-0": (with_field("ref", ""), None),
    "ref-64": (with_field("ref", "r" * 64), None),
    "ref-65": (with_field("ref", "r" * 65), "ref"),
    "ref-number": (with_field("ref", 1), "ref"),
    "ref-bool": (with_field("ref", True), "ref"),
    # sent_at: optional integer 0..2^53-1, null as absent; fractions, bools, strings invalid
    "sent_at-null": (with_field("sent_at", None), None),
    "sent_at--1": (with_field("sent_at", -1), "sent_at"),
    "sent_at-0": (with_field("sent_at", 0), None),
    "sent_at-2^53-1": (with_field("sent_at", MAX_SAFE_INT), None),
    "sent_at-2^53": (with_field("sent_at", MAX_SAFE_INT + 1), "sent_at"),
    "sent_at-huge": (with_field("sent_at", 10**30), "sent_at"),
    "sent_at-1.5": (with_field("sent_at", 1.5), "sent_at"),
    "sent_at-1.0": ('{"type":"echo","user":"u","text":"t","sent_at":1.0}', "sent_at"),
    "sent_at-true": (with_field("sent_at", True), "sent_at"),
    "sent_at-false": (with_field("sent_at", False), "sent_at"),
    "sent_at-string": (with_field("sent_at", "1"), "sent_at"),
    # first failing field wins, in the order user, text, ref, sent_at
    "order-user-before-text": (
        json.dumps({"type": "echo", "user": "", "text": ""}),
        "user",
    ),
    "order-text-before-ref": (
        json.dumps({"type": "echo", "user": "u", "text": "", "ref": "r" * 65}),
        "text",
    ),
    "order-ref-before-sent_at": (
        json.dumps({"type": "echo", "user": "u", "text": "t", "ref": 1, "sent_at": -1}),
        "ref",
    ),
    "order-text-before-sent_at": (
        json.dumps({"type": "broadcast", "user": "u", "sent_at": "x"}),
        "text",
    ),
}


@pytest.mark.parametrize("raw,field", list(FIELD_CASES.values()), ids=list(FIELD_CASES))
def test_field_rules(server, raw, field):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        reply = a.request(raw)
        if field is None:
            assert reply.get("type") == "echo", reply
            sent = json.loads(raw)
            for f in ("user", "text", "ref", "sent_at"):
                assert reply[f] == sent.get(f), (f, reply)
        else:
            detail = assert_error(reply, "invalid_message")
            assert detail.startswith(f"{field}: "), detail
        a.assert_alive()


@pytest.mark.parametrize("raw", ["{", "not json", "", '{"type":"echo",}', "[1,2", "nul"])
def test_invalid_json(server, raw):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        assert_error(a.request(raw), "invalid_json")
        a.assert_alive()


@pytest.mark.parametrize("raw", ["[]", '["type","echo"]', '"echo"', "5", "null", "true"])
def test_not_an_object(server, raw):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        detail = assert_error(a.request(raw), "invalid_message")
        assert detail == "message: must be a JSON object"
        a.assert_alive()


@pytest.mark.parametrize(
    "msg",
    [
        {"user": "u", "text": "t"},
        {"type": None, "user": "u", "text": "t"},
        {"type": 1, "user": "u", "text": "t"},
        {"type": ["echo"], "user": "u", "text": "t"},
        {"user": "", "text": ""},  # type is checked before the fields
    ],
    ids=["missing", "null", "number", "list", "before-fields"],
)
def test_type_missing_or_not_a_string(server, msg):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        detail = assert_error(a.request(msg), "invalid_message")
        assert detail.startswith("type: "), detail
        a.assert_alive()


@pytest.mark.parametrize("type_", ["shout", "Broadcast", "ECHO", "welcome", ""])
def test_unknown_type_names_the_type(server, type_):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        # Fields are invalid too: the type check comes first.
        detail = assert_error(a.request({"type": type_, "user": ""}), "unknown_type")
        assert type_ in detail, detail
        a.assert_alive()


def test_binary_frame_is_unsupported_and_connection_stays_open(server):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        # bytes make a binary frame, even though they hold valid JSON
        a.ws.send(json.dumps(BASE).encode())
        detail = assert_error(a.recv_json(), "binary_unsupported")
        assert "binary" in detail.lower(), detail
        a.assert_alive()


def test_errors_go_to_the_sender_only_and_do_not_use_seq(server):
    room = unique_room()
    with Clients(server) as cs:
        a, b = cs.join(room), cs.join(room)
        assert_error(a.request('{"type":"broadcast","user":"","text":"t"}'), "invalid_message")
        assert_error(a.request("{"), "invalid_json")
        assert_error(a.request({"type": "nope"}), "unknown_type")
        a.ws.send(b"\x00")
        assert_error(a.recv_json(), "binary_unsupported")
        a.send_json({"type": "broadcast", "user": "u", "text": "first"})
        assert a.recv_json()["seq"] == 1
        # b saw none of a's errors: its next message is the broadcast
        got = b.recv_json()
        assert (got["type"], got["text"], got["seq"]) == ("broadcast", "first", 1)
