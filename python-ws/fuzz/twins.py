"""python-ws's classification of text messages and the differential with rust-ws.

Twin: rust-ws/fuzz/src/lib.rs (`classify`, `spec`) and rust-ws/fuzz/src/bin/classify.rs.

Used by fuzz_protocol.py (the atheris target) for every input, and on its own to replay fuzz
corpora through both servers' message code (bench/fuzz.sh does; see bench/README.md, "Fuzzing"):

    python python-ws/fuzz/twins.py --rust rust-ws/fuzz/target/release/classify DIR...

python-ws/fuzz/probes/ holds hand-written inputs (one file each, named for the case) that
bench/fuzz.sh replays the same way: edge cases the fuzzers have not reached, kept as regression
inputs.

A classification is what PROTOCOL.md §3 makes both servers agree on, as one JSON-able dict:
`{"code": "ok", "field": None, "msg": {type, user, text, ref, sent_at}}` for an accepted
message, `{"code": "invalid_message", "field": "user", "msg": None}` for an error (`field`: the
name that starts an invalid_message detail; None for the other codes, whose details the protocol
leaves free), `{"code": "not_utf8", ...}` for bytes that are not a text frame at all (the
WebSocket library closes those with 1007 before protocol code runs, in both servers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from python_ws import protocol

FIELDS = ("message", "type", "user", "text", "ref", "sent_at")
NOT_UTF8 = {"code": "not_utf8", "field": None, "msg": None}
# Seconds to wait for the Rust classifier's answer to one input: it answers in microseconds, so
# hitting this means it hung or died.
RUST_TIMEOUT_S = 10.0


def detail_field(code: str, detail: str) -> str | None:
    """The field an invalid_message detail starts with (`user` for `user: must be ...`)."""
    if code != "invalid_message":
        return None
    head, sep, _ = detail.partition(": ")
    return head if sep and head in FIELDS else None


def python_class(text: str) -> dict:
    """python-ws's answer to one text message, as Connection.on_message computes it."""
    try:
        req = protocol.parse(text)
    except protocol.ProtocolError as err:
        return {"code": err.code, "field": detail_field(err.code, err.detail), "msg": None}
    msg = {"type": req.type, "user": req.user, "text": req.text, "ref": req.ref}
    msg["sent_at"] = req.sent_at
    return {"code": "ok", "field": None, "msg": msg}


def decode(data: bytes) -> str | None:
    """A text frame's payload as Tornado hands it over: strict UTF-8, or no message at all."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def class_of(data: bytes) -> dict:
    text = decode(data)
    return NOT_UTF8 if text is None else python_class(text)


class RustClassifier:
    """One long-lived `classify serve` process: length-prefixed inputs in, JSON lines out."""

    def __init__(self, binary: str) -> None:
        self.proc = subprocess.Popen(
            [binary, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        self.out = self.proc.stdout

    def classify(self, data: bytes) -> dict:
        assert self.proc.stdin is not None and self.out is not None
        self.proc.stdin.write(struct.pack("<I", len(data)) + data)
        line = self.out.readline()
        if not line:
            raise RuntimeError(f"rust classifier exited with {self.proc.wait(RUST_TIMEOUT_S)}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(RUST_TIMEOUT_S)


def label(c: dict) -> str:
    """A difference's kind: both codes and fields, e.g. `invalid_message/sent_at`."""
    return c["code"] + (f"/{c['field']}" if c["field"] else "")


def difference(rust: dict, python: dict) -> str | None:
    """None when the twins agree; else a short name for this kind of difference."""
    if rust == python:
        return None
    if label(rust) != label(python):
        return f"rust {label(rust)} vs python {label(python)}"
    diff = sorted(k for k in rust["msg"] if rust["msg"][k] != python["msg"].get(k))
    return "accepted, fields differ: " + ",".join(diff)


class Findings:
    """Keeps the shortest reproducer of each kind of finding in a folder, as `<kind>.txt` (the
    raw input) and `<kind>.json` (what each side answered)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.best: dict[str, int] = {}
        self.counts: dict[str, int] = defaultdict(int)

    def note(self, kind: str, data: bytes, info: dict) -> None:
        self.counts[kind] += 1
        if kind in self.best and self.best[kind] <= len(data):
            return
        self.best[kind] = len(data)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", kind).strip("_")[:100]
        (self.folder / f"{name}.txt").write_bytes(data)
        record = {"kind": kind, "input": data.decode("utf-8", "backslashreplace"), **info}
        (self.folder / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


def replay(rust_bin: str, paths: list[str], findings: Findings) -> tuple[int, int]:
    """Every file under `paths` through both twins; returns (inputs, differing inputs)."""
    out = subprocess.run([rust_bin, *paths], check=True, capture_output=True, timeout=600)
    total = differing = 0
    seen: set[str] = set()
    for line in out.stdout.splitlines():
        row = json.loads(line)
        data = Path(row["path"]).read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        if digest in seen:  # the same input in two corpora
            continue
        seen.add(digest)
        total += 1
        python = class_of(data)
        kind = difference(row["class"], python)
        if kind:
            differing += 1
            findings.note(kind, data, {"rust": row["class"], "python": python})
    return total, differing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rust", required=True, help="rust-ws/fuzz's `classify` binary")
    ap.add_argument("--findings", default=".wslab/fuzz/findings-replay", help="output folder")
    ap.add_argument("paths", nargs="+", help="corpus folders or files")
    args = ap.parse_args()
    findings = Findings(args.findings)
    total, differing = replay(args.rust, args.paths, findings)
    print(
        f"replayed {total} distinct inputs through both twins: {differing} classified differently"
    )
    for kind, n in sorted(findings.counts.items(), key=lambda kv: -kv[1]):
        print(f"  {n:6d}  {kind}  (shortest: {findings.best[kind]} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
