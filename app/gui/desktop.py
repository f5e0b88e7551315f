"""Talking to the desktop: show a photo in the file manager, and the environment child processes start with.

A PyInstaller bundle points LD_LIBRARY_PATH at its own libraries; xdg-open, dbus-send or the trainer started with
it would load the bundle's libraries instead of the system's. PyInstaller keeps the user's value in
LD_LIBRARY_PATH_ORIG: children get that back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QUrl
from PySide6.QtGui import QDesktopServices

BUNDLE_VARS = ("LD_LIBRARY_PATH",)


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) as the user's session had it, before a bundle changed it."""
    env = dict(os.environ if env is None else env)
    for var in BUNDLE_VARS:
        original = env.pop(var + "_ORIG", None)
        if original is not None:
            env[var] = original
        elif getattr(sys, "frozen", False):
            env.pop(var, None)  # the bundle set it and the user had none
    return env


def child_process_environment() -> QProcessEnvironment:
    qenv = QProcessEnvironment()
    for k, v in child_environment().items():
        qenv.insert(k, v)
    return qenv


class FolderReveal(QObject):
    """Show a file in its folder: ask the file manager over D-Bus to select it; if none answers, open the folder
    (xdg-open); if that fails too, say so. ``done`` gets the sentence for the status bar."""

    def __init__(self, path: str, done: Callable[[str], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path, self.folder, self.done = path, str(Path(path).parent), done
        self.process: QProcess | None = None
        self.ended = False

    def start(self) -> None:
        if not sys.platform.startswith("linux"):
            ok = QDesktopServices.openUrl(QUrl.fromLocalFile(self.folder))
            self._finish("" if ok else self._nothing())
            return
        uri = QUrl.fromLocalFile(self.path).toString()
        self._run("dbus-send", ["--session", "--print-reply", "--reply-timeout=3000",
                                "--dest=org.freedesktop.FileManager1", "--type=method_call",
                                "/org/freedesktop/FileManager1", "org.freedesktop.FileManager1.ShowItems",
                                f"array:string:{uri}", "string:"], self._open_folder)

    def _run(self, program: str, args: list[str], on_fail: Callable[[], None] | None) -> None:
        proc = QProcess(self)
        proc.setProcessEnvironment(child_process_environment())
        self.process = proc

        def finished(code: int, _status) -> None:
            if code == 0:
                self._finish("")
            elif on_fail is not None:
                on_fail()
            else:
                self._finish(self._nothing())

        def failed(err: QProcess.ProcessError) -> None:
            if err == QProcess.ProcessError.FailedToStart:  # not installed: no finished signal follows
                on_fail() if on_fail is not None else self._finish(self._nothing())

        proc.finished.connect(finished)
        proc.errorOccurred.connect(failed)
        proc.start(program, args)

    def _open_folder(self) -> None:
        self._run("xdg-open", [self.folder], None)

    def _nothing(self) -> str:
        return f"No file manager could open {self.folder}"

    def _finish(self, message: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.done(message or f"Opened {self.folder}")
        self.deleteLater()


def show_in_folder(path: str, done: Callable[[str], None], parent: QObject | None = None) -> FolderReveal:
    reveal = FolderReveal(path, done, parent)
    reveal.start()
    return reveal
