#!/usr/bin/env bash
# Windows x86_64: a setup .exe (NSIS) and a portable .zip in dist/, cross-built
# on Debian 12 with Debian's rustc-web/cargo-web 1.96 and rust-web-src
# (-Zbuild-std, as Debian ships no prebuilt std for windows-gnu), linked by
# mingw-w64. ORFEAS_PROFILE=dev|release (default release).
#
# Long: std plus every dependency (candle, wgpu, eframe) for a second target;
# about an hour for release on 2 cores. Its own target folder (target-windows/)
# keeps it from invalidating the native build. ORFEAS_WINDOWS_EXE=PATH packages
# an orfeas.exe built before instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DIST=$ROOT/dist
STAGE=$DIST/stage/windows
TRIPLE=x86_64-pc-windows-gnu
PROFILE=${ORFEAS_PROFILE:-release}
case "$PROFILE" in
  release) PROFILE_DIR=release ;;
  dev) PROFILE_DIR=debug ;;
  *) echo "ORFEAS_PROFILE must be release or dev, not '$PROFILE'" >&2; exit 2 ;;
esac
WIN_TARGET_DIR=${ORFEAS_WINDOWS_TARGET_DIR:-$ROOT/target-windows}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
log() { echo "== $*" >&2; }

need=()
for pair in /usr/bin/cargo:cargo-web /usr/bin/rustc:rustc-web x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64 \
  x86_64-w64-mingw32-g++:g++-mingw-w64-x86-64 makensis:nsis zip:zip rsvg-convert:librsvg2-bin; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
dpkg -s rust-web-src >/dev/null 2>&1 || need+=(rust-web-src)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian's cargo-web must be the one that runs (rustup's cargo is usually first on PATH).
/usr/bin/cargo --version | grep -q '^cargo 1\.9[6-9]' \
  || { echo "/usr/bin/cargo is not Debian's cargo-web >= 1.96: $(/usr/bin/cargo --version)" >&2; exit 1; }
library=$(dpkg -L rust-web-src | grep -E '^/usr/src/rustc-[0-9.]+/library$' | head -n1)
[ -d "$library/std" ] || { echo "rust-web-src has no library/ folder ($library)" >&2; exit 1; }

export RUSTC_BOOTSTRAP=1 # -Zbuild-std on a stable toolchain
export __CARGO_TESTS_ONLY_SRC_ROOT=$library
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc CXX_x86_64_pc_windows_gnu=x86_64-w64-mingw32-g++
export AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar
# The dev profile's line tables make a huge PE; the installer needs none.
export CARGO_PROFILE_DEV_DEBUG=false
if [ -n "${ORFEAS_WINDOWS_EXE:-}" ]; then
  exe=$ORFEAS_WINDOWS_EXE # package a prebuilt orfeas.exe
else
  log "cross-building orfeas.exe ($PROFILE, $TRIPLE) into $WIN_TARGET_DIR"
  /usr/bin/cargo build --locked --profile "$PROFILE" --bin orfeas --target "$TRIPLE" \
    -Zbuild-std=std,panic_abort --target-dir "$WIN_TARGET_DIR"
  exe=$WIN_TARGET_DIR/$TRIPLE/$PROFILE_DIR/orfeas.exe
fi

# Icon and licences: the same sources as the Linux packages.
rm -rf "$STAGE"
mkdir -p "$STAGE/icons"
for size in 16 24 32 48 64 256; do
  rsvg-convert -w "$size" -h "$size" assets/icons/orfeas.svg -o "$STAGE/icons/$size.png"
done
convert "$STAGE"/icons/{16,24,32,48,64,256}.png "$STAGE/orfeas.ico"
rm -rf "$STAGE/icons"
cp "$exe" "$STAGE/orfeas.exe"
x86_64-w64-mingw32-strip "$STAGE/orfeas.exe"
# CRLF for Notepad.
for f in LICENSE-MIT LICENSE-APACHE; do sed 's/$/\r/' "$f" >"$STAGE/$f.txt"; done
if [ -f "$DIST/stage/THIRD-PARTY-LICENSES.txt" ]; then
  sed 's/$/\r/' "$DIST/stage/THIRD-PARTY-LICENSES.txt" >"$STAGE/THIRD-PARTY-LICENSES.txt"
else
  cargo license --avoid-build-deps --avoid-dev-deps | sed 's/$/\r/' >"$STAGE/THIRD-PARTY-LICENSES.txt"
fi
sed 's/$/\r/' >"$STAGE/README.txt" <<EOF
ORFEAS Studio $VERSION for Windows (x86_64).

orfeas.exe opens the studio; in a terminal, orfeas.exe --help lists the commands
(image-to-3d, text-to-image, render, serve, ...). Needs a DirectX 12, Vulkan or
OpenGL driver; --backend gl|vulkan|dx12 forces one.
EOF

mkdir -p "$DIST"
zip_name="orfeas-studio-$VERSION-windows-x86_64"
rm -f "$DIST/$zip_name.zip"
(cd "$DIST/stage" && rm -rf "$zip_name" && cp -r windows "$zip_name" && zip -qr "$DIST/$zip_name.zip" "$zip_name" && rm -rf "$zip_name")
log "wrote $DIST/$zip_name.zip"

setup="$DIST/orfeas-studio-$VERSION-setup.exe"
makensis -V2 -DVERSION="$VERSION" -DSRC="$STAGE" -DOUT="$setup" installers/windows/orfeas.nsi
log "wrote $setup"
