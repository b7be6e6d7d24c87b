#!/usr/bin/env bash
# Coverage-guided fuzzing of both servers' message parsing and validation, with a
# differential between the twins. Not part of ./scripts/test or CI: it runs for minutes and its
# result is a report, bench/results/fuzz-<UTC date>.md (see bench/README.md, "Fuzzing").
#
#   bench/fuzz.sh                  # 5 minutes per fuzzer
#   MINUTES=1 bench/fuzz.sh        # shorter
#
# Steps: seed corpus from the conformance suite's error cases (python-ws/fuzz/seeds.py); build
# the cargo-fuzz target (libFuzzer + AddressSanitizer) and the plain `classify` binary; fuzz
# rust-ws (rust-ws/fuzz/fuzz_targets/protocol.rs), then python-ws with atheris
# (python-ws/fuzz/fuzz_protocol.py, which asks `classify` about every input it tries); replay both
# corpora and the hand-written probes (python-ws/fuzz/probes/) through both twins
# (python-ws/fuzz/twins.py); write the report (bench/fuzz_report.py).
# Corpora, crash artifacts and findings stay in .wslab/fuzz/ (git-ignored) and grow run to run.
#
# Tools, pinned: cargo-fuzz 0.13.1 (installed with `cargo install --locked` if missing or
# another version), atheris from python-ws/fuzz/requirements.txt in the repo's .venv. cargo-fuzz
# needs nightly-only flags (-Zsanitizer); on the stable toolchain RUSTC_BOOTSTRAP=1 allows them.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

MINUTES=${MINUTES:-5}
SECS=$((MINUTES * 60))
NICE=${NICE:-10}                     # the machine is shared; fuzzing yields to everything else
MAX_LEN=${MAX_LEN:-8192}             # past the 4096-character text limit, in bytes
CARGO_FUZZ_VERSION=0.13.1
WORK=${WORK:-$ROOT/.wslab/fuzz}
STAMP=$(date -u +%Y-%m-%d)
OUT=${OUT:-$ROOT/bench/results/fuzz-$STAMP.md}
VENV="$ROOT/.venv"
PYTHON="$VENV/bin/python"
FUZZ_DIR="$ROOT/rust-ws/fuzz"
DICT="$FUZZ_DIR/protocol.dict"
CLASSIFY="$FUZZ_DIR/target/release/classify"
export RUSTC_BOOTSTRAP=1

log() { printf '== %s\n' "$*" >&2; }

# --- tools -----------------------------------------------------------------------------------
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
if [ ! -x "$PYTHON" ]; then python3 -m venv "$VENV"; fi
log "python: tests/requirements.txt, python-ws, atheris (pinned)"
"$PYTHON" -m pip install -q --disable-pip-version-check -r tests/requirements.txt \
  -e './python-ws[test]' -r python-ws/fuzz/requirements.txt

mkdir -p "$WORK"/{seeds,corpus-rust,corpus-python,artifacts-rust,artifacts-python}
# Findings are per run: the report lists what this run found.
rm -rf "$WORK"/findings-python "$WORK"/findings-replay "$WORK"/findings-probes
"$PYTHON" python-ws/fuzz/seeds.py "$WORK/seeds"

# rust-ws/fuzz compiles rust-ws's protocol.rs itself (see its Cargo.toml): it must do so with the
# serde and serde_json that rust-ws ships with.
locked() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; print; exit }' "$2"; }
for crate in serde serde_json; do
  if [ "$(locked "$crate" Cargo.lock)" != "$(locked "$crate" "$FUZZ_DIR/Cargo.lock")" ]; then
    echo "rust-ws/fuzz/Cargo.lock has another $crate than Cargo.lock: run" \
      "'cargo update -p $crate --precise <version>' in rust-ws/fuzz" >&2
    exit 1
  fi
done

# --- build -----------------------------------------------------------------------------------
log "building the fuzz target (ASan, debug assertions) and the classify binary"
(cd "$FUZZ_DIR" && nice -n "$NICE" cargo fuzz build -O -a protocol)
(cd "$FUZZ_DIR" && nice -n "$NICE" cargo build --release --bin classify)

# --- fuzz ------------------------------------------------------------------------------------
# Exit codes are kept, not fatal: a crash is a finding and the report shows it. Both fuzzers are
# libFuzzer and take the same flags. Value profiles reward getting closer on a comparison (a
# nesting counter nearing serde_json's depth limit, say), not only new edges.
FLAGS=(-max_total_time="$SECS" -max_len="$MAX_LEN" -timeout=10 -use_value_profile=1
  -dict="$DICT" -print_final_stats=1)
log "fuzzing rust-ws for $MINUTES min"
rust_rc=0
(cd "$FUZZ_DIR" && nice -n "$NICE" cargo fuzz run -O -a protocol "$WORK/corpus-rust" \
  "$WORK/seeds" -- "${FLAGS[@]}" -artifact_prefix="$WORK/artifacts-rust/") \
  >"$WORK/rust.log" 2>&1 || rust_rc=$?
tail -n 12 "$WORK/rust.log" >&2

log "fuzzing python-ws for $MINUTES min (live differential against rust-ws)"
py_rc=0
WSLAB_FUZZ_RUST_CLASSIFY="$CLASSIFY" WSLAB_FUZZ_FINDINGS="$WORK/findings-python" \
  nice -n "$NICE" "$PYTHON" python-ws/fuzz/fuzz_protocol.py "$WORK/corpus-python" "$WORK/seeds" \
  "${FLAGS[@]}" -artifact_prefix="$WORK/artifacts-python/" >"$WORK/python.log" 2>&1 || py_rc=$?
tail -n 12 "$WORK/python.log" >&2

log "replaying both corpora through both twins"
"$PYTHON" python-ws/fuzz/twins.py --rust "$CLASSIFY" --findings "$WORK/findings-replay" \
  "$WORK/seeds" "$WORK/corpus-rust" "$WORK/corpus-python" | tee "$WORK/replay.log" >&2
# Hand-written edge cases (python-ws/fuzz/probes/: number spellings, nesting depth, surrogates,
# duplicate keys), one file each: what the fuzzers have not reached, kept as regression inputs.
"$PYTHON" python-ws/fuzz/twins.py --rust "$CLASSIFY" --findings "$WORK/findings-probes" \
  python-ws/fuzz/probes | tee "$WORK/probes.log" >&2

# --- report ----------------------------------------------------------------------------------
"$PYTHON" bench/fuzz_report.py --work "$WORK" --minutes "$MINUTES" --rust-rc "$rust_rc" \
  --python-rc "$py_rc" --out "$OUT"
log "report: $OUT"
