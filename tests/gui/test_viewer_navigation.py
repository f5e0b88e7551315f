"""The viewer as a photo viewer: fit (never enlarged past 2×), 100%, wheel zoom, Previous/Next through the list a
photo came from, name and size in the title, the part colours' legend, the region-search box as the query."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, QSettings, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from app.gui.model_service import ModelService
from app.gui.widgets.photo_view import MAX_FIT_SCALE
from app.gui.widgets.viewer import PARTS_LEGEND, Viewer
from app.gui.workers import TaskRunner


@pytest.fixture
def viewer(qtbot, tmp_path: Path):
    v = Viewer(ModelService(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)), TaskRunner())
    qtbot.addWidget(v)
    v.resize(900, 700)
    v.show()
    qtbot.waitExposed(v)
    return v


def _photo(tmp_path: Path, name: str, size: tuple[int, int], colour=(200, 80, 40)) -> str:
    path = tmp_path / name
    Image.new("RGB", size, colour).save(path, quality=90)
    return str(path)


def _wheel(view, steps: int) -> None:
    pos = QPointF(view.viewport().width() / 2, view.viewport().height() / 2)
    QApplication.sendEvent(view.viewport(), QWheelEvent(
        pos, view.viewport().mapToGlobal(pos), QPoint(0, 0), QPoint(0, 120 * steps), Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False))


def test_fit_never_enlarges_past_two_times_and_100_percent_and_wheel(qtbot, viewer, tmp_path) -> None:
    view = viewer.view
    viewer.open(_photo(tmp_path, "icon.png", (64, 48)))
    assert view.fit_mode and view.scale_factor == pytest.approx(MAX_FIT_SCALE)  # a 64 px icon stays small
    big = _photo(tmp_path, "big.jpg", (3000, 2000))
    viewer.open(big)
    fitted = view.scale_factor
    assert fitted < 0.35  # all of it in view
    shown = view.mapToScene(view.viewport().rect()).boundingRect()
    assert shown.width() >= 2999 or shown.height() >= 1999
    viewer.zoom100_button.click()
    assert view.scale_factor == pytest.approx(1.0) and not view.fit_mode
    _wheel(view, 1)
    assert view.scale_factor == pytest.approx(1.25)
    _wheel(view, -3)
    assert view.scale_factor == pytest.approx(1.25 ** -2)
    viewer.resize(1000, 760)  # zoomed by hand: a resize keeps the zoom
    qtbot.waitUntil(lambda: view.viewport().width() > 850)
    assert view.scale_factor == pytest.approx(1.25 ** -2)
    viewer.fit_button.click()
    assert view.fit_mode and view.scale_factor < 0.4


def test_previous_next_walk_the_list_and_the_title_names_the_photo(qtbot, viewer, tmp_path) -> None:
    photos = [_photo(tmp_path, f"p{i}.jpg", (320 + 10 * i, 240)) for i in range(3)]
    viewer.open(photos[1], sequence=photos)
    size_kb = round(Path(photos[1]).stat().st_size / 1e3)
    assert viewer.title.text() == f"<b>p1.jpg</b> · {size_kb} KB · 2 of 3"
    assert viewer.title_text() == f"p1.jpg ({size_kb} KB)"
    assert viewer.prev_button.isEnabled() and viewer.next_button.isEnabled()
    viewer.next_button.click()
    assert viewer.path == photos[2] and viewer.image.shape[1] == 340
    assert not viewer.next_button.isEnabled() and viewer.show_next() is False  # the end: stays
    assert viewer.show_previous() and viewer.show_previous() and viewer.path == photos[0]
    assert not viewer.prev_button.isEnabled() and "1 of 3" in viewer.title.text()
    viewer.open(_photo(tmp_path, "alone.jpg", (100, 100)))  # opened on its own: nothing to walk
    assert not viewer.prev_button.isEnabled() and not viewer.next_button.isEnabled()


def test_window_title_follows_the_viewer(qtbot, family_window) -> None:
    win = family_window
    assert win.windowTitle() == "family — Dinoscope"
    win.grid.activated.emit(win.grid.grid_model().index(2))  # a double-click, or Enter
    item = win.grid.grid_model().items[2]
    assert win.windowTitle().startswith(f"{Path(item.path).name} (") and win.viewer.path == item.path
    assert win.viewer.show_next() and win.viewer.path == win.grid.grid_model().items[3].path
    win.tabs.setCurrentWidget(win.browse)
    assert win.windowTitle() == "family — Dinoscope"


def test_part_colours_legend_shows_with_the_colours(qtbot, viewer, tmp_path) -> None:
    viewer.open(_photo(tmp_path, "a.jpg", (320, 240)))
    assert not viewer.legend.isVisible()
    viewer.parts_box.setChecked(True)
    assert viewer.legend.isVisible() and viewer.legend.text() == PARTS_LEGEND
    assert "principal components" in PARTS_LEGEND and "dark: background" in PARTS_LEGEND
    viewer.parts_box.setChecked(False)
    assert not viewer.legend.isVisible()
    viewer.runner.cancel_all()
    viewer.runner.wait()


def test_region_search_query_thumbnail_is_the_box(qtbot, family_window, tmp_path) -> None:
    """Left half red, right half blue: a box on the right half must give a blue query thumbnail."""
    img = Image.new("RGB", (400, 200), (220, 0, 0))
    img.paste((0, 0, 220), (200, 0, 400, 200))
    path = tmp_path / "halves.png"
    img.save(path)
    win = family_window
    win.viewer.region_search.emit(str(path), (220.0, 20.0, 380.0, 180.0))
    chip = win.search_panel.chips.chip(0)
    assert "region" in chip.caption.text()
    pix = chip.thumb.pixmap().toImage()
    centre = pix.pixelColor(pix.width() // 2, pix.height() // 2)
    assert centre.blue() > 180 and centre.red() < 40
    assert pix.width() == pix.height()  # 160×160 box -> square, not the 2:1 photo
    qtbot.waitUntil(lambda: not win.task_bar.isVisible(), timeout=60000)
