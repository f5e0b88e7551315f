"""Tag a few photos in the window, suggest the rest in the Labels tab, accept the confident ones."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageEnhance
from PySide6.QtCore import QSettings

from app.gui.main_window import MainWindow
from engine import labels
from engine.models import DinoVisionTransformer
from engine.store import Library
from engine.store.indexer import index_library
from tests.helpers import tiny_config


def test_tag_suggest_accept(qtbot, tmp_path: Path, skimage_data_dir: Path) -> None:
    d = tmp_path / "photos"
    d.mkdir()
    for cls, name in (("cat", "chelsea.png"), ("coffee", "coffee.png")):
        base = Image.open(skimage_data_dir / name).convert("RGB")
        for i in range(4):
            v = ImageEnhance.Brightness(base).enhance(0.9 + 0.05 * i)
            v.save(d / f"{cls}_{i}.jpg", quality=70 + 5 * i)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save(DinoVisionTransformer(tiny_config()).state_dict(), ckpt)
    with Library.open("tags") as lib:
        index_library(lib, str(ckpt), folders=[str(d)], device="cpu", precision="fp32")
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    settings.setValue("library/name", "tags")
    settings.setValue("model/source", str(ckpt))
    win = MainWindow(settings=settings, first_start_sample=False)
    qtbot.addWidget(win)
    items = win.grid.grid_model().items
    ids = {Path(it.path).stem: it.image_id for it in items}
    win.tag([ids["cat_0"], ids["cat_1"]], "cat")
    win.tag([ids["coffee_0"], ids["coffee_1"]], "coffee")
    panel = win.labels_panel
    task = panel.suggest()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=30000)
    assert task.outcome == "finished", task.error
    qtbot.waitUntil(lambda: panel.grid.grid_model().rowCount() == 4, timeout=5000)
    got = {Path(s.path).stem: s.label for s in panel.suggestions}
    assert got == {"cat_2": "cat", "cat_3": "cat", "coffee_2": "coffee", "coffee_3": "coffee"}
    assert panel.grid.grid_model().rowCount() == 4
    panel.min_conf.setValue(0.0)
    panel.accept_above.click()
    assert panel.grid.grid_model().rowCount() == 0
    table = labels.labels(win.libraries.library)
    assert table[ids["cat_3"]][0][:2] == ("cat", "knn")
