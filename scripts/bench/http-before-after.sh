#!/usr/bin/env bash
# The HTTP layer before and after a change, in one run on one machine: wrk
# against /health, /metrics (one connection, as Prometheus scrapes, and
# CONNECTIONS) and job submissions, for the orfeas-api-fixture server of
# BEFORE_REV (default 752510f: the last main on tiny_http) and of this
# checkout (axum). Prints requests/s, p50/p99 and the server's RSS.
#   usage: [BEFORE_REV=rev] scripts/bench/http-before-after.sh [DURATION (10s)] [CONNECTIONS (8)]
# Debug builds (dependencies are optimised in dev); the old revision is
# built in a worktree under $WORK_ROOT (default /tmp/orfeas-http-before).
set -euo pipefail
DURATION=${1:-10s}
CONNS=${2:-8}
BEFORE_REV=${BEFORE_REV:-752510f}
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || { echo "wrk missing: run scripts/install-tools.sh" >&2; exit 1; }
ROOT=$(pwd)
WORK_ROOT=${WORK_ROOT:-/tmp/orfeas-http-before}

target_dir() {
  (cd "$1" && cargo metadata -q --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
}

# The old server, in a worktree of its own (its target dir is kept between runs).
if [ ! -d "$WORK_ROOT/src" ]; then
  git worktree add -f --detach "$WORK_ROOT/src" "$BEFORE_REV" >/dev/null
fi
git -C "$WORK_ROOT/src" checkout -q --detach "$BEFORE_REV"
(cd "$WORK_ROOT/src" && cargo build -q -p orfeas-core --bin orfeas-api-fixture)
BEFORE="$(target_dir "$WORK_ROOT/src")/debug/orfeas-api-fixture"
cargo build -q -p orfeas-core --bin orfeas-api-fixture
AFTER="$(target_dir "$ROOT")/debug/orfeas-api-fixture"

WORK=$(mktemp -d)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"prompt":"a red fox, load test","steps":4}'
wrk.headers["Content-Type"] = "application/json"
LUA

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }

bench() { # $1: label, $2: binary
  local port base out
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  base="http://127.0.0.1:$port"
  mkdir -p "$WORK/$1"
  "$2" --data-dir "$WORK/$1" --bind "127.0.0.1:$port" --no-rate-limit --runner-ms 2 \
    --output-bytes 1024 --queue-limit 100000 >"$WORK/$1.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf "$base/health" >/dev/null && break; sleep 0.1; done
  echo "== $1 ($(basename "$(dirname "$(dirname "$(dirname "$2")")")")): RSS at start $(rss_kib) KiB"
  for run in health:"$CONNS" metrics:1 metrics:"$CONNS" submit:"$CONNS"; do
    local what=${run%%:*} conns=${run#*:} threads
    threads=$(( conns < 2 ? 1 : 2 ))
    if [ "$what" = submit ]; then
      out=$(wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -s "$WORK/post.lua" "$base/api/text-to-image")
    else
      out=$(wrk -t"$threads" -c"$conns" -d"$DURATION" --latency "$base/$what")
    fi
    local rps p50 p99 errs
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    errs=$(echo "$out" | grep -E "Socket errors|Non-2xx" | tr '\n' ' ' || true)
    printf '  %-8s -c%-3s %10s req/s  p50 %-9s p99 %-9s %s\n' "$what" "$conns" "$rps" "$p50" "$p99" "$errs"
  done
  echo "  RSS after: $(rss_kib) KiB"
  kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
  PID=
}

echo "wrk -d$DURATION --latency, $(nproc) cores, debug builds (dependencies optimised)"
bench "before-tiny_http-$BEFORE_REV" "$BEFORE"
bench "after-axum" "$AFTER"
