"""The Library tab as a photo app's grid: thumbnail size (slider, Ctrl+wheel), a grid that fills the width, file
names, the folder tree filtering it, and the right-click menu on photos."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication


def _ctrl_wheel(widget, steps: int) -> None:
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(pos, widget.mapToGlobal(pos), QPoint(0, 0), QPoint(0, 120 * steps), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.ControlModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget.viewport(), event)


def test_thumbnail_size_follows_the_slider_and_ctrl_wheel_and_fills_the_width(qtbot, family_window) -> None:
    win = family_window
    grid, slider = win.grid, win.browse.size_slider
    win.resize(1200, 800)
    qtbot.waitUntil(lambda: grid.viewport().width() > 600)
    slider.setValue(200)
    assert grid.icon_size == 200 and grid.iconSize().width() == 200
    _ctrl_wheel(grid, 2)  # bigger, like zooming in
    assert grid.icon_size == 232 and slider.value() == 232
    _ctrl_wheel(grid, -4)
    assert grid.icon_size == 168 and slider.value() == 168
    for _ in range(40):
        _ctrl_wheel(grid, -1)
    assert grid.icon_size == slider.minimum()  # clamped, never zero
    # Columns stretch to the viewport: as many as fit, and no ragged margin where another one would fit.
    model = grid.grid_model()
    model.set_items(list(model.items) * 12)  # enough photos to fill a row at any size
    for width in (1000, 1600, 2400):
        win.resize(width, 800)
        qtbot.waitUntil(lambda w=width: win.width() == w)
        for size in (96, 168, 300):
            slider.setValue(size)
            qtbot.wait(20)
            top = grid.visualRect(model.index(0)).top()
            row = [i for i in range(model.rowCount()) if grid.visualRect(model.index(i)).top() == top]
            spare = grid.viewport().width() - len(row) * grid.gridSize().width()
            assert len(row) == grid.columns() and 0 <= spare <= len(row) + 20, (width, size, len(row), spare)


def test_file_names_under_the_thumbnails_on_request(qtbot, family_window) -> None:
    model = family_window.grid.grid_model()
    index = model.index(0)
    assert model.data(index, Qt.ItemDataRole.DisplayRole) is None
    family_window.browse.names_box.setChecked(True)
    assert model.data(index, Qt.ItemDataRole.DisplayRole) == Path(model.items[0].path).name


def test_clicking_a_folder_in_the_tree_filters_the_grid(qtbot, family_window, family) -> None:
    root = family[0]
    win, tree = family_window, family_window.library_panel.folders
    assert win.grid.grid_model().rowCount() == 5
    everything = tree.topLevelItem(0)
    (source,) = [everything.child(i) for i in range(everything.childCount())]
    names = {source.child(i).text(0): source.child(i) for i in range(source.childCount())}
    assert set(names) == {"pets", "things"}
    tree.setCurrentItem(names["pets"])
    shown = [Path(it.path) for it in win.grid.grid_model().items]
    assert sorted(p.name for p in shown) == ["astronaut.jpg", "chelsea.jpg"]
    assert all(p.parent == root / "pets" for p in shown)
    assert win.grid_status.text() == "2 photos in pets"
    win.sort_box.setCurrentText("Date added")  # re-sorting keeps the filter
    assert win.grid.grid_model().rowCount() == 2
    tree.setCurrentItem(everything)
    assert win.grid.grid_model().rowCount() == 5 and win.grid_status.text() == "5 photos"


def test_right_click_menu_on_photos(qtbot, family_window) -> None:
    from app.gui.photo_menu import grid_menu_items, photo_menu

    win = family_window
    grid, model = win.grid, win.grid.grid_model()
    rect = grid.visualRect(model.index(1))
    items = grid_menu_items(grid, rect.center())
    assert [it.path for it in items] == [model.items[1].path]  # the photo under the mouse
    grid.selectAll()
    assert len(grid_menu_items(grid, rect.center())) == 5  # inside the selection: all of it
    menu = photo_menu(win, grid, items)
    actions = {a.objectName(): a for a in menu.actions() if a.objectName()}
    assert set(actions) == {"open", "show_in_folder", "copy_path", "search_similar", "tag", "copy_to"}
    actions["copy_path"].trigger()
    assert QApplication.clipboard().text() == model.items[1].path
    actions["open"].trigger()
    assert win.tabs.currentWidget() is win.viewer and win.viewer.path == model.items[1].path
    actions["search_similar"].trigger()  # a real search with the library's model (engine.query)
    assert win.tabs.currentWidget() is win.search_panel
    qtbot.waitUntil(lambda: bool(win.search_panel.results), timeout=60000)
    # the self rule: a library photo is recognised and left out of its own results; the others are all there
    paths = [r.path for r in win.search_panel.results]
    assert model.items[1].path not in paths and len(paths) == len(model.items) - 1


def test_arriving_thumbnails_repaint_only_their_own_rows(qtbot) -> None:
    """A search's thumbnails arrive for photos scattered over a 100k-photo grid: each run of adjacent rows gets its
    own repaint, where one signal from the first to the last row made the view walk every row between."""
    from app.gui.thumbnails import ThumbnailCache
    from app.gui.widgets.thumbnail_grid import RowItems, ThumbnailModel

    model = ThumbnailModel(ThumbnailCache(lambda ids: {}))
    model.set_items(RowItems([(1000 + k, f"/p/{k:06d}.jpg") for k in range(100_000)], {1005: "▸ stack of 2"}))
    assert model.rowCount() == 100_000 and model.items[5].caption == "▸ stack of 2" and model.items[6].caption == ""
    spans: list[tuple[int, int]] = []
    model.dataChanged.connect(lambda a, b, _roles: spans.append((a.row(), b.row())))
    model._thumbs_arrived([1003, 99_999 + 1000, 1004, 1002, 51_000, 7])  # 7: not in this grid
    assert sorted(spans) == [(2, 4), (50_000, 50_000), (99_999, 99_999)]
