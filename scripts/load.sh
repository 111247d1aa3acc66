#!/usr/bin/env bash
# Load test of the HTTP API with wrk, rate limiter on and off: /health,
# /metrics and job submission. Prints requests/s, p50/p99, status counts from
# the server's own metrics, RSS before/after, and accepted vs recorded jobs.
#   usage: [MODES="on off"] [PROFILE=release|debug] scripts/load.sh [DURATION (default 30s)] [CONNECTIONS (default 16)]
# Uses the orfeas-api-fixture server (stand-in runners that write 1 KiB files),
# so it measures the HTTP layer, validation, the queue and the history writes.
set -euo pipefail
DURATION=${1:-30s}
CONNS=${2:-16}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target}
command -v wrk >/dev/null || { echo "wrk missing: run scripts/install-tools.sh" >&2; exit 1; }
# PROFILE=debug skips the release build (dependencies are optimised in dev too).
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build -q --release -p orfeas-core --bin orfeas-api-fixture
  BIN="$CARGO_TARGET_DIR/release/orfeas-api-fixture"
else
  cargo build -q -p orfeas-core --bin orfeas-api-fixture
  BIN="$CARGO_TARGET_DIR/debug/orfeas-api-fixture"
fi
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"prompt":"a red fox, load test","steps":4}'
wrk.headers["Content-Type"] = "application/json"
LUA

metric() { # name and label filter -> summed value
  curl -s "$BASE/metrics" | grep -E "^$1\{[^}]*$2" | awk '{s+=$2} END {printf "%d", s}'
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }

run_mode() { # $1: on|off
  local mode=$1 port data
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  data="$WORK/data-$mode"; mkdir -p "$data"
  local flags=(--data-dir "$data" --bind "127.0.0.1:$port" --runner-ms 2 --output-bytes 1024 --queue-limit 64)
  [ "$mode" = off ] && flags+=(--no-rate-limit)
  "$BIN" "${flags[@]}" >"$WORK/server-$mode.log" 2>&1 &
  PID=$!
  BASE="http://127.0.0.1:$port"
  for _ in $(seq 100); do curl -s "$BASE/health" >/dev/null && break; sleep 0.1; done
  echo "=== rate limiter $mode (wrk -t2 -c$CONNS -d$DURATION) ==="
  echo "RSS before: $(rss_kib) KiB"
  for target in health metrics submit; do
    if [ $target = submit ]; then
      out=$(wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "$BASE/api/text-to-image")
    else
      out=$(wrk -t2 -c"$CONNS" -d"$DURATION" --latency "$BASE/$target")
    fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    errs=$(echo "$out" | grep -E "Socket errors|Non-2xx" | tr '\n' ' ' || true)
    printf '%-8s %10s req/s  p50 %-8s p99 %-8s %s\n' "$target" "$rps" "$p50" "$p99" "$errs"
  done
  echo "RSS after:  $(rss_kib) KiB"
  echo "429s: $(metric rate_limit_rejections_total '')   503s: $(metric http_requests_total 'status="503"')"
  sleep 2
  local accepted recorded
  accepted=$(metric http_requests_total 'endpoint="/api/text-to-image".*status="202"')
  recorded=$(curl -s "$BASE/api/jobs?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
  echo "jobs accepted (202): $accepted   recorded in history: $recorded"
  [ "$accepted" = "$recorded" ] || { echo "LOST JOBS" >&2; exit 1; }
  curl -s "$BASE/health" >/dev/null || { echo "server did not survive" >&2; exit 1; }
  kill -TERM "$PID"; wait "$PID" || true
}
for m in ${MODES:-on off}; do run_mode "$m"; done
