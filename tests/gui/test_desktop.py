"""Desktop integration: show in folder with its fallback, the environment of child processes, the desktop entry,
the command line's program name, plain error messages."""

from __future__ import annotations

import configparser
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.gui.desktop import child_environment, show_in_folder
from app.gui.resources import asset_path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="xdg-open and D-Bus are Linux's")


def _program(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_show_in_folder_opens_the_folder_when_no_file_manager_answers(qtbot, tmp_path, monkeypatch) -> None:
    """No file manager on D-Bus (here: no session bus at all): the folder is opened with xdg-open instead, and
    xdg-open gets the user's LD_LIBRARY_PATH back, not the bundle's."""
    photo = tmp_path / "pics" / "cat.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "xdg-open.txt"
    _program(bin_dir, "xdg-open", f'printf "%s\\n%s\\n" "$1" "$LD_LIBRARY_PATH" > "{seen}"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/dinoscope/_internal")
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/home/me/lib")
    messages: list[str] = []
    show_in_folder(str(photo), messages.append)
    qtbot.waitUntil(lambda: bool(messages), timeout=15000)
    assert messages == [f"Opened {photo.parent}"]
    assert seen.read_text().splitlines() == [str(photo.parent), "/home/me/lib"]


def test_show_in_folder_says_so_when_nothing_can_open_it(qtbot, tmp_path, monkeypatch) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # neither dbus-send nor xdg-open
    messages: list[str] = []
    show_in_folder(str(photo), messages.append)
    qtbot.waitUntil(lambda: bool(messages), timeout=15000)
    assert messages == [f"No file manager could open {tmp_path}"]


def test_child_processes_get_the_users_library_path(monkeypatch) -> None:
    bundle = {"LD_LIBRARY_PATH": "/opt/dinoscope/_internal", "LD_LIBRARY_PATH_ORIG": "/home/me/lib", "HOME": "/h"}
    assert child_environment(bundle) == {"LD_LIBRARY_PATH": "/home/me/lib", "HOME": "/h"}
    monkeypatch.setattr("sys.frozen", True, raising=False)  # the user had none: the bundle's is dropped
    assert child_environment({"LD_LIBRARY_PATH": "/opt/dinoscope/_internal", "HOME": "/h"}) == {"HOME": "/h"}
    monkeypatch.delattr("sys.frozen")
    assert child_environment({"LD_LIBRARY_PATH": "/usr/local/lib"}) == {"LD_LIBRARY_PATH": "/usr/local/lib"}


def test_training_child_process_gets_the_users_library_path(qtbot, tmp_path, monkeypatch) -> None:
    from PySide6.QtCore import QSettings

    from app.gui.library_service import LibraryService
    from app.gui.widgets.training_panel import TrainingPanel

    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/dinoscope/_internal")
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/home/me/lib")
    panel = TrainingPanel(LibraryService(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)))
    qtbot.addWidget(panel)
    panel.data.setEditText(str(tmp_path))
    panel.out.setText(str(tmp_path / "run"))
    process = panel.start()
    env = process.processEnvironment()
    assert env.value("LD_LIBRARY_PATH") == "/home/me/lib" and not env.contains("LD_LIBRARY_PATH_ORIG")
    process.kill()
    qtbot.waitUntil(lambda: panel.process is None, timeout=30000)


def _desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(asset_path("dinoscope.desktop"), encoding="utf-8")
    return parser["Desktop Entry"]


MAIN_CATEGORIES = {"AudioVideo", "Audio", "Video", "Development", "Education", "Game", "Graphics", "Network",
                   "Office", "Science", "Settings", "System", "Utility"}
MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".jpe": "image/jpeg", ".png": "image/png",
        ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp", ".gif": "image/gif",
        ".heic": "image/heic", ".heif": "image/heif", ".avif": "image/avif", ".dng": "image/x-adobe-dng",
        ".cr2": "image/x-canon-cr2", ".cr3": "image/x-canon-cr3", ".nef": "image/x-nikon-nef",
        ".arw": "image/x-sony-arw", ".orf": "image/x-olympus-orf", ".rw2": "image/x-panasonic-rw2",
        ".raf": "image/x-fuji-raf", ".pef": "image/x-pentax-pef", ".srw": "image/x-samsung-srw"}


def test_desktop_entry_has_one_main_category_and_every_format_the_app_reads() -> None:
    from engine.imageio import SUPPORTED_EXTENSIONS

    entry = _desktop_entry()
    categories = [c for c in entry["Categories"].split(";") if c]
    assert [c for c in categories if c in MAIN_CATEGORIES] == ["Graphics"]
    mimes = set(entry["MimeType"].split(";"))
    for suffix in SUPPORTED_EXTENSIONS | {".heic", ".heif", ".avif"}:
        assert MIME[suffix] in mimes, suffix
    assert entry["Exec"].endswith("%F")


def test_cli_help_names_the_program_the_user_ran(monkeypatch, capsys) -> None:
    from app.cli import build_parser, program_name

    python = sys.executable
    monkeypatch.setattr("sys.frozen", True, raising=False)
    monkeypatch.setattr("sys.executable", "/opt/dinoscope/dinoscope-cli")
    assert program_name() == "dinoscope-cli"
    text = build_parser().format_help()
    assert text.startswith("usage: dinoscope-cli") and "python -m app" not in text
    assert "dinoscope-cli models download" in text
    monkeypatch.delattr("sys.frozen")
    assert program_name("/work/app/__main__.py") == "python -m app"
    assert program_name("/usr/local/bin/dinoscope") == "dinoscope"
    out = subprocess.run([python, "-m", "app", "--help"], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONPATH": "."})
    assert out.stdout.startswith("usage: python -m app"), out.stderr


def test_errors_are_plain_unless_something_crashed(qtbot, family_window) -> None:
    win = family_window
    win.log_path = Path("/tmp/dinoscope.log")
    box = win.error("Cannot open the library", "‘x’ is not a valid library name")
    assert box.text() == "‘x’ is not a valid library name" and box.isVisible()
    assert box.windowModality() == Qt.WindowModality.WindowModal
    box.close()
    box = win.error("Search failed", "list index out of range", "Traceback (most recent call last): ...")
    assert "Details are in the log: /tmp/dinoscope.log" in box.text()
    box.close()
    # A task's failure carries its traceback only when it was a crash, not a bad file or a missing model.
    from app.gui.workers import Task
    from engine.imageio import ImageDecodeError

    def fails(exc):
        def fn(_report, _cancelled):
            raise exc
        return fn

    for exc, crash in ((ImageDecodeError("/p/x.jpg", "not an image"), False), (OSError("disk full"), False),
                       (TypeError("unsupported operand"), True)):
        task = Task(fails(exc))
        with qtbot.waitSignal(task.signals.failed) as failed:
            win.runner.start(task)
        assert failed.args[0] == str(exc) and bool(failed.args[1]) is crash


def test_folder_pickers_open_in_the_pictures_folder(qtbot, tmp_path, monkeypatch) -> None:
    from PySide6.QtCore import QStandardPaths

    from app.gui.widgets.library_panel import pictures_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    assert Path(pictures).parent == tmp_path
    assert pictures_folder() == str(tmp_path)  # no Pictures folder yet: home
    Path(pictures).mkdir()
    assert pictures_folder() == pictures
