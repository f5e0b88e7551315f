"""A drop of real photo files on the window gives ranked results; a corrupt file in the set is reported, not fatal."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from app.gui.main_window import MainWindow
from engine.models import DinoVisionTransformer
from engine.store import Library
from engine.store.indexer import index_library
from tests.helpers import tiny_config


def test_drop_searches_and_reports_the_corrupt_file(qtbot, tmp_path: Path, skimage_data_dir: Path) -> None:
    lib_dir, drops = tmp_path / "library", tmp_path / "to drop"
    lib_dir.mkdir()
    drops.mkdir()
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"):
        img = Image.open(skimage_data_dir / name).convert("RGB")
        img.thumbnail((300, 300))
        img.save(lib_dir / f"{Path(name).stem}.jpg", quality=92)
    # The dropped copies are re-encoded (not the library's bytes): the search must still find the originals.
    Image.open(lib_dir / "coffee.jpg").save(drops / "my coffee.jpg", quality=70)
    Image.open(lib_dir / "chelsea.jpg").save(drops / "cat.png")
    (drops / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated nonsense")
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save(DinoVisionTransformer(tiny_config()).state_dict(), ckpt)
    with Library.open("drop") as lib:
        index_library(lib, str(ckpt), folders=[str(lib_dir)], device="cpu", precision="fp32")
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    settings.setValue("library/name", "drop")
    settings.setValue("model/source", str(ckpt))
    win = MainWindow(settings=settings, first_start_sample=False)
    qtbot.addWidget(win)
    win.show()
    errors: list[str] = []
    win.search_panel.error.disconnect()
    win.search_panel.error.connect(lambda title, msg: errors.append(msg))

    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(drops / n)) for n in ("my coffee.jpg", "broken.jpg")])
    pos = QPointF(400, 300)
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(win, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(win, QDropEvent(pos, Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                                           Qt.KeyboardModifier.NoModifier))
    assert win.tabs.currentWidget() is win.search_panel
    qtbot.waitUntil(lambda: win.search_panel.grid.grid_model().rowCount() == 5, timeout=60000)
    results = win.search_panel.results
    assert Path(results[0].path).name == "coffee.jpg" and results[0].rank == 1
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert "broken.jpg" in errors[0]

    # Dropping a non-image (a text file) is refused at drag-enter: nothing happens.
    (drops / "notes.txt").write_text("hello")
    md2 = QMimeData()
    md2.setUrls([QUrl.fromLocalFile(str(drops / "notes.txt"))])
    refused = QDragEnterEvent(pos, Qt.DropAction.CopyAction, md2, Qt.MouseButton.LeftButton,
                              Qt.KeyboardModifier.NoModifier)
    refused.ignore()
    QApplication.sendEvent(win, refused)
    assert not refused.isAccepted()
