"""The Duplicates tab on a real library: groups found in a worker, the keeper marked, the others moved (never
deleted) to a folder, and the library re-indexed afterwards."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from PySide6.QtCore import QSettings, Qt

from app.gui.main_window import MainWindow
from engine.models import DinoVisionTransformer
from engine.store import Library
from engine.store.indexer import index_library
from tests.helpers import tiny_config


def test_finds_a_duplicate_pair_and_moves_the_copy_away(qtbot, tmp_path: Path, skimage_data_dir: Path) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save(DinoVisionTransformer(tiny_config()).state_dict(), ckpt)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "coffee.png", "rocket.jpg"):
        Image.open(skimage_data_dir / name).convert("RGB").save(photos / f"{Path(name).stem}.jpg", quality=92)
    big = Image.open(skimage_data_dir / "chelsea.png").convert("RGB")
    big.save(photos / "cat.jpg", quality=95)
    big.resize((big.width // 2, big.height // 2)).save(photos / "cat-small.jpg", quality=80)  # the same photo
    with Library.open("family") as lib:
        index_library(lib, str(ckpt), folders=[str(photos)], device="cpu")

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("library/name", "family")
    settings.setValue("model/source", str(ckpt))
    win = MainWindow(settings=settings, first_start_sample=False)
    qtbot.addWidget(win)
    win.show()
    panel = win.duplicates_panel
    task = panel.find()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=60000)
    assert task.outcome == "finished", task.error
    qtbot.waitUntil(lambda: "groups;" in panel.summary.text(), timeout=5000)  # the result reaches the UI thread
    # Random weights make the looser "scene" tier group unrelated photos; the near-duplicate tier is the test.
    cat_groups = [g for g in panel.groups if g.tier in ("exact", "near")
                  and {Path(panel.records[i].path).name for i in g.image_ids} >= {"cat.jpg", "cat-small.jpg"}]
    assert len(cat_groups) == 1, panel.groups
    group = cat_groups[0]
    assert Path(panel.records[group.keeper_id].path).name == "cat.jpg"  # the larger file is kept
    panel.group_list.setCurrentRow(panel.groups.index(group))
    assert panel.compare.item(0).text().startswith("★ keeper · cat.jpg")
    # The group list names the keeper in full with its thumbnail; the "Looking for duplicates…" message is gone.
    row = panel.group_list.item(panel.groups.index(group))
    assert row.text().splitlines()[0] == "cat.jpg" and str(photos / "cat-small.jpg") in row.toolTip()
    qtbot.waitUntil(lambda: not row.icon().isNull(), timeout=10000)
    assert panel.group_list.textElideMode() == Qt.TextElideMode.ElideNone and panel.group_list.wordWrap()
    assert "Looking for duplicates" not in win.statusBar().currentMessage()

    dest = tmp_path / "moved"
    with qtbot.waitSignal(panel.files_moved, timeout=10000):
        assert panel.move_others(str(dest), confirm=False) == 1
    assert (dest / "cat-small.jpg").is_file() and not (photos / "cat-small.jpg").exists()
    assert (photos / "cat.jpg").is_file()
    qtbot.waitUntil(lambda: not win.task_bar.isVisible(), timeout=60000)  # the re-index the move started
    assert "cat-small.jpg" not in {Path(p).name for _, p in win.libraries.library.image_paths()}
