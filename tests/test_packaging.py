"""Packaging files: the desktop entry, the icon, the PyInstaller spec and install_desktop.sh.

Fast checks only; building the bundle itself takes minutes (`make bundle` does it and smoke-tests it).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
DESKTOP = ASSETS / "dinoscope.desktop"
ICON_PNG = ASSETS / "icons" / "dinoscope.png"
ICON_SVG = ASSETS / "icons" / "dinoscope.svg"
SPEC = ROOT / "pyinstaller.spec"
INSTALL = ASSETS / "install_desktop.sh"

REQUIRED_KEYS = {"Type", "Name", "GenericName", "Comment", "Exec", "Icon", "Terminal", "Categories",
                 "MimeType", "StartupWMClass"}


def read_desktop(path: Path) -> configparser.SectionProxy:
    # No interpolation (Exec holds %F) and case-sensitive keys, as the Desktop Entry spec wants.
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string(path.read_text(encoding="utf-8"))
    assert parser.sections() == ["Desktop Entry"]
    return parser["Desktop Entry"]


def exec_program(entry: configparser.SectionProxy) -> str:
    """The program of an Exec= value, unquoted as the Desktop Entry spec says (not quite shell rules)."""
    value = entry["Exec"].replace("\\\\", "\\")  # string-level escape first: \\ -> \
    if not value.startswith('"'):
        return value.split(" ", 1)[0]
    out, i = [], 1
    while value[i] != '"':
        if value[i] == "\\":  # inside quotes, \ escapes " ` $ and \
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


# --- desktop entry --------------------------------------------------------------------------------------

def test_desktop_entry_template() -> None:
    entry = read_desktop(DESKTOP)
    assert set(entry) >= REQUIRED_KEYS
    assert entry["Type"] == "Application"
    assert entry["Name"] == "Dinoscope"
    assert entry["Terminal"] == "false"
    assert "dinoscope" in entry["Exec"]
    assert entry["Exec"].endswith("%F")
    assert entry["StartupWMClass"] == "dinoscope"
    for category in ("Graphics", "Photography", "Viewer"):
        assert category in entry["Categories"].split(";")
    for mime in ("image/jpeg", "image/png", "image/webp", "image/tiff", "image/heic"):
        assert mime in entry["MimeType"].split(";")
    # Lists end with ';' as the spec asks.
    assert entry["Categories"].endswith(";") and entry["MimeType"].endswith(";")
    # Icon= names a theme icon whose files we ship.
    assert (ASSETS / "icons" / f"{entry['Icon']}.png").is_file()
    assert (ASSETS / "icons" / f"{entry['Icon']}.svg").is_file()


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="desktop-file-utils not installed")
def test_desktop_entry_validates() -> None:
    result = subprocess.run(["desktop-file-validate", str(DESKTOP)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- icon -----------------------------------------------------------------------------------------------

def test_icon_png_is_256_and_not_blank() -> None:
    with Image.open(ICON_PNG) as im:
        assert im.size == (256, 256)
        rgba = np.asarray(im.convert("RGBA"))
    opaque = rgba[rgba[..., 3] == 255][:, :3]
    assert len(opaque) > 256 * 256 // 2  # the rounded tile covers most of the canvas
    assert len(np.unique(opaque, axis=0)) >= 16  # patches, tile, ring: many distinct colours
    assert rgba[0, 0, 3] == 0  # transparent outside the rounded corners


def test_icon_svg_is_well_formed() -> None:
    import xml.etree.ElementTree as ET

    root = ET.parse(ICON_SVG).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 256 256"


# --- PyInstaller spec -----------------------------------------------------------------------------------

def test_spec_compiles_and_names_its_entry_script() -> None:
    source = SPEC.read_text(encoding="utf-8")
    compile(source, "pyinstaller.spec", "exec")
    assert "app/_bundle_entry.py" in source or '"app" / "_bundle_entry.py"' in source
    assert (ROOT / "app" / "_bundle_entry.py").is_file()
    for excluded in ("transformers", "torchvision", "timm", "tensorboard", "pytest", "IPython", "tkinter"):
        assert f'"{excluded}"' in source


def test_bundle_entry_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "app" / "_bundle_entry.py"), "--help"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "usage: dinoscope" in result.stdout


# --- install_desktop.sh ---------------------------------------------------------------------------------

def run_install(data_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_DATA_HOME": str(data_home)}
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, env=env, timeout=60)


def check_installed(data_home: Path) -> configparser.SectionProxy:
    png = data_home / "icons" / "hicolor" / "256x256" / "apps" / "dinoscope.png"
    svg = data_home / "icons" / "hicolor" / "scalable" / "apps" / "dinoscope.svg"
    desktop = data_home / "applications" / "dinoscope.desktop"
    assert png.read_bytes() == ICON_PNG.read_bytes()
    assert svg.read_bytes() == ICON_SVG.read_bytes()
    entry = read_desktop(desktop)
    assert entry["Icon"] == "dinoscope"
    assert entry["Exec"].endswith(" %F")
    program = exec_program(entry)
    assert Path(program).is_absolute()
    assert os.access(program, os.X_OK)
    assert entry["TryExec"].replace("\\\\", "\\") == program
    return entry


def fake_executable(folder: Path) -> Path:
    folder.mkdir(parents=True)
    exe = folder / "dinoscope"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


def test_install_desktop_with_explicit_executable(tmp_path: Path) -> None:
    exe = fake_executable(tmp_path / "bundle")
    result = run_install(tmp_path / "data", str(exe))
    assert result.returncode == 0, result.stderr
    entry = check_installed(tmp_path / "data")
    assert entry["Exec"] == f"{exe} %F"
    assert "installed" in result.stdout


def test_install_desktop_accepts_a_bundle_folder_with_spaces(tmp_path: Path) -> None:
    exe = fake_executable(tmp_path / "my apps" / "dinoscope $1")
    result = run_install(tmp_path / "data", str(exe.parent))  # the folder, not the file
    assert result.returncode == 0, result.stderr
    entry = check_installed(tmp_path / "data")
    assert exec_program(entry) == str(exe)
    assert entry["Exec"].startswith('"')  # quoted, as the spec wants for paths with spaces
    if shutil.which("desktop-file-validate"):
        desktop = tmp_path / "data" / "applications" / "dinoscope.desktop"
        check = subprocess.run(["desktop-file-validate", str(desktop)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout


def test_install_desktop_defaults_to_bundle_or_venv(tmp_path: Path) -> None:
    candidates = [ROOT / "dist" / "dinoscope" / "dinoscope", ROOT / ".venv" / "bin" / "dinoscope"]
    found = [c for c in candidates if os.access(c, os.X_OK)]
    if not found:
        pytest.skip("neither a built bundle nor .venv/bin/dinoscope exists")
    result = run_install(tmp_path / "data")
    assert result.returncode == 0, result.stderr
    entry = check_installed(tmp_path / "data")
    assert exec_program(entry) == str(found[0])


def test_install_desktop_rejects_a_missing_executable(tmp_path: Path) -> None:
    result = run_install(tmp_path / "data", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "not an executable" in result.stderr
    assert not (tmp_path / "data" / "applications" / "dinoscope.desktop").exists()
