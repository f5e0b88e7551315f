"""The Map tab: a PCA layout at once, the UMAP map when ready (stored), selection fills the grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PySide6.QtCore import QSettings

from app.gui.main_window import MainWindow
from engine.models import DinoVisionTransformer
from engine.store import Library
from engine.store.indexer import index_library
from engine.viz.library_map import load_map
from tests.helpers import tiny_config
from tests.test_library_map import _photos


def test_map_tab_shows_pca_then_umap_and_selects(qtbot, tmp_path: Path, skimage_data_dir: Path) -> None:
    photos = tmp_path / "photos"
    _photos(photos, skimage_data_dir, 30)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save(DinoVisionTransformer(tiny_config()).state_dict(), ckpt)
    with Library.open("maps") as lib:
        rep = index_library(lib, str(ckpt), folders=[str(photos)], device="cpu", precision="fp32")
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    settings.setValue("library/name", "maps")
    settings.setValue("model/source", str(ckpt))
    win = MainWindow(settings=settings, first_start_sample=False)
    qtbot.addWidget(win)
    win.show()
    win.tabs.setCurrentWidget(win.map_tab)
    panel = win.map_panel
    qtbot.waitUntil(lambda: panel.kind == "umap", timeout=180000)
    assert len(panel.view.ids) == 30
    stored = load_map(win.libraries.library, rep.model_id)
    assert len(stored.ids) == 30  # computed once and kept in the library
    xs, ys = panel.view.coords[:, 0], panel.view.coords[:, 1]
    box = np.array([[xs.min() - 1, ys.min() - 1], [float(np.median(xs)), ys.max() + 1]])
    chosen = panel.view.select_shape("box", box)
    assert 0 < len(chosen) < 30
    assert panel.grid.grid_model().rowCount() == len(chosen)


def test_map_tab_on_a_library_not_indexed_yet_says_so_without_a_dialog(qtbot, tmp_path: Path) -> None:
    Library.open("empty").close()
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    settings.setValue("library/name", "empty")
    settings.setValue("model/source", str(tmp_path / "tiny.pth"))
    win = MainWindow(settings=settings, first_start_sample=False)
    qtbot.addWidget(win)
    errors: list[str] = []
    win.show()
    win.tabs.setCurrentWidget(win.map_tab)
    panel = win.map_panel
    panel.error.disconnect()
    panel.error.connect(lambda title, msg: errors.append(msg))
    task = panel.load()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=30000)
    qtbot.waitUntil(lambda: "index it to see the map" in panel.state.text(), timeout=5000)
    assert panel.kind == "unindexed" and not errors
    task = panel.compute()  # asking for a map explicitly still explains why there is none
    qtbot.waitUntil(lambda: bool(errors), timeout=30000)
    assert "not indexed with" in errors[0]
