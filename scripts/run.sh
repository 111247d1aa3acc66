#!/usr/bin/env bash
# Sets up what ORFEAS Studio needs on this machine (first run only) and runs it.
#   scripts/run.sh                      open the desktop studio
#   scripts/run.sh image-to-3d IN -o OUT.glb    any `orfeas` command
# Builds in release mode (the first build takes a while); GPU text→image needs
# `ORFEAS_FEATURES=cuda` (NVIDIA) or `ORFEAS_FEATURES=metal` (Apple).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "Rust is not installed: get it from https://rustup.rs, then run this again." >&2
  exit 1
fi
# Linux desktop libraries for the window (X11/Wayland) and Vulkan; Debian/Ubuntu names.
if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in libxkbcommon-x11-0 libvulkan1 mesa-vulkan-drivers libwayland-client0 libxcursor1 libxrandr2 libxi6; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi
features=()
[ -n "${ORFEAS_FEATURES:-}" ] && features=(--features "$ORFEAS_FEATURES")
exec cargo run --release --locked "${features[@]}" --bin orfeas -- "$@"
