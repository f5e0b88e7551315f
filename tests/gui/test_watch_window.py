"""The window follows its library's folders: a photo copied into one appears in the grid and in searches without a
restart, the window's own indexing pauses the watcher, and the Library menu's switch turns it off."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from PySide6.QtCore import QSettings

from app.gui.main_window import MainWindow
from engine.models import DinoVisionTransformer
from engine.store import Library
from engine.store.indexer import index_library
from tests.helpers import tiny_config


def _indexed_library(tmp_path: Path, skimage_data_dir: Path, name: str, images: tuple[str, ...]):
    """A folder of real photos indexed into library `name` with a tiny random ViT, and the settings of a user who
    used it last: (the folder, the settings)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in images:
        rgb = Image.open(skimage_data_dir / image).convert("RGB")
        rgb.resize((256, 192)).save(photos / f"{Path(image).stem}.jpg")
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save(DinoVisionTransformer(tiny_config()).state_dict(), ckpt)
    with Library.open(name) as lib:
        index_library(lib, str(ckpt), folders=[str(photos)], device="cpu")
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    settings.setValue("library/name", name)
    settings.setValue("model/source", str(ckpt))
    return photos, settings


def test_a_photo_copied_into_a_watched_folder_appears(qtbot, tmp_path: Path, skimage_data_dir: Path,
                                                      monkeypatch) -> None:
    monkeypatch.setenv("DINOSCOPE_WATCH", "1")
    photos, settings = _indexed_library(tmp_path, skimage_data_dir, "watched",
                                        ("astronaut.png", "coffee.png", "chelsea.png"))
    win = MainWindow(settings=settings, first_start_sample=False)
    qtbot.addWidget(win)
    watching: list[bool] = []
    win.watcher.watching.connect(lambda: watching.append(True))
    win.show()
    qtbot.waitUntil(lambda: bool(watching), timeout=60000)  # started after the first paint, watches in place
    assert win.watcher.running and win.grid.grid_model().rowCount() == 3

    Image.open(skimage_data_dir / "rocket.jpg").convert("RGB").resize((192, 256)).save(photos / "rocket.jpg")
    qtbot.waitUntil(lambda: win.grid.grid_model().rowCount() == 4, timeout=60000)  # no restart, no button
    assert any(it.path.endswith("rocket.jpg") for it in win.grid.grid_model().items)

    # The window's own indexing takes the write lock from the watcher, then gives it back.
    task = win.reindex()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=60000)
    assert task.outcome == "finished", task.error
    qtbot.waitUntil(lambda: win.watcher.running, timeout=10000)

    win._set_watching(False)  # the Library menu's switch
    assert not win.watcher.running and settings.value("library/watch", type=bool) is False
    win.close()


def test_a_returning_user_s_watcher_starts_once_after_the_start_up_loads(qtbot, tmp_path: Path,
                                                                           skimage_data_dir: Path,
                                                                           monkeypatch) -> None:
    """As the desktop starts the window (the library opens after the first paint): the watcher, which loads a model
    of its own and walks the folders, waits for the quick start, the vector index and the full model, then starts
    once (it used to start, be stopped and start again while they loaded)."""
    monkeypatch.setenv("DINOSCOPE_WATCH", "1")
    _photos, settings = _indexed_library(tmp_path, skimage_data_dir, "back-again", ("coffee.png",))
    win = MainWindow(settings=settings, first_start_sample=False, open_library_now=False)
    qtbot.addWidget(win)
    starts: list[list] = []
    win.watcher.running_changed.connect(
        lambda on: starts.append([t.outcome for t in win._warming]) if on else None)
    win.show()
    qtbot.waitUntil(lambda: bool(starts) and win.watcher.running, timeout=60000)
    qtbot.wait(300)
    names = [t.name for t in win._warming]
    assert names == ["quick start", "warm-up index", "warm-up"], names
    assert len(starts) == 1 and None not in starts[0], starts  # once, and after every start-up load had ended
    assert win.models._extractor is not None  # the full model was loaded when the watcher began
    win.close()
