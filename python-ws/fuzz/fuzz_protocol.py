"""atheris target: python-ws's message path (python_ws.protocol parse, reply, error) on arbitrary
text, with oracles beyond "does not crash", and a live differential against rust-ws.

Twin: rust-ws/fuzz/fuzz_targets/protocol.rs (the cargo-fuzz target for rust-ws).

Run by bench/fuzz.sh (see bench/README.md, "Fuzzing"); by hand:

    WSLAB_FUZZ_RUST_CLASSIFY=rust-ws/fuzz/target/release/classify \\
      .venv/bin/python python-ws/fuzz/fuzz_protocol.py -max_total_time=60 CORPUS SEEDS

For every input that is a text frame (strict UTF-8; anything else Tornado closes with 1007 before
protocol code runs) it checks, failing the run on any violation:
- the answer is the one PROTOCOL.md §3's rules give (`spec` below, written separately from
  protocol.py);
- an accepted message's reply is one JSON object with exactly the reply's keys, holding the
  fields as sent (ref and sent_at null when absent) and the header values given;
- an error payload is exactly {type: "error", code, detail} with a non-empty detail.

Two more checks only record what they find (the shortest input per kind, in
$WSLAB_FUZZ_FINDINGS), so one known difference does not stop the run from finding others:
- with WSLAB_FUZZ_RUST_CLASSIFY set, rust-ws's classification of the same input (twins.py) must
  equal python-ws's; WSLAB_FUZZ_STRICT=1 makes a difference fail the run instead;
- an error detail longer than 1024 bytes (the input reflected without bound).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():
    from python_ws import protocol

import orjson
import twins

CONN_ID = str(2**64 - 1)
SEQ = 2**64 - 1
SERVER_TS = 2**64 - 2
REPLY_KEYS = {"type", "from", "user", "text", "ref", "sent_at", "seq", "server_ts"}
MAX_DETAIL_BYTES = 1024

RUST = (
    twins.RustClassifier(os.environ["WSLAB_FUZZ_RUST_CLASSIFY"])
    if os.environ.get("WSLAB_FUZZ_RUST_CLASSIFY")
    else None
)
STRICT = os.environ.get("WSLAB_FUZZ_STRICT") == "1"
FINDINGS = twins.Findings(os.environ.get("WSLAB_FUZZ_FINDINGS", ".wslab/fuzz/findings-python"))


def spec(obj: object) -> tuple[str, str | None]:
    """PROTOCOL.md §3 as its table reads, over the parsed JSON: (code, field) of the first rule
    that fails, or ("ok", None)."""

    def string_of(key: str, lo: int, hi: int) -> bool:
        v = obj.get(key)  # type: ignore[union-attr]
        return isinstance(v, str) and lo <= len(v) <= hi

    def absent(key: str) -> bool:
        return obj.get(key) is None  # type: ignore[union-attr]

    if not isinstance(obj, dict):
        return ("invalid_message", "message")
    if not isinstance(obj.get("type"), str):
        return ("invalid_message", "type")
    if obj["type"] not in ("broadcast", "echo"):
        return ("unknown_type", None)
    rules = [
        ("user", string_of("user", 1, 32)),
        ("text", string_of("text", 1, 4096)),
        ("ref", absent("ref") or string_of("ref", 0, 64)),
    ]
    sent_at = obj.get("sent_at")
    # bool is an int subclass in Python and orjson keeps 1.0 a float: neither is an integer.
    is_int = isinstance(sent_at, int) and not isinstance(sent_at, bool)
    rules.append(("sent_at", sent_at is None or (is_int and 0 <= sent_at <= 2**53 - 1)))
    for field, ok in rules:
        if not ok:
            return ("invalid_message", field)
    return ("ok", None)


def test_one_input(data: bytes) -> None:
    text = twins.decode(data)
    if text is None:
        return
    try:
        req = protocol.parse(text)
    except protocol.ProtocolError as err:
        code, detail = err.code, err.detail
        payload = protocol.error(code, detail)
        back = orjson.loads(payload)
        assert back == {"type": "error", "code": code, "detail": detail}, back
        assert isinstance(detail, str) and detail, "empty detail"
        if len(detail.encode()) > MAX_DETAIL_BYTES:
            FINDINGS.note(
                f"python {code} detail over {MAX_DETAIL_BYTES} bytes",
                data,
                {"detail_bytes": len(detail.encode()), "detail_start": detail[:120]},
            )
        got = (code, twins.detail_field(code, detail))
    else:
        payload = protocol.reply(req, CONN_ID, SEQ, SERVER_TS)
        back = orjson.loads(payload)
        assert set(back) == REPLY_KEYS, back.keys()
        sent = orjson.loads(text)
        for key in ("type", "user", "text", "ref", "sent_at"):
            assert back[key] == sent.get(key), (key, back[key], sent.get(key))
            assert type(back[key]) is type(sent.get(key)), key
        assert (back["from"], back["seq"], back["server_ts"]) == (CONN_ID, SEQ, SERVER_TS)
        got = ("ok", None)

    try:
        expected = spec(orjson.loads(text))
    except orjson.JSONDecodeError:
        expected = ("invalid_json", None)
    assert got == expected, f"answered {got}, PROTOCOL.md §3 says {expected}: {text!r}"

    if RUST is not None:
        python = twins.python_class(text)
        rust = RUST.classify(data)
        kind = twins.difference(rust, python)
        if kind:
            if STRICT:
                raise AssertionError(f"twins differ ({kind}): rust {rust}, python {python}")
            FINDINGS.note(kind, data, {"rust": rust, "python": python})


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    try:
        atheris.Fuzz()
    finally:
        if RUST is not None:
            RUST.close()


if __name__ == "__main__":
    main()
