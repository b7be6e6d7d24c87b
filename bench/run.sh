#!/usr/bin/env bash
# The lab's benchmark: the matrix, then the sweeps (bench/sweep.py) with their plots
# (bench/plot.py), rust-ws and python-ws one after the other, on loopback, measured with ws-bench.
# Writes bench/results/<UTC date>.md, its plots (<date>-*.png) and the raw JSON lines beside it.
#
#   bench/run.sh                      # everything, full size (~70 min after the build)
#   bench/run.sh --quick              # the whole pipeline at toy sizes (~15 min), into
#                                     # bench/results/quick/ (gitignored): proves it works,
#                                     # measures nothing
#   SWEEPS="" bench/run.sh            # the matrix only (~5 min)
#   SWEEPS="hundredk" bench/run.sh    # opt-in: 100,000 connections in one room (~5 min, quiet machine)
#   SWEEPS="nodes multicore" bench/run.sh   # the matrix, then only the cluster sweeps (~35 min):
#                                     # nodes on one Redis (Debian's redis-server) and the fair
#                                     # multi-core row
#   DURATION=5 HOLD_SECS=5 bench/run.sh   # shorter matrix runs, same connection counts
#
# Each server runs alone, pinned to CPU 0; ws-bench is pinned to CPU 1 so the client cannot steal
# the server's core (PIN=0 turns pinning off). Both get a raised file-descriptor limit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

usage() {
  cat <<'EOF'
usage: bench/run.sh [--quick] [-h|--help]

The lab's benchmark: builds the release rust-ws and ws-bench, runs the fixed matrix (echo,
broadcast, sessions, hold) against rust-ws and then python-ws on loopback, then the sweeps
(bench/sweep.py) and their plots (bench/plot.py), and writes a report with its raw data beside it.

  (no option)   full size, ~70 min after the build; writes bench/results/<UTC date>.md,
                <date>-*.png and <date>-*.jsonl (the committed reports are such runs)
  --quick       the same pipeline at toy sizes, ~15 min: a check that it works, not a
                measurement; writes into bench/results/quick/, which git ignores
  -h, --help    this text

Environment (defaults in brackets):
  SWEEPS        sweeps to run after the matrix, space-separated; empty = the matrix only
                [conns paths fanout msgsize knee-echo knee-broadcast capacity nodes multicore];
                nodes and multicore need Debian's redis-server
  SERVERS       servers to measure, in order ["rust-ws python-ws"]
  OUT           the report's path; its data goes beside it [see above]
  DURATION      seconds per timed matrix run [10; quick 2]
  HOLD_N, HOLD_SECS  connections held and for how long in the hold run [10000, 10; quick 500, 2]
  ECHO_C, BCAST_C, ROOMS  connections in the echo and broadcast runs, rooms [1000, 1000, 10]
  PIN           1 pins each server to CPU 0 and ws-bench to CPU 1; 0 turns pinning off [1]
  RUST_PORT, PY_PORT  loopback ports [28100, 28101]
  PYTHON        the Python with python-ws and matplotlib installed [.venv/bin/python]
  SLO_ECHO_MS, SLO_BROADCAST_MS  the sweeps' latency bounds [50, 250]

Needs .venv with python-ws and bench/requirements.txt (see bench/README.md).
EOF
}

QUICK=${QUICK:-0}
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
if [[ "$QUICK" == 1 ]]; then
  # Toy sizes for every knob not set by the caller: a pipeline check, not a measurement.
  : "${HOLD_N:=500}" "${HOLD_SECS:=2}" "${SETTLE_SECS:=2}" "${ECHO_C:=20}" "${BCAST_C:=100}"
  : "${SESSION_WORKERS:=5}" "${DURATION:=2}" "${CONNECT_CONCURRENCY:=64}"
  RUST_ALLOC_VARIANT=${RUST_ALLOC_VARIANT-}
  OUT=${OUT:-$ROOT/bench/results/quick/$(date -u +%Y-%m-%d).md}
fi
# The sweeps, by name (bench/sweep.py); empty = the matrix only.
SWEEPS=${SWEEPS-conns paths fanout msgsize knee-echo knee-broadcast capacity nodes multicore}
SLO_ECHO_MS=${SLO_ECHO_MS:-50}
SLO_BROADCAST_MS=${SLO_BROADCAST_MS:-250}

RUST_PORT=${RUST_PORT:-28100}        # below the ephemeral range, so no client TIME_WAIT blocks the bind
PY_PORT=${PY_PORT:-28101}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
HOLD_N=${HOLD_N:-10000}
HOLD_SECS=${HOLD_SECS:-10}
SETTLE_SECS=${SETTLE_SECS:-5}
ECHO_C=${ECHO_C:-1000}
BCAST_C=${BCAST_C:-1000}
ROOMS=${ROOMS:-10}
SESSION_WORKERS=${SESSION_WORKERS:-50}
DURATION=${DURATION:-10}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-512}
PIN=${PIN:-1}
# Broadcasts per second per connection for the paced broadcast run: 0.05 × 1000 connections × 100
# members = 5,000 deliveries/s offered, a load both servers can carry, so latency is comparable.
PACED_RATE=${PACED_RATE:-0.05}
# An extra hold run of rust-ws with these allocator settings (set it empty to skip). The default
# is mimalloc's stock behaviour, which rust-ws overrides (it purges freed pages at once and is
# built without transparent huge pages), so the report shows what that override buys.
RUST_ALLOC_VARIANT=${RUST_ALLOC_VARIANT-MIMALLOC_PURGE_DELAY=10 MIMALLOC_ALLOW_THP=1}
SERVERS=${SERVERS:-"rust-ws python-ws"}
STAMP=$(date -u +%Y-%m-%d)
OUT=${OUT:-$ROOT/bench/results/$STAMP.md}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$TARGET_DIR/release/ws-bench
WORK=$(mktemp -d)
SERVER_PID=""

log() { printf '[%s] %s\n' "$(date -u +%T)" "$*" >&2; }

cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- pinning ---------------------------------------------------------------------------------
CORES=$(nproc)
SERVER_PIN=()
CLIENT_PIN=()
if [[ "$PIN" == 1 && "$CORES" -ge 2 ]] && command -v taskset >/dev/null; then
  SERVER_PIN=(taskset -c 0)
  CLIENT_PIN=(taskset -c 1)
  PIN_NOTE="server pinned to CPU 0 and ws-bench to CPU 1 with taskset (each gets one core; rust-ws's runtime sizes itself to the one core it sees)"
else
  PIN_NOTE="no pinning: client and server share all $CORES cores"
fi

# ---- build -----------------------------------------------------------------------------------
log "building release binaries (rust-ws, ws-bench)"
cargo build --release -p rust-ws -p ws-bench >&2

# ---- fd limits -------------------------------------------------------------------------------
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
log "fd limit $(ulimit -n)"
if (( $(ulimit -n) < HOLD_N + 1000 )); then
  echo "run.sh: the fd limit $(ulimit -n) is too low for $HOLD_N connections; raise it (ulimit -n)" >&2
  exit 1
fi

"$PYTHON" -c 'import python_ws, tornado' 2>/dev/null || {
  echo "run.sh: $PYTHON cannot import python_ws and tornado; install python-ws into .venv first" >&2
  exit 1
}
if [[ -n "$SWEEPS" ]]; then
  "$PYTHON" -c 'import matplotlib' 2>/dev/null || {
    echo "run.sh: $PYTHON cannot import matplotlib; run: $PYTHON -m pip install -r bench/requirements.txt" >&2
    exit 1
  }
fi
if [[ " $SWEEPS " == *" nodes "* || " $SWEEPS " == *" multicore "* || " $SWEEPS " == *" hundredk "* ]]; then
  command -v redis-server >/dev/null || {
    echo "run.sh: the nodes, multicore and hundredk sweeps need redis-server: apt-get install redis-server" >&2
    exit 1
  }
fi
mkdir -p "$(dirname "$OUT")"

port_of() { [[ "$1" == rust-ws ]] && echo "$RUST_PORT" || echo "$PY_PORT"; }

start_server() {
  local name=$1 port; shift
  local extra=("$@")
  port=$(port_of "$name")
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run.sh: something already listens on 127.0.0.1:$port; set RUST_PORT / PY_PORT" >&2
    exit 1
  fi
  local env=(WS_HOST=127.0.0.1 WS_PORT="$port" LOG_LEVEL=warning "${extra[@]}")
  if [[ "$name" == rust-ws ]]; then
    env "${env[@]}" "${SERVER_PIN[@]}" "$TARGET_DIR/release/rust-ws" >"$WORK/$name.log" 2>&1 &
  else
    env "${env[@]}" "${SERVER_PIN[@]}" "$PYTHON" -m python_ws >"$WORK/$name.log" 2>&1 &
  fi
  SERVER_PID=$!
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      # Let start-up allocations settle before the idle baseline.
      sleep 3
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "run.sh: $name did not start on port $port:" >&2
  cat "$WORK/$name.log" >&2
  exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

MATRIX_STEPS=$(( $(wc -w <<<"$SERVERS") * 6 ))
MATRIX_DONE=0
MATRIX_T0=$(date +%s)
bench() {
  local name=$1 label=$2; shift 2
  local port left=""
  port=$(port_of "$name")
  if (( MATRIX_DONE > 0 )); then
    left=", about $(( ($(date +%s) - MATRIX_T0) * (MATRIX_STEPS - MATRIX_DONE) / MATRIX_DONE ))s of the matrix left"
  fi
  MATRIX_DONE=$((MATRIX_DONE + 1))
  log "[matrix $MATRIX_DONE/$MATRIX_STEPS] $name: $label$left"
  "${CLIENT_PIN[@]}" "$BENCH" --url "ws://127.0.0.1:$port/ws" --pid "$SERVER_PID" \
    --metrics-url "http://127.0.0.1:$port/metrics" --connect-concurrency "$CONNECT_CONCURRENCY" \
    --label "$label" --json "$@" | tee -a "$WORK/$name.jsonl" | summary
  # Let the server's TIME_WAITs and allocator settle between runs.
  sleep 2
}

summary() {
  command -v jq >/dev/null || { cat >&2; return; }
  jq -r '"    \(.server) \(.label): req/s=\(.req_per_s) conn/s=\(.conn_per_s) p99=\(.latency.p99_us)us client_cpu=\(.client_cpu_pct|floor)% notes=\(.notes|join("; "))"' >&2
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for name in $SERVERS; do
  start_server "$name"
  log "$name started, pid $SERVER_PID"
  bench "$name" "hold-$HOLD_N" hold -n "$HOLD_N" --hold-secs "$HOLD_SECS" --settle-secs "$SETTLE_SECS"
  bench "$name" "echo-inf" echo -c "$ECHO_C" -d "$DURATION"
  bench "$name" "echo-5-per-conn" echo -c "$ECHO_C" -d "$DURATION" --requests-per-conn 5
  bench "$name" "broadcast-$ROOMS-rooms" broadcast -c "$BCAST_C" --rooms "$ROOMS" -d "$DURATION"
  bench "$name" "broadcast-paced" broadcast -c "$BCAST_C" --rooms "$ROOMS" -d "$DURATION" --rate "$PACED_RATE"
  bench "$name" "sessions" sessions -c "$SESSION_WORKERS" -d "$DURATION"
  stop_server
  cp "$WORK/$name.jsonl" "${OUT%.md}-$name.jsonl"
  sleep 3
done

VARIANT_FILE=""
if [[ -n "$RUST_ALLOC_VARIANT" && " $SERVERS " == *" rust-ws "* ]]; then
  read -r -a variant_env <<<"$RUST_ALLOC_VARIANT"
  start_server rust-ws "${variant_env[@]}"
  log "rust-ws with $RUST_ALLOC_VARIANT started, pid $SERVER_PID"
  : >"$WORK/variant.jsonl"
  port=$RUST_PORT
  "${CLIENT_PIN[@]}" "$BENCH" --url "ws://127.0.0.1:$port/ws" --pid "$SERVER_PID" \
    --metrics-url "http://127.0.0.1:$port/metrics" --connect-concurrency "$CONNECT_CONCURRENCY" \
    --label "hold-$HOLD_N, $RUST_ALLOC_VARIANT" --json \
    hold -n "$HOLD_N" --hold-secs "$HOLD_SECS" --settle-secs "$SETTLE_SECS" | tee -a "$WORK/variant.jsonl" | summary
  stop_server
  VARIANT_FILE="$WORK/variant.jsonl"
  cp "$VARIANT_FILE" "${OUT%.md}-rust-ws-alloc-variant.jsonl"
fi

# ---- the report ------------------------------------------------------------------------------
set -- $SERVERS
A=$1 B=${2:-$1}
# The version of DEP that package PKG depends on, per Cargo.lock ("x.y.z", or the only one there is).
dep_version() {
  local v
  v=$(awk -v n="$1" '/^\[\[package\]\]/ { p = 0 } $0 == "name = \"" n "\"" { p = 1 } p' Cargo.lock \
    | grep -o "\"$2 [0-9.]*\"" | grep -o '[0-9][0-9.]*' || true)
  echo "${v:-$(crate_version "$2")}"
}
crate_version() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print }' Cargo.lock | paste -sd/; }
{
  echo "# wslab benchmark: $A vs $B ($STAMP)"
  echo
  echo "Produced by \`bench/run.sh\` ($(date -u +%FT%TZ)). Each server ran alone on 127.0.0.1, one after the other;"
  echo "every figure below comes from one ws-bench run against it. Server RSS and CPU were read from"
  echo "\`/proc/PID\`; CPU columns are percent of one core over the measured window."
  echo
  echo "## Machine and versions"
  echo
  echo "| what | value |"
  echo "|---|---|"
  echo "| cores | $CORES ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')) |"
  echo "| memory | $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) |"
  echo "| kernel | $(uname -r) |"
  echo "| placement | $PIN_NOTE |"
  echo "| other load | the machine is shared; anything else running competes for both cores (load average at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg)) |"
  echo "| rustc | $(rustc -V) |"
  echo "| rust crates | rocket $(crate_version rocket), rocket_ws $(crate_version rocket_ws), tokio $(crate_version tokio); tokio-tungstenite: rust-ws $(dep_version rust-ws tokio-tungstenite), ws-bench $(dep_version ws-bench tokio-tungstenite) |"
  echo "| python | $("$PYTHON" -V 2>&1), tornado $("$PYTHON" -c 'import tornado; print(tornado.version)') |"
  echo "| matrix | hold $HOLD_N (storm, $CONNECT_CONCURRENCY handshakes in flight, held ${HOLD_SECS} s, idle read ${SETTLE_SECS} s after); echo $ECHO_C connections ∞ and 5 requests per connection, ${DURATION} s; broadcast $BCAST_C connections in $ROOMS rooms, closed loop, ${DURATION} s; sessions with $SESSION_WORKERS workers, ${DURATION} s |"
  echo
  echo "How to read the rows: \`client cpu\` is ws-bench's own CPU (⚠ = saturated, so the row is a floor"
  echo "for the server); \`notes\` says what the row can't. Latency is request round trip (echo),"
  echo "send-to-receipt fan-out (broadcast), whole session (sessions) or handshake (hold)."
  echo
  "$BENCH" compare "$WORK/$A.jsonl" "$WORK/$B.jsonl"
  echo
  if [[ -n "$VARIANT_FILE" ]]; then
    echo "## rust-ws memory with other allocator settings"
    echo
    echo "The same hold run against the same rust-ws binary, started with \`$RUST_ALLOC_VARIANT\` in its"
    echo "environment, beside the default run above. rust-ws purges freed pages at once and is built"
    echo "without transparent huge pages; the default variant puts back mimalloc's stock settings:"
    echo
    cat "$WORK/rust-ws.jsonl" | grep -m1 '"mode":"hold"' >"$WORK/holds.jsonl" || true
    cat "$VARIANT_FILE" >>"$WORK/holds.jsonl"
    "$BENCH" show "$WORK/holds.jsonl"
    echo
  fi
  echo "Raw results: \`$(basename "${OUT%.md}")-$A.jsonl\`, \`$(basename "${OUT%.md}")-$B.jsonl\`."
  # Relative to the report, wherever OUT puts it (--quick writes one folder deeper).
  echo "How to read these figures, and where rust-ws's memory goes:" \
    "[bench/README.md]($(realpath -m --relative-to="$(dirname "$OUT")" "$ROOT/bench/README.md"))."
} >"$OUT"
log "wrote the matrix to $OUT"

# ---- the sweeps ---------------------------------------------------------------------------------
if [[ -n "$SWEEPS" ]]; then
  SWEEP_ARGS=(--out "$WORK/sweeps" --servers "$SERVERS" --sweeps "$SWEEPS" --bench "$BENCH"
    --rust-bin "$TARGET_DIR/release/rust-ws" --python "$PYTHON" --rust-port "$RUST_PORT"
    --py-port "$PY_PORT" --pin "$PIN" --connect-concurrency "$CONNECT_CONCURRENCY"
    --slo-echo-ms "$SLO_ECHO_MS" --slo-broadcast-ms "$SLO_BROADCAST_MS")
  [[ "$QUICK" == 1 ]] && SWEEP_ARGS+=(--quick)
  log "sweeps: $SWEEPS"
  "$PYTHON" "$ROOT/bench/sweep.py" "${SWEEP_ARGS[@]}"
  PREFIX=$(basename "${OUT%.md}")
  DEST=$(dirname "$OUT")
  cp "$WORK/sweeps/sweeps.jsonl" "$DEST/$PREFIX-sweeps.jsonl"
  cp "$WORK/sweeps/sweeps-meta.json" "$DEST/$PREFIX-sweeps-meta.json"
  "$PYTHON" "$ROOT/bench/plot.py" --data "$DEST/$PREFIX-sweeps.jsonl" \
    --meta "$DEST/$PREFIX-sweeps-meta.json" --outdir "$DEST" --prefix "$PREFIX"
  {
    echo
    if [[ "$QUICK" == 1 ]]; then
      echo "> **Quick mode** (\`bench/run.sh --quick\`): toy sizes and 2 s steps on a shared machine."
      echo "> This proves the pipeline (sweeps → JSON lines → plots → report); its figures are not"
      echo "> measurements of either server."
      echo
    fi
    cat "$DEST/$PREFIX-sweeps.md"
    echo
    echo "Sweep data: \`$PREFIX-sweeps.jsonl\` (one ws-bench report per step, with \`sweep\`, \`x\` and"
    echo "\`target\`), \`$PREFIX-sweeps-meta.json\` (SLOs and settings); plots by \`bench/plot.py\`."
  } >>"$OUT"
  rm -f "$DEST/$PREFIX-sweeps.md"
  log "wrote the sweeps and their plots beside $OUT"
fi
log "report: $OUT"
