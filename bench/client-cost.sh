#!/usr/bin/env bash
# ws-bench's own CPU per operation, for two ws-bench binaries against one server binary,
# alternating A and B so that drift on a shared machine hits both (the load generator must be
# lighter than the server, or a row measures ws-bench: bench/README.md, "Client cost"). CPU is the
# whole ws-bench process's task-clock from `perf stat` (connects included, which are a small share
# at these sizes), divided by the operations it reports: deliveries for broadcast, requests for
# echo, sessions for sessions. The server's CPU per operation over the same run comes from
# /proc/PID/stat, and the last column is the ratio of the two.
#
#   bench/client-cost.sh OLD_WS_BENCH NEW_WS_BENCH [RUST_WS]      # prints a markdown table
#
# Knobs: MODES (broadcast; any of "broadcast echo sessions"), ROUNDS (3), SECS (4), PORT (28190).
# broadcast: C (connections, 200), ROOMS (2), RATE (broadcasts/s per connection, 1.0, so
# 200 x 100 members x 1.0 = 20,000 deliveries/s offered), CLOSED=1 to add closed-loop runs (the
# server's ceiling; heavier), PACED=0 to leave the paced runs out. echo: EC (connections, 50,
# closed loop). sessions: SW (workers, 20).
set -euo pipefail

A=${1:?usage: client-cost.sh OLD_WS_BENCH NEW_WS_BENCH [RUST_WS]}
B=${2:?usage: client-cost.sh OLD_WS_BENCH NEW_WS_BENCH [RUST_WS]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVER=${3:-$ROOT/target/release/rust-ws}
ROUNDS=${ROUNDS:-3} C=${C:-200} ROOMS=${ROOMS:-2} RATE=${RATE:-1.0} SECS=${SECS:-4}
CLOSED=${CLOSED:-0} PACED=${PACED:-1} PORT=${PORT:-28190} MODES=${MODES:-broadcast} EC=${EC:-50}
SW=${SW:-20}
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

# run BIN MODE MODE-ARGS... -> prints "cpu_ms operations client_cpu_pct server_cpu_ms"
run() {
  local bin=$1 mode=$2; shift 2
  local s0
  s0=$(server_ms)
  perf stat -x, -e task-clock -o "$WORK/perf" "${PIN_C[@]}" "$bin" --url "ws://127.0.0.1:$PORT/ws" \
    --pid "$PID" --json "$mode" -d "$SECS" "$@" >"$WORK/out"
  local ms ops pct
  ms=$(awk -F, '/task-clock/ { print $1 }' "$WORK/perf")
  ops=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["broadcast"]["delivered_total"] if r.get("broadcast") else r["requests"])' "$WORK/out")
  pct=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r["client_cpu_pct"]))' "$WORK/out")
  echo "$ms $ops $pct $(python3 -c "print($(server_ms) - $s0)")"
}

echo "| run | binary | operations | ws-bench CPU (task-clock) | ws-bench CPU per operation | ws-bench CPU % in window | server CPU per operation | ws-bench ÷ server |"
echo "|---|---|---|---|---|---|---|---|"
shapes=()
for m in $MODES; do
  case $m in
    broadcast)
      [[ "$PACED" == 1 ]] && shapes+=("broadcast paced")
      [[ "$CLOSED" == 1 ]] && shapes+=("broadcast closed") ;;
    echo) shapes+=("echo closed") ;;
    sessions) shapes+=("sessions") ;;
    *) echo "client-cost.sh: unknown mode $m" >&2; exit 2 ;;
  esac
done
for shape in "${shapes[@]}"; do
  case $shape in
    "broadcast paced") args=(broadcast -c "$C" --rooms "$ROOMS" --drain-secs 5 --rate "$RATE") ;;
    "broadcast closed") args=(broadcast -c "$C" --rooms "$ROOMS" --drain-secs 5) ;;
    "echo closed") args=(echo -c "$EC") ;;
    sessions) args=(sessions -c "$SW") ;;
  esac
  for r in $(seq 1 "$ROUNDS"); do
    for which in before after; do
      bin=$A; [[ "$which" == after ]] && bin=$B
      read -r ms ops pct sms < <(run "$bin" "${args[@]}")
      per=$(python3 -c "print(f'{$ms * 1000 / max(1, $ops):.2f} µs')")
      sper=$(python3 -c "print(f'{$sms * 1000 / max(1, $ops):.2f} µs')")
      ratio=$(python3 -c "print(f'{$ms / max(1e-9, $sms):.2f}')")
      echo "| $shape, round $r | $which | $ops | $(printf '%.0f' "$ms") ms | $per | $pct % | $sper | $ratio |"
      sleep 1
    done
  done
done
