#!/usr/bin/env bash
# Installs the system packages and external checkers the test suite runs against:
# Xvfb + Mesa lavapipe (UI and renderer tests), NATS server (fleet tests), Mesa llvmpipe GL via EGL (the
# downlevel-adapter tests), Prometheus, promtool, Alertmanager, amtool, wrk, and
# lintian, desktop-file-utils, librsvg2-bin, dpkg-dev for the .deb test, ImageMagick for
# the GL window screenshot (Debian); a Python venv with trimesh, check-jsonschema and schemathesis (PyPI);
# the Khronos glTF-Validator (npm). Idempotent; prints `export` lines for the
# environment the tests read.      usage: eval "$(scripts/install-tools.sh)"
set -euo pipefail
TOOLS=${ORFEAS_TOOLS:-$HOME/.cache/orfeas-tools}
mkdir -p "$TOOLS"
need_apt=()
for pair in xvfb-run:xvfb promtool:prometheus amtool:prometheus-alertmanager wrk:wrk \
    pkg-config:pkg-config import:imagemagick nats-server:nats-server; do
  command -v "${pair%%:*}" >/dev/null || need_apt+=("${pair#*:}")
done
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -e /usr/share/vulkan/icd.d/lvp_icd.json ] \
  || need_apt+=(mesa-vulkan-drivers libvulkan1)
dpkg -s libxkbcommon-x11-0 >/dev/null 2>&1 || need_apt+=(libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6 libx11-xcb1 libegl1)
# GL/GLES through EGL (llvmpipe) and the installer checks.
for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri lintian desktop-file-utils librsvg2-bin dpkg-dev \
    fakeroot; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
dpkg -s python3-venv >/dev/null 2>&1 || python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi
if [ ! -x "$TOOLS/venv/bin/check-jsonschema" ] || [ ! -x "$TOOLS/venv/bin/schemathesis" ]; then
  echo "installing Python checkers into $TOOLS/venv" >&2
  python3 -m venv "$TOOLS/venv" >&2
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check \
    trimesh==4.5.3 numpy scipy networkx prometheus_client==0.21.1 check-jsonschema==0.39.0 schemathesis==4.32.5 >&2
fi
if [ ! -d "$TOOLS/node/node_modules/gltf-validator" ]; then
  echo "installing the Khronos glTF-Validator into $TOOLS/node" >&2
  mkdir -p "$TOOLS/node"
  (cd "$TOOLS/node" && npm init -y >/dev/null && npm install -s gltf-validator@2.0.0-dev.3.10 >/dev/null) >&2
fi
# check-jsonschema >= 0.30 ships the Compose spec (`--builtin-schema vendor.compose-spec`).
if ! "$TOOLS/venv/bin/check-jsonschema" --help 2>/dev/null | grep -q compose-spec; then
  echo "upgrading check-jsonschema in $TOOLS/venv (Compose spec schema)" >&2
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check check-jsonschema==0.39.0 >&2
fi
echo "export ORFEAS_TOOLS='$TOOLS'"
echo "export ORFEAS_PYTHON='$TOOLS/venv/bin/python'"
echo "export ORFEAS_NODE_MODULES='$TOOLS/node/node_modules'"
echo "export ORFEAS_REQUIRE_TOOLS=1"
