#!/usr/bin/env bash
# Builds the .deb, checks it as a user's machine would see it, and removes it:
# lintian (no errors), dpkg -i, the installed `orfeas image-to-3d` on an example
# picture → a GLB the Khronos glTF-Validator accepts, the desktop file validates
# and its icon is installed, `orfeas --version`, then dpkg -r leaves nothing.
#
# Needs root (or sudo) for dpkg, and the tools of scripts/install-tools.sh
# (ORFEAS_NODE_MODULES for the validator). ORFEAS_PROFILE=dev builds faster (CI).
# ORFEAS_PREBUILT=PATH packages an existing binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
APP_ID=org.orfeas.Studio
PKG=orfeas-studio
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*" >&2; }

for tool in lintian desktop-file-validate dpkg-deb node; do
  command -v "$tool" >/dev/null || fail "$tool is missing; run: eval \"\$(scripts/install-tools.sh)\""
done
[ -d "${ORFEAS_NODE_MODULES:-}/gltf-validator" ] \
  || fail "ORFEAS_NODE_MODULES has no gltf-validator; run: eval \"\$(scripts/install-tools.sh)\""
if dpkg -s "$PKG" >/dev/null 2>&1; then
  fail "$PKG is already installed; remove it first (dpkg -r $PKG) so the test starts clean"
fi

rm -f dist/${PKG}_*.deb
installers/build.sh deb
deb=$(ls dist/${PKG}_*.deb)
pass "built $deb ($(du -h "$deb" | cut -f1))"

# Errors fail the build; warnings are printed for the record.
lintian --fail-on error --tag-display-limit 0 "$deb" || fail "lintian reports errors"
pass "lintian: no errors"

dpkg-deb -c "$deb" | awk '{print $6}' | sort >"$ROOT/dist/deb-contents.txt"
for path in ./usr/bin/orfeas ./usr/share/applications/$APP_ID.desktop \
  ./usr/share/metainfo/$APP_ID.metainfo.xml ./usr/share/icons/hicolor/256x256/apps/$APP_ID.png \
  ./usr/share/icons/hicolor/scalable/apps/$APP_ID.svg ./usr/share/doc/$PKG/copyright \
  ./usr/share/doc/$PKG/THIRD-PARTY-LICENSES.txt; do
  grep -qx "$path" "$ROOT/dist/deb-contents.txt" || fail "the package lacks $path"
done
pass "the package holds the binary, desktop file, metainfo, icons and licences"

tmp=$(mktemp -d)
cleanup() {
  if dpkg -s "$PKG" >/dev/null 2>&1; then $SUDO dpkg -r "$PKG" >/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Dependencies from the archive where they are missing (a fresh CI machine).
if ! $SUDO dpkg -i "$deb"; then
  $SUDO apt-get install -y -qq -f >&2 || fail "dpkg -i failed and apt-get -f could not fix it"
fi
dpkg -s "$PKG" | grep -q '^Status: install ok installed' || fail "$PKG is not installed"
pass "dpkg -i installed $PKG"

[ "$(command -v orfeas)" = /usr/bin/orfeas ] || fail "orfeas on PATH is $(command -v orfeas)"
version=$(/usr/bin/orfeas --version)
echo "$version" | grep -q "^orfeas " || fail "orfeas --version printed: $version"
echo "$version" | grep -q "commit:" || fail "orfeas --version has no commit: $version"
pass "orfeas --version: $(echo "$version" | head -n1)"

desktop=/usr/share/applications/$APP_ID.desktop
desktop-file-validate "$desktop" || fail "desktop-file-validate rejects $desktop"
icon=$(sed -n 's/^Icon=//p' "$desktop")
[ -f "/usr/share/icons/hicolor/256x256/apps/$icon.png" ] || fail "icon $icon is not installed"
for mime in model/gltf-binary model/obj model/stl model/x-ply image/png; do
  grep -q "^MimeType=.*$mime;" "$desktop" || fail "the desktop file does not open $mime"
done
if command -v update-desktop-database >/dev/null; then
  grep -q "$APP_ID.desktop" /usr/share/applications/mimeinfo.cache \
    || fail "mimeinfo.cache does not list $APP_ID.desktop after install"
fi
pass "desktop file valid, icon $icon installed, MIME types registered"

ORFEAS_DATA_DIR=$tmp/data /usr/bin/orfeas image-to-3d assets/examples/object.png -o "$tmp/object.glb" \
  || fail "the installed orfeas image-to-3d failed"
node tests/tools/validate_gltf.mjs "$tmp/object.glb" | tee "$tmp/validator.json"
grep -q '"errors":0' "$tmp/validator.json" || fail "glTF-Validator reports errors"
pass "installed orfeas image-to-3d wrote a glTF-Validator-clean GLB"

listed=$(dpkg -L "$PKG" | grep -v '^/\.$')
$SUDO dpkg -r "$PKG"
dpkg -s "$PKG" 2>/dev/null | grep -q '^Status: install ok installed' && fail "$PKG is still installed"
left=""
while read -r path; do
  # Shared directories (/usr/share/icons/...) stay; every file must go.
  if [ -e "$path" ] && [ ! -d "$path" ]; then left+="$path "; fi
done <<<"$listed"
[ -z "$left" ] || fail "dpkg -r left files behind: $left"
[ ! -e /usr/bin/orfeas ] || fail "/usr/bin/orfeas is still there"
if [ -f /usr/share/applications/mimeinfo.cache ]; then
  ! grep -q "$APP_ID.desktop" /usr/share/applications/mimeinfo.cache \
    || fail "mimeinfo.cache still lists $APP_ID.desktop"
fi
pass "dpkg -r removed every file it installed"
echo "deb test passed: $deb" >&2
