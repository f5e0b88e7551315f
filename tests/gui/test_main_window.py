"""The main window on real libraries: opens, fills the grid, indexes in the background, starts on the sample."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from PySide6.QtCore import QSettings

from app.gui.main_window import MainWindow
from engine.models import DinoVisionTransformer
from engine.store import Library
from engine.store.indexer import index_library
from tests.helpers import tiny_config


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(DinoVisionTransformer(tiny_config()).state_dict(), path)
    return path


@pytest.fixture
def photos(tmp_path: Path, skimage_data_dir: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"):
        img = Image.open(skimage_data_dir / name).convert("RGB")
        img.thumbnail((320, 320))
        img.save(d / f"{Path(name).stem}.jpg", quality=90)
    (d / "broken.jpg").write_bytes(b"not a photo")
    return d


def _settings(tmp_path: Path, **values) -> QSettings:
    s = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    for k, v in values.items():
        s.setValue(k.replace("__", "/"), v)
    return s


def _window(qtbot, settings: QSettings, sample: bool = False) -> MainWindow:
    win = MainWindow(settings=settings, first_start_sample=sample)
    qtbot.addWidget(win)
    win.show()
    return win


def test_opens_an_indexed_library_and_shows_its_photos(qtbot, tmp_path, checkpoint, photos) -> None:
    with Library.open("family") as lib:
        index_library(lib, str(checkpoint), folders=[str(photos)], device="cpu")
    win = _window(qtbot, _settings(tmp_path, library__name="family", model__source=str(checkpoint)))
    model = win.grid.grid_model()
    assert model.rowCount() == 5
    assert "5 photos indexed" in win.library_panel.counts.text() and "1 unreadable" in win.library_panel.counts.text()
    assert win.library_panel.errors_button.isVisible()
    assert str(checkpoint) in win.model_label.toolTip()
    # Thumbnails arrive from the store in a worker and replace the placeholders.
    for row in range(5):
        model.data(model.index(row), 1)
    arrived = lambda: all(win.thumbs._pixmaps.get(it.image_id) is not None for it in model.items)
    qtbot.waitUntil(arrived, timeout=10000)
    assert not win.thumbs._pixmaps[model.items[0].image_id].isNull()
    win.sort_box.setCurrentText("Date added")
    assert model.rowCount() == 5


def test_add_folder_indexes_in_the_background_with_progress(qtbot, tmp_path, checkpoint, photos) -> None:
    win = _window(qtbot, _settings(tmp_path, model__source=str(checkpoint)))
    assert win.grid.grid_model().rowCount() == 0
    task = win.add_folder(str(photos))
    assert win.task_bar.isVisible()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=60000)
    assert task.outcome == "finished", task.error
    report = task.result
    assert report.new == 6 and report.failed == 1
    qtbot.waitUntil(lambda: win.grid.grid_model().rowCount() == 5 and not win.task_bar.isVisible(), timeout=5000)
    assert win.grid_status.text() == "5 photos"


def test_first_start_indexes_a_copy_of_the_bundled_sample_with_live_counts(qtbot, tmp_path, checkpoint,
                                                                            dinoscope_home) -> None:
    """The sample library points at a copy in the data folder (a library inside the bundle breaks when the bundle
    moves), and the grid and the dock's counts follow the indexing run instead of saying "0 photos"."""
    from app.gui.resources import asset_path

    win = _window(qtbot, _settings(tmp_path, model__source=str(checkpoint)), sample=True)
    assert win.libraries.library.name == "sample"
    (folder,) = [Path(f.path) for f in win.libraries.library.folders()]
    assert folder.is_relative_to(dinoscope_home.resolve()) and not folder.is_relative_to(asset_path(""))
    bundled = sorted(p.relative_to(asset_path("sample")) for p in asset_path("sample").rglob("*.jpg"))
    assert bundled and sorted(p.relative_to(folder) for p in folder.rglob("*.jpg")) == bundled
    assert win.task_bar.isVisible()
    seen_counts: set[str] = set()
    seen_grid: set[int] = set()

    def watch() -> bool:
        seen_counts.add(win.library_panel.counts.text())
        seen_grid.add(win.grid.grid_model().rowCount())
        return not win.task_bar.isVisible()

    qtbot.waitUntil(watch, timeout=120000)
    n = win.grid.grid_model().rowCount()  # one tile per stack of copies: the count says how many more there are
    shown = re.fullmatch(r"(\d+) photos(?: \(\+(\d+) in stacks\))?", win.grid_status.text())
    assert shown and int(shown[1]) == n, win.grid_status.text()
    total = n + int(shown[2] or 0)
    assert total >= 30 and f"{total} photos indexed" in win.library_panel.counts.text()
    # While it ran, the counts and the grid showed photos already indexed (not "0" until the very end).
    assert any(0 < k < n for k in seen_grid), seen_grid
    assert len(seen_counts) > 2, seen_counts


def test_using_another_model_indexes_the_library_with_it(qtbot, tmp_path, checkpoint, photos) -> None:
    """"Use" in the model manager: the library gets that model's vectors, so the next search works with it."""
    with Library.open("family") as lib:
        index_library(lib, str(checkpoint), folders=[str(photos)], device="cpu")
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(DinoVisionTransformer(tiny_config()).state_dict(), other)
    win = _window(qtbot, _settings(tmp_path, library__name="family", model__source=str(checkpoint)))
    assert win.use_model(str(checkpoint)) is None  # already in use: nothing to do
    task = win.use_model(str(other))
    assert win.models.source == str(other) and str(other) in win.model_label.toolTip()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=60000)
    assert task.outcome == "finished", task.error
    assert {m.source for m in win.libraries.library.models()} == {str(checkpoint), str(other)}
    copy = tmp_path / "coffee re-encoded.jpg"  # not the library's bytes: embedded with the new model
    Image.open(photos / "coffee.jpg").save(copy, quality=70)
    win.search_files([copy])
    qtbot.waitUntil(lambda: bool(win.search_panel.results), timeout=60000)
    assert Path(win.search_panel.results[0].path).name == "coffee.jpg"


def test_first_start_offline_indexes_the_sample_with_the_bundled_model(qtbot, tmp_path, monkeypatch) -> None:
    """No zoo weights on disk and no network: the demo model shipped in assets/models indexes the sample, the
    choice is remembered, and a re-encoded copy of a sample photo finds it first."""
    from app.gui.model_service import bundled_model

    monkeypatch.setenv("DINOSCOPE_ZOO_URL", "http://127.0.0.1:9")
    settings = _settings(tmp_path)
    win = _window(qtbot, settings, sample=True)
    assert win.models.source == bundled_model() and settings.value("model/source") == bundled_model()
    assert "Dinoscope tiny demo (bundled)" in win.model_label.text()
    assert "demo model" in win.browse.notice.text() and win.browse.notice.isVisible()
    qtbot.waitUntil(lambda: not win.task_bar.isVisible(), timeout=120000)
    assert win.grid.grid_model().rowCount() >= 30
    original = Path(bundled_model()).parents[1] / "sample" / "nature" / "dandelion-seeds.jpg"
    query = tmp_path / "seeds.jpg"
    Image.open(original).save(query, quality=80)
    win.search_files([query])
    qtbot.waitUntil(lambda: bool(win.search_panel.results), timeout=60000)
    best = win.search_panel.results[0]
    assert Path(best.path).relative_to(win.libraries.library.folders()[0].path) == Path("nature/dandelion-seeds.jpg")
    assert best.score > 0.97


def test_first_start_without_any_model_says_what_to_do(qtbot, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DINOSCOPE_ZOO_URL", "http://127.0.0.1:9")
    monkeypatch.setattr("app.gui.model_service.BUNDLED_MODEL", "models/left-out-of-this-build.pth")
    win = _window(qtbot, _settings(tmp_path), sample=True)
    assert "download dinov2_vits14" in win.grid_status.text()
    assert not win.task_bar.isVisible()


def test_copy_to_folder_runs_in_the_background_and_reports(qtbot, tmp_path, checkpoint, photos, monkeypatch) -> None:
    with Library.open("family") as lib:
        index_library(lib, str(checkpoint), folders=[str(photos)], device="cpu")
    win = _window(qtbot, _settings(tmp_path, library__name="family", model__source=str(checkpoint)))
    paths = [it.path for it in win.grid.grid_model().items]
    task = win.copy_photos(paths, str(tmp_path / "picked"))
    assert win.task_bar.isVisible()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=30000)
    assert task.outcome == "finished" and len(task.result) == 5
    assert sorted(p.name for p in (tmp_path / "picked").iterdir()) == sorted(Path(p).name for p in paths)
    qtbot.waitUntil(lambda: "Copied 5 of 5 photos" in win.statusBar().currentMessage(), timeout=5000)

    shown: list[str] = []
    monkeypatch.setattr(win, "error", lambda title, message, *_: shown.append(f"{title}: {message}"))
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    task = win.copy_photos(paths, str(blocked))  # the destination cannot be created: a clear error, no crash
    qtbot.waitUntil(lambda: bool(shown), timeout=30000)
    assert task.outcome == "failed" and "Copying 5 photos failed" in shown[0] and "a-file" in shown[0]
