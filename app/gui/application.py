"""Start the desktop app: QApplication, logging to a file, the main window. Heavy imports wait for a worker."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

START = time.perf_counter()


def setup_logging() -> Path:
    from engine import data_home

    log_dir = data_home.home() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "dinoscope.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def run_gui(files: list[str] | None = None) -> int:
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from app.gui.main_window import MainWindow
    from app.gui.resources import asset_path

    log_path = setup_logging()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Dinoscope")
    app.setOrganizationName("Dinoscope")
    app.setDesktopFileName("dinoscope")
    app.setWindowIcon(QIcon(str(asset_path("icons/dinoscope.png"))))
    window = MainWindow(log_path=log_path, open_library_now=False)  # opened right after the first paint
    window.show()
    logging.getLogger(__name__).info("main window shown %.2f s after start", time.perf_counter() - START)
    if files:
        window.search_on_start([Path(f) for f in files])  # after the library opens (and, first time, is indexed)
    return app.exec()
