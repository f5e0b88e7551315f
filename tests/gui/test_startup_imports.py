"""The window paints before torch loads: a double-click shows the window in about half a second, and torch, the
model and the library's index load right after. Checked in a fresh process, as the desktop starts it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import sys
from PySide6.QtCore import QEvent, QObject, QSettings
from PySide6.QtWidgets import QApplication
app = QApplication(sys.argv[:1])
from app.gui.main_window import MainWindow
settings = QSettings(sys.argv[1], QSettings.Format.IniFormat)
win = MainWindow(settings=settings, first_start_sample=False, open_library_now=False)
seen = {}

class FirstPaint(QObject):
    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.Type.Paint and "torch" not in seen:
            seen["torch"] = "torch" in sys.modules
            app.quit()
        return False

probe = FirstPaint()
win.installEventFilter(probe)
win.show()
app.exec()
print("torch before paint:", seen.get("torch"))
"""


def test_torch_is_not_imported_before_the_first_paint(tmp_path: Path) -> None:
    env = dict(os.environ, DINOSCOPE_HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="offscreen", DINOSCOPE_WATCH="0")
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "settings.ini")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch before paint: False" in out.stdout, out.stdout + out.stderr[-2000:]


def test_the_default_text_model_is_the_zoos() -> None:
    from app.gui.text_service import DEFAULT_SOURCE
    from engine.models import zoo

    assert DEFAULT_SOURCE == zoo.DINOTXT
