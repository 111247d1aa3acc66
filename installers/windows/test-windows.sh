#!/usr/bin/env bash
# Tests the Windows installer under Wine (Debian's wine 8) in a throw-away
# prefix: silent install, Start-menu entry, uninstall registration, the
# installed orfeas.exe turning a picture into a glTF-Validator-clean GLB,
# then the silent uninstall removing all of it.
#
# Wine 8 lacks bcryptprimitives.dll (Rust's std imports ProcessPrng from it):
# a test-only shim (installers/windows/wine-shim/) goes into the prefix's
# system32, never into the installer.
#   usage: installers/windows/test-windows.sh [setup.exe]   (default: build it)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*" >&2; }
command -v wine >/dev/null || fail "wine is missing (apt-get install wine wine64)"
[ -d "${ORFEAS_NODE_MODULES:-}/gltf-validator" ] || fail "ORFEAS_NODE_MODULES has no gltf-validator"

setup=${1:-}
if [ -z "$setup" ]; then
  installers/windows/build.sh
  setup=$(ls -t dist/orfeas-studio-*-setup.exe | head -n1)
fi
[ -f "$setup" ] || fail "no setup at $setup"

tmp=$(mktemp -d)
trap 'wineserver -k 2>/dev/null || true; rm -rf "$tmp"' EXIT
export WINEPREFIX=$tmp/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
wineboot -i >/dev/null 2>&1
x86_64-w64-mingw32-gcc -O2 -shared -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
  installers/windows/wine-shim/bcryptprimitives.c installers/windows/wine-shim/bcryptprimitives.def -lbcrypt

inst="$WINEPREFIX/drive_c/Program Files/ORFEAS Studio"
menu="$WINEPREFIX/drive_c/ProgramData/Microsoft/Windows/Start Menu/Programs/ORFEAS Studio"
key='HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\OrfeasStudio'

wine "$setup" /S
wineserver -w
[ -f "$inst/orfeas.exe" ] || fail "setup /S did not install orfeas.exe"
[ -f "$inst/uninstall.exe" ] || fail "no uninstaller"
[ -f "$menu/ORFEAS Studio.lnk" ] || fail "no Start-menu entry in $menu"
wine reg query "$key" /v UninstallString >/dev/null 2>&1 || fail "not registered under $key"
wine reg query 'HKLM\Software\Classes\.glb\OpenWithProgids' /v OrfeasStudio.File >/dev/null 2>&1 \
  || fail ".glb is not associated"
pass "silent install: files, Start menu, uninstall entry, file associations"

wine "$inst/orfeas.exe" --version | tee "$tmp/version.txt"
grep -q '^orfeas ' "$tmp/version.txt" || fail "orfeas.exe --version failed"
cp assets/examples/object.png "$tmp/object.png"
ORFEAS_DATA_DIR='C:\orfeas-data' wine "$inst/orfeas.exe" image-to-3d "Z:$tmp/object.png" -o "Z:$tmp/object.glb" \
  || fail "orfeas.exe image-to-3d failed under Wine"
node tests/tools/validate_gltf.mjs "$tmp/object.glb" | tee "$tmp/validator.json"
grep -q '"errors":0' "$tmp/validator.json" || fail "glTF-Validator reports errors"
pass "the installed orfeas.exe wrote a valid GLB under Wine"

wine "$inst/uninstall.exe" /S
wineserver -w
# The NSIS uninstaller re-runs itself from %TEMP%; give it a moment to finish.
for _ in $(seq 1 30); do [ -e "$inst" ] || break; sleep 1; done
[ ! -e "$inst" ] || fail "uninstall left $(ls "$inst")"
[ ! -e "$menu" ] || fail "uninstall left the Start-menu folder"
! wine reg query "$key" >/dev/null 2>&1 || fail "uninstall left $key"
pass "silent uninstall removed files, Start menu and registry entries"
echo "windows installer test passed: $setup" >&2
