#!/usr/bin/env bash
# macOS: "ORFEAS Studio.app" and a DMG in dist/. UNTESTED: written on Linux,
# where it only assembles the bundle layout (Info.plist, iconset, no binary,
# no .icns, no DMG) so the layout can be checked; run it on a Mac for the
# real thing:
#
#   rustup target add aarch64-apple-darwin x86_64-apple-darwin   # once
#   installers/macos/build.sh            # universal binary (both archs, lipo)
#   ORFEAS_FEATURES=metal installers/macos/build.sh
#
# Needs Xcode's command-line tools (lipo, iconutil, hdiutil, codesign) and
# rsvg-convert (brew install librsvg) for the icon. The bundle is signed
# ad hoc (codesign -s -); notarising needs an Apple developer identity.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DIST=$ROOT/dist
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
APP="$DIST/macos/ORFEAS Studio.app"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
log() { echo "== $*" >&2; }

rm -rf "$DIST/macos"
mkdir -p "$APP/Contents/MacOS" "$APP/Contents/Resources"
sed "s/@VERSION@/$VERSION/g" installers/macos/Info.plist.in >"$APP/Contents/Info.plist"
printf 'APPL????' >"$APP/Contents/PkgInfo"

# The iconset iconutil expects: 16…512 pt at 1× and 2×.
iconset="$DIST/macos/orfeas.iconset"
mkdir -p "$iconset"
for size in 16 32 128 256 512; do
  rsvg-convert -w "$size" -h "$size" assets/icons/orfeas.svg -o "$iconset/icon_${size}x${size}.png"
  rsvg-convert -w $((size * 2)) -h $((size * 2)) assets/icons/orfeas.svg \
    -o "$iconset/icon_${size}x${size}@2x.png"
done
cp LICENSE-MIT LICENSE-APACHE "$APP/Contents/Resources/"

if [ "$(uname -s)" != Darwin ]; then
  python3 -c 'import plistlib,sys; plistlib.load(open(sys.argv[1],"rb"))' "$APP/Contents/Info.plist"
  log "not on macOS: wrote the bundle layout only ($APP, $iconset); build on a Mac for the binary, .icns and DMG"
  exit 0
fi

features=()
[ -n "${ORFEAS_FEATURES:-}" ] && features=(--features "$ORFEAS_FEATURES")
for target in aarch64-apple-darwin x86_64-apple-darwin; do
  log "cargo build --release --target $target"
  cargo build --locked --release --bin orfeas --target "$target" ${features[@]+"${features[@]}"}
done
lipo -create -output "$APP/Contents/MacOS/orfeas" \
  "$TARGET_DIR/aarch64-apple-darwin/release/orfeas" "$TARGET_DIR/x86_64-apple-darwin/release/orfeas"
iconutil -c icns -o "$APP/Contents/Resources/orfeas.icns" "$iconset"
plutil -lint "$APP/Contents/Info.plist"
codesign --force --deep -s - "$APP"

staging="$DIST/macos/dmg"
mkdir -p "$staging"
cp -R "$APP" "$staging/"
ln -s /Applications "$staging/Applications"
dmg="$DIST/ORFEAS-Studio-$VERSION-macos-universal.dmg"
hdiutil create -volname "ORFEAS Studio" -srcfolder "$staging" -ov -format UDZO "$dmg"
log "wrote $dmg"
