#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs its own tools (Debian, PyPI, npm),
# then format check, clippy, and every test of the workspace under Xvfb with Mesa's
# lavapipe Vulkan driver. Usage: scripts/check.sh [extra cargo test args]
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
