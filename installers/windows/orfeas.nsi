; ORFEAS Studio setup for Windows (NSIS 3, built on Linux with makensis).
; makensis -DVERSION=0.1.0 -DSRC=<staged folder> -DOUT=<setup.exe> orfeas.nsi
; Silent: setup.exe /S [/D=C:\path]; uninstall: uninstall.exe /S.
; A 64-bit installer: it runs under 64-bit-only Wine too, and orfeas.exe is x86_64 anyway.
Target amd64-unicode
!include "MUI2.nsh"

!ifndef VERSION
  !error "pass -DVERSION=x.y.z"
!endif
!ifndef SRC
  !error "pass -DSRC=folder with orfeas.exe"
!endif
!ifndef OUT
  !define OUT "orfeas-studio-${VERSION}-setup.exe"
!endif

!define APP "ORFEAS Studio"
!define PROGID "OrfeasStudio.File"
!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\OrfeasStudio"

Name "${APP} ${VERSION}"
OutFile "${OUT}"
InstallDir "$PROGRAMFILES64\${APP}"
InstallDirRegKey HKLM "${UNINSTALL_KEY}" "InstallLocation"
RequestExecutionLevel admin
SetCompressor /SOLID lzma

!define MUI_ICON "${SRC}\orfeas.ico"
!define MUI_UNICON "${SRC}\orfeas.ico"
!insertmacro MUI_PAGE_LICENSE "${SRC}\LICENSE-MIT.txt"
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

; One file type: .ext → ProgID, opened with `orfeas.exe open "%1"`.
!macro Associate EXT
  WriteRegStr HKLM "Software\Classes\.${EXT}\OpenWithProgids" "${PROGID}" ""
!macroend
!macro Unassociate EXT
  DeleteRegValue HKLM "Software\Classes\.${EXT}\OpenWithProgids" "${PROGID}"
!macroend

Section "Install"
  SetRegView 64
  SetShellVarContext all ; Start-menu entry for every user (the setup runs as admin)
  SetOutPath "$INSTDIR"
  File "${SRC}\orfeas.exe"
  File "${SRC}\orfeas.ico"
  File "${SRC}\LICENSE-MIT.txt"
  File "${SRC}\LICENSE-APACHE.txt"
  File "${SRC}\THIRD-PARTY-LICENSES.txt"
  File "${SRC}\README.txt"
  WriteUninstaller "$INSTDIR\uninstall.exe"

  CreateDirectory "$SMPROGRAMS\${APP}"
  CreateShortcut "$SMPROGRAMS\${APP}\${APP}.lnk" "$INSTDIR\orfeas.exe" "open" "$INSTDIR\orfeas.ico"
  CreateShortcut "$SMPROGRAMS\${APP}\Uninstall ${APP}.lnk" "$INSTDIR\uninstall.exe"

  WriteRegStr HKLM "Software\Classes\${PROGID}" "" "${APP} file"
  WriteRegStr HKLM "Software\Classes\${PROGID}\DefaultIcon" "" "$INSTDIR\orfeas.ico"
  WriteRegStr HKLM "Software\Classes\${PROGID}\shell\open\command" "" '"$INSTDIR\orfeas.exe" open "%1"'
  !insertmacro Associate glb
  !insertmacro Associate gltf
  !insertmacro Associate obj
  !insertmacro Associate ply
  !insertmacro Associate stl
  !insertmacro Associate png
  !insertmacro Associate jpg
  !insertmacro Associate jpeg
  !insertmacro Associate webp

  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayName" "${APP}"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "Publisher" "The ORFEAS Studio contributors"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayIcon" "$INSTDIR\orfeas.ico"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKLM "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKLM "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINSTALL_KEY}" "NoRepair" 1
SectionEnd

Section "Uninstall"
  SetRegView 64
  SetShellVarContext all
  Delete "$INSTDIR\orfeas.exe"
  Delete "$INSTDIR\orfeas.ico"
  Delete "$INSTDIR\LICENSE-MIT.txt"
  Delete "$INSTDIR\LICENSE-APACHE.txt"
  Delete "$INSTDIR\THIRD-PARTY-LICENSES.txt"
  Delete "$INSTDIR\README.txt"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  Delete "$SMPROGRAMS\${APP}\${APP}.lnk"
  Delete "$SMPROGRAMS\${APP}\Uninstall ${APP}.lnk"
  RMDir "$SMPROGRAMS\${APP}"
  !insertmacro Unassociate glb
  !insertmacro Unassociate gltf
  !insertmacro Unassociate obj
  !insertmacro Unassociate ply
  !insertmacro Unassociate stl
  !insertmacro Unassociate png
  !insertmacro Unassociate jpg
  !insertmacro Unassociate jpeg
  !insertmacro Unassociate webp
  DeleteRegKey HKLM "Software\Classes\${PROGID}"
  DeleteRegKey HKLM "${UNINSTALL_KEY}"
SectionEnd
