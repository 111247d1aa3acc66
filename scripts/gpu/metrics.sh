#!/usr/bin/env bash
# GPU check for the metrics sampler: on an NVIDIA box, runs `orfeas serve`,
# waits for /metrics, and prints the gpu_* series (plus CPU/memory for context).
# usage: scripts/gpu/metrics.sh PATH/TO/orfeas [BIND]     (BIND defaults to 127.0.0.1:5000)
set -euo pipefail
BIN=${1:?usage: $0 PATH/TO/orfeas [BIND]}
BIND=${2:-127.0.0.1:5000}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv || echo "nvidia-smi not found"
LOG=$(mktemp)
"$BIN" serve --bind "$BIND" >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 60); do
  if curl -fsS "http://$BIND/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 $PID 2>/dev/null; then echo "orfeas serve exited:"; cat "$LOG"; exit 1; fi
  sleep 0.5
done
sleep 3  # let the sampler take a few samples
METRICS=$(curl -fsS "http://$BIND/metrics")
echo "--- gpu_* series from /metrics"
echo "$METRICS" | grep -E '^gpu_' || { echo "NO GPU SERIES"; echo "--- log"; cat "$LOG"; exit 1; }
echo "--- context"
echo "$METRICS" | grep -E '^(cpu_usage_percent\{core="total"\}|memory_usage_bytes|app_uptime_seconds)'
