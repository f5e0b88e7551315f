"""Screenshots of the real app under Xvfb, as a person sees it: library, a drop, the viewer, the map, duplicates.

    python tools/screenshots.py --out shots/ [--model SOURCE]

Starts Xvfb when DISPLAY is unset (Debian: apt-get install xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1),
opens the main window on the bundled sample library in a fresh DINOSCOPE_HOME, performs a real drop event with
three sample photos, opens the viewer with the part colours, the map and the duplicates, and saves one PNG of the
whole screen per step. Without --model it uses a random-weight tiny ViT: the pictures then show the app's
mechanics, not DINOv2's semantics.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_xvfb() -> subprocess.Popen | None:
    if os.environ.get("DISPLAY"):
        return None
    if not shutil.which("Xvfb"):
        sys.exit("Xvfb is not installed: apt-get install -y xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1")
    display = ":97"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "1440x900x24"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    os.environ["DISPLAY"] = display
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("shots"))
    ap.add_argument("--model", default=None, help="a checkpoint or zoo name (default: a random tiny ViT)")
    args = ap.parse_args()
    xvfb = start_xvfb()
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    home = Path(tempfile.mkdtemp(prefix="dinoscope-shots-"))
    os.environ["DINOSCOPE_HOME"] = str(home)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        return take(args, home)
    finally:
        if xvfb is not None:
            xvfb.terminate()


def take(args: argparse.Namespace, home: Path) -> int:
    import torch
    from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    from app.gui.main_window import MainWindow
    from app.gui.resources import asset_path

    model = args.model
    if model is None:
        from engine.models import DinoVisionTransformer
        from tests.helpers import tiny_config

        torch.manual_seed(0)
        model = str(home / "tiny-random.pth")
        torch.save(DinoVisionTransformer(tiny_config()).state_dict(), model)
    app = QApplication.instance() or QApplication([])
    settings = QSettings(str(home / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("model/source", model)
    win = MainWindow(settings=settings, first_start_sample=True)
    win.resize(1400, 860)
    win.show()
    win.statusBar().messageChanged.connect(lambda m: m and print(f"  status: {m}"))
    win.search_panel.error.connect(lambda t, m: print(f"  error: {t}: {m}"))

    def wait(cond, seconds: float = 300.0) -> None:
        end = time.monotonic() + seconds
        while not cond():
            app.processEvents()
            if time.monotonic() > end:
                raise TimeoutError("the app did not get there in time")
            time.sleep(0.02)

    def shot(name: str) -> Path:
        for _ in range(30):
            app.processEvents()
            time.sleep(0.02)
        path = args.out / f"{name}.png"
        app.primaryScreen().grabWindow(0).save(str(path))
        print(f"saved {path}")
        return path

    wait(lambda: not win.task_bar.isVisible() and win.grid.grid_model().rowCount() > 0)
    grid = win.grid
    for row in range(grid.grid_model().rowCount()):
        grid.grid_model().data(grid.grid_model().index(row), Qt.ItemDataRole.DecorationRole)
    wait(lambda: len(win.thumbs._pixmaps) >= min(30, grid.grid_model().rowCount()), 60)
    shot("1-library")

    sample = asset_path("sample")
    dropped = [sample / "animals" / "chelsea-the-cat.png", sample / "animals" / "ladybird.jpg",
               sample / "objects" / "coffee.jpg"]
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(p)) for p in dropped if p.exists()])
    # What a file manager's drag does: enter (the window accepts image files), then drop.
    enter = QDragEnterEvent(QPointF(600, 400), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(win, enter)
    drop = QDropEvent(QPointF(600, 400), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    accepted = QApplication.sendEvent(win, drop)
    tab = win.tabs.tabText(win.tabs.currentIndex())
    print(f"  drop of {len(md.urls())} files sent (accepted={accepted}, tab={tab})")
    wait(lambda: win.search_panel.grid.grid_model().rowCount() > 0, 120)
    model_ = win.search_panel.grid.grid_model()
    for row in range(model_.rowCount()):
        model_.data(model_.index(row), Qt.ItemDataRole.DecorationRole)
    wait(lambda: all(win.thumbs._pixmaps.get(it.image_id) is not None for it in model_.items[:20]), 60)
    shot("2-drop-search")

    first = win.search_panel.results[0].path if win.search_panel.results else str(dropped[0])
    win.open_photo(first, [r.path for r in win.search_panel.results[1:6]])
    win.viewer.parts_box.setChecked(True)
    wait(lambda: not win.viewer.view.overlay.pixmap().isNull(), 180)
    shot("3-viewer-parts")

    win.tabs.setCurrentWidget(win.map_tab)
    wait(lambda: win.map_panel.kind == "umap", 300)
    shot("4-map")

    win.tabs.setCurrentWidget(win.duplicates_panel)
    task = win.duplicates_panel.find()
    done = []
    task.signals.finished.connect(lambda *_: done.append(1))
    task.signals.failed.connect(lambda *_: done.append(0))
    wait(lambda: bool(done), 120)
    shot("5-duplicates")

    win.tabs.setCurrentWidget(win.training_tab)
    shot("6-training")
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
