#!/usr/bin/env bash
# Side-by-side runs of rust-ws, the bare reference server (ws-reference) and any other build of a
# server, alternating, with the syscalls each server made per delivered message. See
# bench/README.md, "Reference server and write coalescing".
#
#   bench/reference/compare.sh                                   # rust-ws vs ws-reference
#   SERVERS="before=/tmp/rust-ws-main rust-ws=target/release/rust-ws" ROUNDS=3 bench/reference/compare.sh
#   RUNS="broadcast echo hold storm15k" bench/reference/compare.sh
#
# Each server is pinned to CPU 0 and ws-bench to CPU 1 (as bench/run.sh does), one server at a
# time, ROUNDS times in turn, so drift on a shared machine spreads over all of them. Output: one
# markdown line per run on stdout, the raw ws-bench JSON lines in $OUT (default a temp file).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
T=${CARGO_TARGET_DIR:-$ROOT/target}
SERVERS=${SERVERS:-"rust-ws=$T/release/rust-ws ws-reference=$T/release/ws-reference"}
RUNS=${RUNS:-"broadcast echo"}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
PORT=${PORT:-28110}
OUT=${OUT:-$(mktemp /tmp/compare-XXXXXX.jsonl)}
BENCH=$T/release/ws-bench
[[ -x $BENCH ]] || { echo "build first: cargo build --release -p rust-ws -p ws-bench -p ws-reference" >&2; exit 1; }
# The server needs one fd per connection; 20,000 is this machine's hard cap.
ulimit -n "$(ulimit -Hn)"
SYSCALLS='syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendmsg'
PID=""
trap '[[ -n $PID ]] && kill $PID 2>/dev/null; true' EXIT

start() {
  WS_HOST=127.0.0.1 WS_PORT=$PORT LOG_LEVEL=warning taskset -c 0 "$1" >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && { sleep 2; return; }; sleep 0.1; done
  echo "$1 did not start" >&2; exit 1
}
stop() { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; sleep 2; }

# ws-bench with its JSON line captured, and the server's write syscalls counted meanwhile.
run() {
  local name=$1 label=$2; shift 2
  local perf=$(mktemp)
  perf stat -x, -e "$SYSCALLS" -p "$PID" -o "$perf" &
  local perf_pid=$!
  sleep 0.2
  taskset -c 1 "$BENCH" --url "ws://127.0.0.1:$PORT/ws" --pid "$PID" --json --label "$name $label" "$@" >"$perf.json"
  kill -INT $perf_pid; wait $perf_pid 2>/dev/null || true
  local writes; writes=$(awk -F, '$1 ~ /^[0-9]+$/ { s += $1 } END { print s + 0 }' "$perf")
  cat "$perf.json" >>"$OUT"
  jq -r --arg w "$writes" '
    (.broadcast.delivered_total // .requests) as $msgs
    | "| \(.label) | \(.broadcast.deliveries_per_s // .req_per_s // .conn_per_s | floor) | p99 \(.latency.p99_us) us | server cpu \((.server_cpu_user_pct + .server_cpu_sys_pct) | floor)% (sys \(.server_cpu_sys_pct | floor)%) | client cpu \(.client_cpu_pct | floor)% | write syscalls/msg \(if $msgs > 0 then (($w | tonumber) / $msgs * 1000 | round / 1000) else "-" end) | \(.hold.bytes_per_conn // "-") B/conn | fails \(.connect_failures | add // 0) |"' "$perf.json"
  rm -f "$perf" "$perf.json"
  sleep 2
}

for round in $(seq "$ROUNDS"); do
  for spec in $SERVERS; do
    name=${spec%%=*} bin=${spec#*=}
    start "$bin"
    for r in $RUNS; do
      case $r in
        broadcast) run "$name" "broadcast r$round" broadcast -c 1000 --rooms 10 -d "$DURATION" ;;
        echo) run "$name" "echo r$round" echo -c 1000 -d "$DURATION" ;;
        sessions) run "$name" "sessions r$round" sessions -c 50 -d "$DURATION" ;;
        hold) run "$name" "hold-10000 r$round" hold -n 10000 --hold-secs 5 --settle-secs 5 ;;
        storm15k) run "$name" "hold-15000 r$round" hold -n 15000 --hold-secs 2 --settle-secs 2 ;;
        *) echo "unknown run $r" >&2; exit 2 ;;
      esac
    done
    stop
  done
done
echo "raw: $OUT" >&2
