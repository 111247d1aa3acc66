#!/usr/bin/env bash
# Fleet throughput on one machine: a single-node NATS JetStream (Debian's
# nats-server), one front (`orfeas serve --queue … --no-work`) and 1, 2, then
# 3 workers (`--concurrency 1` each). For each worker count it submits JOBS
# image→3D jobs (the example photo, QUALITY) through the front, waits until
# all are finished and prints jobs/s. Then it times ONE job end to end (POST
# to finished, polled every 10 ms) through the queue with one worker and on a
# plain local `orfeas serve` (median of 7 each), and prints the difference:
# the queue path's added latency.
#
# usage: scripts/bench/fleet-throughput.sh [ORFEAS_BINARY] [JOBS] [QUALITY]
#        (defaults: target/release/orfeas, 24, standard)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/orfeas}
jobs=${2:-24}
quality=${3:-standard}
png=assets/examples/object.png
command -v nats-server >/dev/null || { echo "nats-server missing: eval \"\$(scripts/install-tools.sh)\"" >&2; exit 1; }
[ -x "$bin" ] || { echo "no orfeas binary at $bin: cargo build --release, or pass its path" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  # Nodes started in command substitutions leave their pid in $work/*.pid.
  for p in "${pids[@]}" $(cat "$work"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
wait_health() {
  for _ in $(seq 600); do curl -fs "$1/health" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$1 never answered" >&2; exit 1
}
# start_serve NAME [ARGS…]: starts a node, prints its base URL (its pid goes to $work/NAME.pid).
start_serve() {
  local name=$1; shift
  local port; port=$(free_port)
  ORFEAS_DATA_DIR="$work/data-$name" ORFEAS_LOG=warn "$bin" serve --bind "127.0.0.1:$port" \
    --no-rate-limit "$@" >"$work/$name.log" 2>&1 &
  echo $! >"$work/$name.pid"
  echo "http://127.0.0.1:$port"
}
submit() { curl -fs -X POST -H 'Content-Type: image/png' --data-binary "@$png" \
  "$1/api/image-to-3d?quality=$quality" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
# finished BASE IDS…: 0 when every job has finished, 1 while some run, 2 when one failed.
finished() {
  local base=$1; shift
  curl -fs "$base/api/jobs?limit=200" | python3 -c '
import json, sys
want = set(sys.argv[1:])
jobs = {str(j["id"]): j["state"] for j in json.load(sys.stdin)["jobs"]}
done = [i for i in want if jobs.get(i) not in (None, "queued", "running")]
bad = [i for i in done if jobs[i] != "succeeded"]
if bad:
    print("failed: " + " ".join(bad), file=sys.stderr)
    sys.exit(2)
sys.exit(0 if len(done) == len(want) else 1)' "$@"
}
# wait_done BASE IDS…: until every job finished (the list, every 0.25 s: a
# fleet node reads each record to list them, so polling it harder would take
# CPU from the workers); stops the script when one failed.
wait_done() {
  local base=$1 rc; shift
  while true; do
    rc=0; finished "$base" "$@" 2>/dev/null || rc=$?
    [ "$rc" = 0 ] && return 0
    [ "$rc" = 2 ] && { echo "a job failed; see $work/*.log" >&2; exit 1; }
    sleep 0.25
  done
}
# wait_one BASE ID: until that job finished, asking for it alone every 10 ms.
wait_one() {
  local state
  while true; do
    state=$(curl -fs "$1/api/jobs/$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null || true)
    case "$state" in
      succeeded) return 0 ;;
      failed|cancelled|interrupted) echo "job $2 $state; see $work/*.log" >&2; exit 1 ;;
    esac
    sleep 0.01
  done
}

nats_port=$(free_port)
nats-server -js -p "$nats_port" -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
queue="nats://127.0.0.1:$nats_port"
sleep 1
front=$(start_serve front --queue "$queue" --no-work --node-name front)
wait_health "$front"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
echo "binary: $bin; $jobs image→3D jobs at quality $quality per run"
workers=()
for n in 1 2 3; do
  w=$(start_serve "w$n" --queue "$queue" --node-name "w$n" --concurrency 1)
  wait_health "$w"
  workers+=("$w")
  t0=$(now)
  ids=()
  for _ in $(seq "$jobs"); do ids+=("$(submit "$front")"); done
  ts=$(now)
  wait_done "$front" "${ids[@]}"
  t1=$(now)
  python3 -c "import sys; n,j,t,s=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]); print(f'{n} worker(s): {j} jobs in {t:.1f} s = {j/t:.2f} jobs/s (all submitted after {s:.1f} s)')" \
    "$n" "$jobs" "$(echo "$t1 - $t0" | bc -l)" "$(echo "$ts - $t0" | bc -l)"
done
# One worker left for the latency run.
kill "$(cat "$work/w2.pid")" "$(cat "$work/w3.pid")"
sleep 2

one_job() {
  local base=$1 t0 t1 id
  t0=$(now); id=$(submit "$base"); wait_one "$base" "$id"; t1=$(now)
  echo "$t1 - $t0" | bc -l
}
# median_of BASE N: the median of N one-job latencies (after one warm-up job).
median_of() {
  local base=$1 n=$2 times=()
  one_job "$base" >/dev/null
  for _ in $(seq "$n"); do times+=("$(one_job "$base")"); done
  printf '%s\n' "${times[@]}" | sort -g | sed -n "$(( (n + 1) / 2 ))p"
}
fleet_s=$(median_of "$front" 7)
local_base=$(start_serve local)
wait_health "$local_base"
local_s=$(median_of "$local_base" 7)
python3 -c "import sys; f,l=float(sys.argv[1]),float(sys.argv[2]); print(f'one job, median of 7: queue {f*1000:.0f} ms, local serve {l*1000:.0f} ms, added by the queue {(f-l)*1000:.0f} ms')" \
  "$fleet_s" "$local_s"
