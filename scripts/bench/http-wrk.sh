#!/usr/bin/env bash
# HTTP layer throughput and latency: wrk against /metrics and /health of the
# orfeas-api-fixture server (debug build; dependencies are optimised in dev),
# rate limiter off. Prints requests/s and the latency percentiles, for
# /metrics with one connection (a Prometheus scraper) and with CONNECTIONS,
# and for /health with CONNECTIONS.
#   usage: scripts/bench/http-wrk.sh [DURATION (default 10s)] [CONNECTIONS (default 8)]
set -euo pipefail
DURATION=${1:-10s}
CONNS=${2:-8}
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || { echo "wrk missing: run scripts/install-tools.sh" >&2; exit 1; }
cargo build -q -p orfeas-core --bin orfeas-api-fixture
TARGET_DIR=${CARGO_TARGET_DIR:-$(cargo metadata -q --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}
BIN="$TARGET_DIR/debug/orfeas-api-fixture"
WORK=$(mktemp -d)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
"$BIN" --data-dir "$WORK" --bind "127.0.0.1:$PORT" --no-rate-limit >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf "$BASE/health" >/dev/null && break; sleep 0.1; done
curl -sf "$BASE/health" >/dev/null || { echo "the fixture did not start; see $WORK/server.log" >&2; exit 1; }
echo "wrk -d$DURATION --latency, $(nproc) cores, debug build (dependencies optimised)"
for run in metrics:1 metrics:"$CONNS" health:"$CONNS"; do
  target=${run%%:*} conns=${run#*:}
  threads=$(( conns < 2 ? 1 : 2 ))
  out=$(wrk -t"$threads" -c"$conns" -d"$DURATION" --latency "$BASE/$target")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  pct() { echo "$out" | awk -v p="$1" '$1==p {print $2}'; }
  errs=$(echo "$out" | grep -E "Socket errors|Non-2xx" | tr '\n' ' ' || true)
  printf '/%-8s -c%-3s %10s req/s  p50 %-9s p75 %-9s p90 %-9s p99 %-9s %s\n' \
    "$target" "$conns" "$rps" "$(pct 50%)" "$(pct 75%)" "$(pct 90%)" "$(pct 99%)" "$errs"
done
