#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs its own tools (Debian, PyPI, npm),
# then format check, clippy, and every test of the workspace under Xvfb with Mesa's
# lavapipe Vulkan driver (the GL-fallback tests pick llvmpipe through EGL), then the
# real studio window on OpenGL with Vulkan hidden, then the .deb: build, lintian,
# install, run, remove (installers/test-deb.sh, debug build; ORFEAS_SKIP_DEB=1 skips it).
# Usage: scripts/check.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/install-tools.sh)"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# lavapipe (software Vulkan) for the renderer and UI tests; no GPU needed.
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
export RUST_BACKTRACE=1

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check

echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test" >&2
xvfb-run -a -s "-screen 0 1280x800x24" cargo test --workspace --locked "$@"

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
echo "== the studio window on OpenGL, Vulkan hidden" >&2
mkdir -p dist
ORFEAS_DATA_DIR="$PWD/dist/check-data" "$target_dir/debug/orfeas" image-to-3d assets/examples/object.png \
  -o dist/gl-smoke.glb \
  --quality draft >/dev/null
xvfb-run -a -s "-screen 0 1280x800x24" \
  tests/tools/gl_window_smoke.sh "$target_dir/debug/orfeas" dist/gl-smoke.glb dist/viewer-gl-smoke.png

if [ "${ORFEAS_SKIP_DEB:-0}" != 1 ]; then
  echo "== installers/test-deb.sh (the debug binary cargo test built)" >&2
  ORFEAS_PROFILE=dev ORFEAS_PREBUILT="$target_dir/debug/orfeas" installers/test-deb.sh
fi
