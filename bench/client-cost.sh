#!/usr/bin/env bash
# ws-bench's own CPU per delivered broadcast, for two ws-bench binaries against one server binary,
# alternating A and B so that drift on a shared machine hits both (the load generator must be
# lighter than the server, or a row measures ws-bench: bench/README.md, "Client cost"). CPU is the
# whole ws-bench process's task-clock from `perf stat` (connects included, which are a small share
# at these sizes), divided by the deliveries it reports.
#
#   bench/client-cost.sh OLD_WS_BENCH NEW_WS_BENCH [RUST_WS]      # prints a markdown table
#
# Knobs: ROUNDS (3), C (connections, 200), ROOMS (2), RATE (broadcasts/s per connection, 1.0, so
# 200 x 100 members x 1.0 = 20,000 deliveries/s offered), SECS (4), CLOSED=1 to add closed-loop
# runs (the server's ceiling; heavier), PORT (28190).
set -euo pipefail

A=${1:?usage: client-cost.sh OLD_WS_BENCH NEW_WS_BENCH [RUST_WS]}
B=${2:?usage: client-cost.sh OLD_WS_BENCH NEW_WS_BENCH [RUST_WS]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVER=${3:-$ROOT/target/release/rust-ws}
ROUNDS=${ROUNDS:-3} C=${C:-200} ROOMS=${ROOMS:-2} RATE=${RATE:-1.0} SECS=${SECS:-4}
CLOSED=${CLOSED:-0} PORT=${PORT:-28190}
command -v perf >/dev/null || { echo "client-cost.sh: needs perf (apt-get install linux-perf)" >&2; exit 1; }
WORK=$(mktemp -d)
PID=""
cleanup() { [[ -n "$PID" ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

PIN_S=() PIN_C=()
if (( $(nproc) >= 2 )) && command -v taskset >/dev/null; then PIN_S=(taskset -c 0) PIN_C=(taskset -c 1); fi
WS_HOST=127.0.0.1 WS_PORT=$PORT LOG_LEVEL=warning "${PIN_S[@]}" "$SERVER" >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
sleep 1

# CPU time of the server so far, in ms (utime + stime from /proc/PID/stat).
server_ms() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) * 1000 / hz }' "/proc/$PID/stat"; }

# run BIN MODE-ARGS... -> prints "cpu_ms deliveries client_cpu_pct server_cpu_ms"
run() {
  local bin=$1; shift
  local s0
  s0=$(server_ms)
  perf stat -x, -e task-clock -o "$WORK/perf" "${PIN_C[@]}" "$bin" --url "ws://127.0.0.1:$PORT/ws" \
    --pid "$PID" --json broadcast -c "$C" --rooms "$ROOMS" -d "$SECS" --drain-secs 5 "$@" >"$WORK/out"
  local ms deliv pct
  ms=$(awk -F, '/task-clock/ { print $1 }' "$WORK/perf")
  deliv=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["broadcast"]["delivered_total"])' "$WORK/out")
  pct=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r["client_cpu_pct"]))' "$WORK/out")
  echo "$ms $deliv $pct $(python3 -c "print($(server_ms) - $s0)")"
}

echo "| run | binary | deliveries | ws-bench CPU (task-clock) | ws-bench CPU per delivery | ws-bench CPU % in window | server CPU per delivery |"
echo "|---|---|---|---|---|---|---|"
shapes=("paced --rate $RATE")
[[ "$CLOSED" == 1 ]] && shapes+=("closed")
for shape in "${shapes[@]}"; do
  extra=()
  [[ "$shape" == paced* ]] && extra=(--rate "$RATE")
  for r in $(seq 1 "$ROUNDS"); do
    for which in before after; do
      bin=$A; [[ "$which" == after ]] && bin=$B
      read -r ms deliv pct sms < <(run "$bin" "${extra[@]}")
      per=$(python3 -c "print(f'{$ms * 1000 / max(1, $deliv):.2f} µs')")
      sper=$(python3 -c "print(f'{$sms * 1000 / max(1, $deliv):.2f} µs')")
      echo "| $shape, round $r | $which | $deliv | $(printf '%.0f' "$ms") ms | $per | $pct % | $sper |"
      sleep 1
    done
  done
done
