"""Screenshots of the real app under Xvfb, as a person sees it, at one screen size per run.

    python tools/screenshots.py --out shots/ [--size 1000x700] [--model SOURCE] [--only NAME,...] [--dinotxt DIR]

Starts Xvfb at that size when DISPLAY is unset (Debian: apt-get install xvfb libxcb-cursor0 libxcb-icccm4
libxcb-keysyms1), makes a fresh DINOSCOPE_HOME (offline: no zoo download is tried), and goes through a first start
like a new user: the bundled sample library is copied and indexed (shot while it runs), then the grid at a small
and a large thumbnail size, the Library menu, a real drop of three photos, the viewer with part colours and at
100%, the map with its legend and a search ringed, the duplicates and the training tab. One PNG of the whole
screen per view. Without --model the first start picks the bundled demo model by itself, as the app does offline.
With --dinotxt (a folder of dino.txt's three files) it also searches by words: the offer to index, the indexing
for text search, words combined with a dropped photo, the viewer's word heatmap and the Models dialog.
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


def start_xvfb(width: int, height: int) -> subprocess.Popen | None:
    if os.environ.get("DISPLAY"):
        return None
    if not shutil.which("Xvfb"):
        sys.exit("Xvfb is not installed: apt-get install -y xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1")
    display = f":{90 + os.getpid() % 9}"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    os.environ["DISPLAY"] = display
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("shots"))
    ap.add_argument("--size", default="1440x900", help="screen and window size, WIDTHxHEIGHT")
    ap.add_argument("--model", default=None, help="a checkpoint or zoo name (default: what a first start picks)")
    ap.add_argument("--only", default="", help="comma-separated view names to save (default: all)")
    ap.add_argument("--dinotxt", type=Path, default=None, help="a dino.txt folder: also shoot search by words")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    xvfb = start_xvfb(width, height)
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    os.environ.setdefault("DINOSCOPE_ZOO_URL", "http://127.0.0.1:9")  # offline, like a first start on a train
    home = Path(tempfile.mkdtemp(prefix="dinoscope-shots-"))
    os.environ["DINOSCOPE_HOME"] = str(home)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        return take(args, home, width, height)
    finally:
        if xvfb is not None:
            xvfb.terminate()


def take(args: argparse.Namespace, home: Path, width: int, height: int) -> int:
    from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    from app.gui.main_window import MainWindow

    only = {n for n in args.only.split(",") if n}
    app = QApplication.instance() or QApplication([])
    settings = QSettings(str(home / "settings.ini"), QSettings.Format.IniFormat)
    if args.model:
        settings.setValue("model/source", args.model)
    win = MainWindow(settings=settings, first_start_sample=True)
    win.move(0, 0)
    win.resize(width, height)
    win.show()
    win.statusBar().messageChanged.connect(lambda m: m and print(f"  status: {m}"))
    win.search_panel.error.connect(lambda t, m: print(f"  error: {t}: {m}"))

    def pump(seconds: float = 0.6) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    def wait(cond, seconds: float = 300.0) -> None:
        end = time.monotonic() + seconds
        while not cond():
            app.processEvents()
            if time.monotonic() > end:
                raise TimeoutError("the app did not get there in time")
            time.sleep(0.02)

    def thumbs_of(grid, n: int = 40) -> None:
        model = grid.grid_model()
        for row in range(min(n, model.rowCount())):
            model.data(model.index(row), Qt.ItemDataRole.DecorationRole)
        wait(lambda: all(win.thumbs._pixmaps.get(it.image_id) is not None for it in model.items[:n]), 60)

    def shot(name: str) -> None:
        pump()
        if only and name not in only:
            return
        path = args.out / f"{name}.png"
        app.primaryScreen().grabWindow(0).save(str(path))
        print(f"saved {path}")

    # A first start: the sample is indexed while the window is up; the grid and counts fill as it goes.
    wait(lambda: win.grid.grid_model().rowCount() > 0 or (win._shown and not win.task_bar.isVisible()), 300)
    if win.task_bar.isVisible():
        thumbs_of(win.grid, 20)
        shot("0-first-start")
    wait(lambda: not win.task_bar.isVisible(), 600)
    thumbs_of(win.grid)
    win.browse.size_slider.setValue(96)
    thumbs_of(win.grid, 80)
    shot("1-grid-small")
    win.browse.size_slider.setValue(220)
    win.browse.names_box.setChecked(True)
    shot("1-grid-large-names")
    win.browse.names_box.setChecked(False)
    win.browse.size_slider.setValue(128)

    win.library_menu.popup(win.mapToGlobal(win.menuBar().actionGeometry(win.library_menu.menuAction()).bottomLeft()))
    shot("2-libraries-menu")
    win.library_menu.hide()

    sample = Path(win.libraries.library.folders()[0].path)
    dropped = [sample / "animals" / "chelsea-the-cat.png", sample / "animals" / "ladybird.jpg",
               sample / "objects" / "coffee.jpg"]
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(p)) for p in dropped if p.exists()])
    # What a file manager's drag does: enter (the window accepts image files), then drop.
    where = QPointF(width / 2, height / 2)
    QApplication.sendEvent(win, QDragEnterEvent(where.toPoint(), Qt.DropAction.CopyAction, md,
                                                Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
    QApplication.sendEvent(win, QDropEvent(where, Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                                           Qt.KeyboardModifier.NoModifier))
    wait(lambda: bool(win.search_panel.results), 120)
    thumbs_of(win.search_panel.grid)
    shot("3-drop-search")

    results = win.search_panel.results
    first = next((r.path for r in results if "ladybird" in r.path), results[0].path)
    if args.dinotxt is not None:
        words_views(args, win, first, pump, wait, thumbs_of, shot)
    win.open_photo(first)
    win.viewer.parts_box.setChecked(True)
    wait(lambda: not win.viewer.view.overlay.pixmap().isNull(), 300)
    shot("4-viewer-parts")
    win.viewer.parts_box.setChecked(False)
    win.viewer.zoom100_button.click()
    shot("4-viewer-100")

    win.tabs.setCurrentWidget(win.map_tab)
    wait(lambda: win.map_panel.kind == "umap", 600)
    shot("5-map-legend")
    panel = win.map_panel
    panel.colour_by.setCurrentText("Folder")
    panel.legend.itemClicked.emit(panel.legend.item(0))
    shot("5-map-by-folder-selected")

    win.tabs.setCurrentWidget(win.duplicates_panel)
    task = win.duplicates_panel.find()
    wait(lambda: task.outcome is not None, 120)
    shot("6-duplicates")

    win.tabs.setCurrentWidget(win.training_tab)
    shot("7-training")
    win.close()
    return 0


def words_views(args, win, photo: str, pump, wait, thumbs_of, shot) -> None:
    """Search by words as a person meets it: the offer, the background indexing, words with a photo, the heatmap."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from app.gui.widgets.model_manager import ModelManager

    win.text.set_source(str(args.dinotxt.resolve()))
    panel = win.search_panel
    win.tabs.setCurrentWidget(panel)
    panel.field.setFocus()
    QTest.keyClicks(panel.field, "a cat sleeping on a sofa")
    shot("3a-words-typed")
    QTest.keyClick(panel.field, Qt.Key.Key_Return)
    wait(lambda: win.text_actions.offer is not None, 30)
    shot("3b-words-offer")
    start = next(b for b in win.text_actions.offer.buttons() if "Index" in b.text())
    start.click()
    wait(lambda: win.task_bar.isVisible(), 30)
    shot("3c-words-indexing")
    wait(lambda: win.text_actions.task.outcome is not None and not win.task_bar.isVisible(), 900)
    wait(lambda: bool(panel.results) and any(q.text for q in panel.queries), 120)
    thumbs_of(panel.grid)
    shot("3d-words-results")
    win.open_photo(photo)
    win.viewer.words_field.setFocus()
    QTest.keyClicks(win.viewer.words_field, "a red ladybird")
    QTest.keyClick(win.viewer.words_field, Qt.Key.Key_Return)
    wait(lambda: not win.viewer.view.overlay.pixmap().isNull(), 300)
    shot("4c-viewer-words")
    win.viewer.words_field.clear()
    dlg = ModelManager(win.runner, win.models.source, win, text_source=win.text.source)
    dlg.show()
    shot("8-models")
    dlg.close()


if __name__ == "__main__":
    sys.exit(main())
