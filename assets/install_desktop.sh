#!/usr/bin/env bash
# Install Dinoscope's desktop entry and icons for the current user (no root needed).
#
#   assets/install_desktop.sh [EXECUTABLE]
#
# EXECUTABLE is the program the menu entry runs (a file, or a bundle folder holding `dinoscope`).
# Without it: the PyInstaller bundle dist/dinoscope/dinoscope when it has been built (`make bundle`),
# else the repo's virtual-environment launcher .venv/bin/dinoscope (`make run` creates it).
#
# Writes, under ${XDG_DATA_HOME:-~/.local/share}:
#   icons/hicolor/256x256/apps/dinoscope.png
#   icons/hicolor/scalable/apps/dinoscope.svg
#   applications/dinoscope.desktop   (assets/dinoscope.desktop with Exec= made absolute, plus TryExec=)
# Re-running it overwrites those three files; deleting them uninstalls.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

# XDG base-directory spec: a relative XDG_DATA_HOME is invalid and must be ignored.
data_home="${XDG_DATA_HOME:-}"
if [[ "$data_home" != /* ]]; then
    data_home="$HOME/.local/share"
fi

# --- which executable the entry runs -------------------------------------------------------------
if [[ $# -ge 1 ]]; then
    exe="$1"
    [[ -d "$exe" ]] && exe="$exe/dinoscope"
    if [[ ! -f "$exe" || ! -x "$exe" ]]; then
        echo "install_desktop.sh: $exe is not an executable file" >&2
        exit 2
    fi
elif [[ -x "$repo/dist/dinoscope/dinoscope" ]]; then
    exe="$repo/dist/dinoscope/dinoscope"
elif [[ -x "$repo/.venv/bin/dinoscope" ]]; then
    exe="$repo/.venv/bin/dinoscope"
else
    echo "install_desktop.sh: no dinoscope executable found; build one with \`make bundle\` (or \`make run\`" >&2
    echo "for the .venv), or pass its path as the first argument" >&2
    exit 2
fi
exe="$(cd "$(dirname "$exe")" && pwd)/$(basename "$exe")"   # absolute; keeps the name (a symlink stays one)

# Desktop Entry spec: an Exec argument holding spaces or reserved characters is double-quoted, with
# " ` $ \ backslash-escaped inside the quotes; then the whole value gets the string escape \ -> \\.
exec_arg="$exe"
if [[ "$exe" =~ [^A-Za-z0-9_./+,:@=-] ]]; then
    q="${exe//\\/\\\\}"; q="${q//\"/\\\"}"; q="${q//\`/\\\`}"; q="${q//\$/\\\$}"
    exec_arg="\"$q\""
fi
exec_value="${exec_arg//\\/\\\\} %F"
tryexec_value="${exe//\\/\\\\}"

# --- install -----------------------------------------------------------------------------------
apps_dir="$data_home/applications"
png_dir="$data_home/icons/hicolor/256x256/apps"
svg_dir="$data_home/icons/hicolor/scalable/apps"
mkdir -p "$apps_dir" "$png_dir" "$svg_dir"

install -m 644 "$here/icons/dinoscope.png" "$png_dir/dinoscope.png"
install -m 644 "$here/icons/dinoscope.svg" "$svg_dir/dinoscope.svg"

desktop="$apps_dir/dinoscope.desktop"
tmp="$(mktemp "$apps_dir/.dinoscope.desktop.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
# ENVIRON (not awk -v) so awk does not process the backslashes a second time.
SCRIPT="$here/install_desktop.sh" EXEC_VALUE="$exec_value" TRYEXEC_VALUE="$tryexec_value" awk '
    NR == 1 { print "# Installed by " ENVIRON["SCRIPT"] "; re-run it to update, delete this file to uninstall." }
    /^# Template:/ { next }
    /^\[/ { in_entry = ($0 == "[Desktop Entry]") }
    in_entry && /^TryExec=/ { next }
    in_entry && /^Exec=/ { print "Exec=" ENVIRON["EXEC_VALUE"]; print "TryExec=" ENVIRON["TRYEXEC_VALUE"]; next }
    { print }
' "$here/dinoscope.desktop" > "$tmp"
chmod 644 "$tmp"
mv -f "$tmp" "$desktop"
trap - EXIT

if command -v update-desktop-database >/dev/null 2>&1; then
    update-desktop-database -q "$apps_dir" || true
fi
# Icon caches: bumping the theme folder's mtime makes GTK/Qt notice the new icon.
touch "$data_home/icons/hicolor" 2>/dev/null || true

echo "installed $desktop"
echo "  Exec=$exec_value"
echo "installed $png_dir/dinoscope.png"
echo "installed $svg_dir/dinoscope.svg"
