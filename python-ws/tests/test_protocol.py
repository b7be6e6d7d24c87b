"""Validation and serialisation rules of PROTOCOL.md §3, without a server."""

from __future__ import annotations

import json

import orjson
import pytest

from python_ws import protocol
from python_ws.protocol import ProtocolError, parse

OK = {"type": "echo", "user": "ann", "text": "hi"}


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def error_of(text: str) -> tuple[str, str]:
    with pytest.raises(ProtocolError) as info:
        parse(text)
    return info.value.code, info.value.detail


def with_(**fields: object) -> str:
    return dumps({**OK, **fields})


def test_valid_minimal_message() -> None:
    req = parse(dumps(OK))
    assert (req.type, req.user, req.text, req.ref, req.sent_at) == ("echo", "ann", "hi", None, None)


def test_valid_full_broadcast_and_unknown_fields_ignored() -> None:
    req = parse(with_(type="broadcast", ref="r1", sent_at=1732358400000, extra={"x": [1]}))
    assert (req.type, req.ref, req.sent_at) == ("broadcast", "r1", 1732358400000)


@pytest.mark.parametrize("text", ["", "{", "nope", '{"type":"echo",}', "NaN", "1e999"])
def test_invalid_json(text: str) -> None:
    code, detail = error_of(text)
    assert code == "invalid_json" and detail


@pytest.mark.parametrize("text", ["[]", "1", '"s"', "null", "true"])
def test_not_an_object(text: str) -> None:
    assert error_of(text) == ("invalid_message", "message: must be a JSON object")


@pytest.mark.parametrize("kind", [None, 1, True, ["echo"], {"a": 1}])
def test_type_missing_or_not_a_string(kind: object) -> None:
    obj = dict(OK)
    if kind is None:
        del obj["type"]
    else:
        obj["type"] = kind
    code, detail = error_of(dumps(obj))
    assert code == "invalid_message" and detail.startswith("type: ")


def test_unknown_type_names_the_type() -> None:
    code, detail = error_of(with_(type="shout"))
    assert code == "unknown_type" and "shout" in detail


def test_type_is_checked_before_fields() -> None:
    assert error_of(dumps({"type": "shout"}))[0] == "unknown_type"


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("user", "a", True),
        ("user", "a" * 32, True),
        ("user", "é" * 32, True),  # 32 code points, 64 bytes
        ("user", "😀" * 32, True),  # 32 code points, 128 bytes
        ("user", "", False),
        ("user", "a" * 33, False),
        ("user", "é" * 33, False),
        ("user", 5, False),
        ("user", None, False),
        ("text", "t" * 4096, True),
        ("text", "é" * 4096, True),
        ("text", "t" * 4097, False),
        ("text", "", False),
        ("text", ["t"], False),
        ("ref", "", True),
        ("ref", "r" * 64, True),
        ("ref", None, True),
        ("ref", "r" * 65, False),
        ("ref", 1, False),
        ("ref", False, False),
        ("sent_at", 0, True),
        ("sent_at", 2**53 - 1, True),
        ("sent_at", None, True),
        ("sent_at", 2**53, False),
        ("sent_at", -1, False),
        ("sent_at", 1.5, False),
        ("sent_at", 1.0, False),
        ("sent_at", True, False),
        ("sent_at", False, False),
        ("sent_at", "1", False),
        ("sent_at", 2**64, False),
    ],
)
def test_field_rules(field: str, value: object, valid: bool) -> None:
    text = with_(**{field: value})
    if value is None and field in ("user", "text"):
        obj = dict(OK)
        del obj[field]
        text = dumps(obj)
    if valid:
        assert getattr(parse(text), field) == value
    else:
        code, detail = error_of(text)
        assert code == "invalid_message"
        assert detail.startswith(f"{field}: ")


def test_missing_user_and_text() -> None:
    assert error_of('{"type":"echo","text":"x"}')[1].startswith("user: ")
    assert error_of('{"type":"echo","user":"x"}')[1].startswith("text: ")


def test_sent_at_one_point_zero_literal_is_invalid() -> None:
    # orjson keeps 1.0 a float, so the literal in the JSON text is what decides.
    assert error_of('{"type":"echo","user":"a","text":"b","sent_at":1.0}')[1].startswith(
        "sent_at: "
    )
    assert error_of('{"type":"echo","user":"a","text":"b","sent_at":1e3}')[1].startswith(
        "sent_at: "
    )


def test_fields_checked_in_order() -> None:
    bad_all = {"type": "echo", "user": "", "text": "", "ref": 1, "sent_at": -1}
    order = ["user", "text", "ref", "sent_at"]
    for field in order:
        assert error_of(dumps(bad_all))[1].startswith(f"{field}: ")
        bad_all[field] = OK.get(field)


def test_reply_shape_and_order() -> None:
    req = parse(with_(type="broadcast", ref="r", sent_at=7))
    payload = protocol.reply(req, "17", 42, 1000)
    assert isinstance(payload, bytes)
    assert list(orjson.loads(payload).items()) == [
        ("type", "broadcast"),
        ("from", "17"),
        ("user", "ann"),
        ("text", "hi"),
        ("ref", "r"),
        ("sent_at", 7),
        ("seq", 42),
        ("server_ts", 1000),
    ]


def test_reply_nulls_when_absent_and_unicode_round_trips() -> None:
    req = parse(with_(user="é😀", text='a"\\\n'))
    body = orjson.loads(protocol.reply(req, "1", 0, 5))
    assert body["ref"] is None and body["sent_at"] is None
    assert body["user"] == "é😀" and body["text"] == 'a"\\\n'


def test_error_and_welcome_shapes() -> None:
    assert orjson.loads(protocol.error("invalid_json", "x")) == {
        "type": "error",
        "code": "invalid_json",
        "detail": "x",
    }
    assert orjson.loads(protocol.welcome("3", "lobby", "python-ws", 2)) == {
        "type": "welcome",
        "conn_id": "3",
        "room": "lobby",
        "server": "python-ws",
        "connections": 2,
    }


def test_now_ms_is_epoch_milliseconds() -> None:
    import time

    assert abs(protocol.now_ms() - time.time() * 1000) < 1000


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    # 300 brackets inside strings (one with an escaped quote before them) nest nothing.
    msg = '{"type":"echo","user":"u","text":"\\"' + "[" * 300 + '","x":["{' + "{" * 200 + '"]}'
    assert parse(msg).text.startswith('"[[[')
    deep = '{"type":"echo","user":"u","text":"t","x":' + "[" * 127 + "]" * 127 + "}"
    with pytest.raises(ProtocolError) as err:
        parse(deep)
    assert err.value.code == "invalid_json"


def test_unknown_type_is_named_but_not_reflected_whole() -> None:
    with pytest.raises(ProtocolError) as err:
        parse(json.dumps({"type": "x" * 60000, "user": "u", "text": "t"}))
    assert err.value.code == "unknown_type"
    assert "x" * 64 in err.value.detail and "x" * 65 not in err.value.detail
