#!/usr/bin/env bash
# The real studio window on OpenGL with Vulkan hidden: `orfeas view MESH` must
# stay up (no panic), the window must show the mesh, and a screenshot is kept.
#   usage: tests/tools/gl_window_smoke.sh ORFEAS_BINARY MESH OUT.png [--wireframe-via-env]
# Run it under Xvfb (xvfb-run -a -s "-screen 0 1280x800x24" ...); needs ImageMagick's `import`.
set -euo pipefail
bin=$1 mesh=$2 out=$3
data=$(mktemp -d)
log=$data/orfeas.log
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
env -u WGPU_BACKEND -u ORFEAS_BACKEND VK_ICD_FILENAMES=/nonexistent.json ORFEAS_DATA_DIR=$data ORFEAS_LOG=info \
  "$bin" view "$mesh" >"$log" 2>&1 &
pid=$!
# The first frame on llvmpipe takes a while (shader compilation on the CPU).
for _ in $(seq 1 40); do
  sleep 1
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "FAIL: the studio exited" >&2; exit 1; }
  grep -q "viewport on" "$log" && break
done
sleep 4
kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "FAIL: the studio exited" >&2; exit 1; }
import -window root "$out"
if grep -qE "panicked|3D view cannot start" "$log"; then
  cat "$log" >&2
  echo "FAIL: the log reports a panic or a viewport failure" >&2
  exit 1
fi
grep "viewport on" "$log" >&2 || { cat "$log" >&2; echo "FAIL: the viewport never started" >&2; exit 1; }
# The screenshot must not be one flat colour (a black or empty window).
colours=$(convert "$out" -format '%k' info:)
[ "$colours" -gt 50 ] || { echo "FAIL: the screenshot has only $colours colours" >&2; exit 1; }
echo "ok: the studio shows $mesh on GL ($colours colours in $out)" >&2
