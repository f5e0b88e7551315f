"""Every way a photo reaches a search in the window, on a real library: a drop of files, of a folder, of pixels
from a browser, Ctrl+V on any tab, Shift to add; and the keys of a photo app (Enter, Left/Right, Escape)."""

from __future__ import annotations

from pathlib import Path

import pytest
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

NAMES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")


@pytest.fixture
def window(qtbot, tmp_path: Path, skimage_data_dir: Path):
    lib_dir, outside = tmp_path / "library", tmp_path / "outside"
    lib_dir.mkdir()
    outside.mkdir()
    for name in NAMES:
        img = Image.open(skimage_data_dir / name).convert("RGB")
        img.thumbnail((300, 300))
        img.save(lib_dir / f"{Path(name).stem}.jpg", quality=92)
        img.save(outside / f"{Path(name).stem} copy.jpg", quality=70)  # not the library's bytes
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save(DinoVisionTransformer(tiny_config()).state_dict(), ckpt)
    with Library.open("inputs") as lib:
        index_library(lib, str(ckpt), folders=[str(lib_dir)], device="cpu", precision="fp32")
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    settings.setValue("library/name", "inputs")
    settings.setValue("model/source", str(ckpt))
    win = MainWindow(settings=settings, first_start_sample=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win, lib_dir, outside


def _drop(win: MainWindow, md: QMimeData, shift: bool = False) -> bool:
    pos = QPointF(400, 300)
    mods = Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton, mods)
    enter.ignore()
    QApplication.sendEvent(win, enter)
    if not enter.isAccepted():
        return False
    QApplication.sendEvent(win, QDropEvent(pos, Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton, mods))
    return True


def _urls(*paths: Path) -> QMimeData:
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return md


def _wait_results(qtbot, win: MainWindow, before: object = None) -> list:
    qtbot.waitUntil(lambda: bool(win.search_panel.results) and win.search_panel.results is not before, timeout=60000)
    return win.search_panel.results


def test_pixels_dragged_from_a_browser_are_searched(qtbot, window) -> None:
    win, _, outside = window
    md = QMimeData()
    md.setData("image/jpeg", (outside / "chelsea copy.jpg").read_bytes())  # what a browser offers beside its URL
    md.setUrls([QUrl("https://example.org/cat.jpg")])  # remote: not fetched
    assert _drop(win, md)
    results = _wait_results(qtbot, win)
    assert Path(results[0].path).name == "chelsea.jpg"
    assert [q.label for q in win.search_panel.queries] == ["dropped image"]


def test_a_dropped_folder_gives_its_photos_and_shift_adds(qtbot, window, tmp_path) -> None:
    win, _, outside = window
    folder = tmp_path / "drop"
    folder.mkdir()
    Image.open(outside / "rocket copy.jpg").save(folder / "rocket.png")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "list.csv").write_text("a,b")
    assert not _drop(win, _urls(folder / "notes.txt"))  # a text file alone is refused at drag-enter
    assert _drop(win, _urls(folder))
    first = _wait_results(qtbot, win)
    assert [q.label for q in win.search_panel.queries] == ["rocket.png"]  # the folder's photo, nothing else
    assert Path(first[0].path).name == "rocket.jpg"
    assert _drop(win, _urls(outside / "coffee copy.jpg"), shift=True)
    second = _wait_results(qtbot, win, before=first)
    assert [q.label for q in win.search_panel.queries] == ["rocket.png", "coffee copy.jpg"]
    assert second is not first
    assert _drop(win, _urls(outside / "astronaut copy.jpg"))  # no Shift: replaces
    _wait_results(qtbot, win, before=second)
    assert [q.label for q in win.search_panel.queries] == ["astronaut copy.jpg"]


def test_ctrl_v_searches_from_any_tab(qtbot, window) -> None:
    win, _, outside = window
    win.tabs.setCurrentWidget(win.browse)
    try:
        QApplication.clipboard().setMimeData(_urls(outside / "coffee copy.jpg"))
        win.grid.setFocus()
        qtbot.keyClick(win.grid, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
        assert win.tabs.currentWidget() is win.search_panel
        first = _wait_results(qtbot, win)
        assert Path(first[0].path).name == "coffee.jpg"
        pixels = QMimeData()
        pixels.setData("image/png", _png_bytes(outside / "chelsea copy.jpg"))
        QApplication.clipboard().setMimeData(pixels)
        qtbot.keyClick(win.search_panel.grid, Qt.Key.Key_V,
                       Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        _wait_results(qtbot, win, before=first)
        assert [q.label for q in win.search_panel.queries] == ["coffee copy.jpg", "pasted image"]
    finally:
        # The clipboard owns the mime data it was given; left there, it is freed twice at exit (a segfault
        # after the last test). Clearing it while the application lives frees it once.
        QApplication.clipboard().clear()


def _png_bytes(path: Path) -> bytes:
    import io

    buf = io.BytesIO()
    Image.open(path).save(buf, "PNG")
    return buf.getvalue()


def test_enter_opens_left_right_walk_the_list_escape_goes_back(qtbot, window) -> None:
    win = window[0]
    win.tabs.setCurrentWidget(win.browse)
    grid = win.grid
    paths = [it.path for it in grid.grid_model().items]
    assert len(paths) == 5
    grid.setFocus()
    grid.setCurrentIndex(grid.grid_model().index(1))
    qtbot.keyClick(grid, Qt.Key.Key_Return)
    assert win.tabs.currentWidget() is win.viewer and win.viewer.path == paths[1]
    win.viewer.setFocus()
    qtbot.keyClick(win.viewer, Qt.Key.Key_Right)
    assert win.viewer.path == paths[2]
    qtbot.keyClick(win.viewer, Qt.Key.Key_Left)
    qtbot.keyClick(win.viewer, Qt.Key.Key_Left)
    assert win.viewer.path == paths[0]
    qtbot.keyClick(win.viewer, Qt.Key.Key_Left)  # the first photo: stays
    assert win.viewer.path == paths[0]
    qtbot.keyClick(win.viewer, Qt.Key.Key_Escape)
    assert win.tabs.currentWidget() is win.browse


def test_near_duplicates_are_hidden_by_default_with_a_visible_toggle(qtbot, window, tmp_path) -> None:
    """Copies of a photo (a stack, engine.stacks) show as one result by default; unticking the toggle lists them."""
    from engine.stacks import update_stacks

    win, lib_dir, outside = window
    Image.open(lib_dir / "coffee.jpg").save(lib_dir / "coffee again.jpg", quality=80)
    Image.open(lib_dir / "coffee.jpg").resize((280, 210)).save(lib_dir / "coffee small.jpg", quality=85)
    task = win.reindex()  # the window's own indexing folds new photos into stacks
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=60000)
    assert task.outcome == "finished", task.error
    lib = win.libraries.library
    model_id = lib.model_by_source(win.models.source).id
    assert update_stacks(lib, model_id).added == 0  # already stacked by the window's run
    panel = win.search_panel
    assert _drop(win, _urls(outside / "coffee copy.jpg"))
    assert panel.stack_box.isVisible() and panel.stack_box.isChecked()  # on the Search tab, on by default
    folded = _wait_results(qtbot, win)
    coffee = [r for r in folded if "coffee" in Path(r.path).name]
    assert len(coffee) == 1 and len(coffee[0].stack) == 2
    assert "+2" in panel.grid.grid_model().items[folded.index(coffee[0])].caption
    panel.stack_box.setChecked(False)  # searches again, every photo listed
    flat = _wait_results(qtbot, win, before=folded)
    assert len([r for r in flat if "coffee" in Path(r.path).name]) == 3


def test_the_grid_shows_one_tile_per_stack_and_a_click_opens_it(qtbot, window) -> None:
    win, lib_dir, _ = window
    Image.open(lib_dir / "rocket.jpg").save(lib_dir / "rocket again.jpg", quality=80)
    task = win.reindex()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=60000)
    assert task.outcome == "finished", task.error
    qtbot.waitUntil(lambda: bool(win.browse.stacks), timeout=10000)
    grid = win.grid
    items = grid.grid_model().items
    names = [Path(it.path).name for it in items]
    assert len(items) == 5 and sum(n.startswith("rocket") for n in names) == 1  # 6 photos, one stack of 2
    tile = next(i for i, it in enumerate(items) if it.caption)
    assert items[tile].caption == "▸ stack of 2"
    win.tabs.setCurrentWidget(win.browse)
    click = lambda row: qtbot.mouseClick(grid.viewport(), Qt.MouseButton.LeftButton,
                                         pos=grid.visualRect(grid.grid_model().index(row)).center())
    click(tile)
    assert len(grid.grid_model().items) == 6 and "▾ 2 photos" in [it.caption for it in grid.grid_model().items]
    cover = next(i for i, it in enumerate(grid.grid_model().items) if it.caption)
    click(cover)
    assert len(grid.grid_model().items) == 5
