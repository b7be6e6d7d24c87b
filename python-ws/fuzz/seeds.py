"""Writes the fuzz seed corpus: every message text of the conformance suite's error tests
(tests/conformance/test_errors.py), one file each, named by SHA-1 as libFuzzer names its own.

Both fuzzers (rust-ws/fuzz and fuzz_protocol.py here) start from these; bench/fuzz.sh runs this
first. The cases are read from the test module itself (FIELD_CASES and the parametrize lists), so
a case added to the suite becomes a seed without touching this file.

    .venv/bin/python python-ws/fuzz/seeds.py OUT_DIR
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def as_text(value: object) -> str:
    """A message as the suite sends it: a str as is, anything else as JSON (Clients.request)."""
    return value if isinstance(value, str) else json.dumps(value)


def cases() -> list[str]:
    sys.path.insert(0, str(REPO / "tests"))  # the suite imports `wire` from there
    mod = importlib.import_module("conformance.test_errors")
    found = [json.dumps(mod.BASE)]
    for name in dir(mod):
        for mark in getattr(getattr(mod, name), "pytestmark", []):
            if mark.name != "parametrize":
                continue
            argnames = [a.strip() for a in mark.args[0].split(",")]
            for value in mark.args[1]:
                values = dict(zip(argnames, value if len(argnames) > 1 else (value,), strict=True))
                if "raw" in values:
                    found.append(as_text(values["raw"]))
                elif "msg" in values:
                    found.append(as_text(values["msg"]))
                elif "type_" in values:
                    # test_unknown_type_names_the_type sends {"type": type_, "user": ""}.
                    found.append(json.dumps({"type": values["type_"], "user": ""}))
    return sorted(set(found))


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: seeds.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    found = cases()
    for text in found:
        data = text.encode()
        (out / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"{len(found)} seeds from tests/conformance/test_errors.py in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
