"""Small and big windows: from 1000×700 to 2560×1440 no button, check box or label on any tab is squeezed below
the width its text needs, the library dock and the viewer's sliders keep usable widths, and the window cannot be
made smaller than the size where that still holds."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QAbstractButton, QLabel, QPushButton, QWidget

from app.gui.main_window import MINIMUM_SIZE


def _squeezed(tab: QWidget) -> list[str]:
    out = []
    for w in tab.findChildren(QWidget):
        if not w.isVisible() or not isinstance(w, QAbstractButton | QLabel):
            continue
        if isinstance(w, QLabel) and (w.wordWrap() or not w.text() or (w.pixmap() is not None and
                                      not w.pixmap().isNull())):
            continue
        need = w.minimumSizeHint().width()
        if isinstance(w, QPushButton):  # the style's minimum button width is not needed to read the text
            need = w.fontMetrics().horizontalAdvance(w.text()) + 12
        if w.width() < need - 1:
            out.append(f"{type(w).__name__} {getattr(w, 'text', lambda: '')()!r}: {w.width()} < {need}")
    return out


@pytest.mark.parametrize("size", [(1000, 700), (2560, 1440)])
def test_every_tab_fits_without_cutting_text(qtbot, family_window, size) -> None:
    win = family_window
    win.resize(*size)
    qtbot.waitUntil(lambda: win.width() == size[0] and win.height() == size[1], timeout=5000)
    win.browse.indexing = True  # the longest count text: "5 photos so far" while an indexing run goes on
    win.refresh_grid()
    win.browse.show_notice("The sample is indexed with the bundled demo model. For DINOv2's own features download "
                           "dinov2_vits14 (Model ▸ Models…).")
    win.open_photo(win.grid.grid_model().items[0].path)
    problems = {}
    for i in range(win.tabs.count()):
        if win.tabs.tabText(i) in ("Map",):
            continue  # built on first open with its own test below
        win.tabs.setCurrentIndex(i)
        qtbot.wait(50)
        problems[win.tabs.tabText(i)] = _squeezed(win.tabs.widget(i))
    problems["status bar"] = _squeezed(win.statusBar())
    assert not any(problems.values()), problems
    assert win.library_dock.width() >= 220
    assert win.viewer.opacity.width() >= 80 and win.browse.size_slider.width() >= 100
    assert win.browse.grid.width() > size[0] // 2  # the grid gets the room, not the dock


def test_map_tab_fits_a_small_window(qtbot, family_window) -> None:
    win = family_window
    win.resize(1000, 700)
    win.tabs.setCurrentWidget(win.map_tab)
    panel = win.map_panel
    qtbot.waitUntil(lambda: panel.kind in ("umap", "pca", "stored"), timeout=120000)
    qtbot.wait(50)
    assert not _squeezed(panel), _squeezed(panel)
    assert panel.splitter.widget(1).width() >= 230 and panel.view.width() > 400
    win.runner.cancel_all()
    qtbot.waitUntil(lambda: not win.task_bar.isVisible(), timeout=240000)


def test_the_window_stops_at_its_minimum_size(qtbot, family_window) -> None:
    win = family_window
    win.resize(500, 300)
    assert (win.width(), win.height()) == MINIMUM_SIZE
    assert MINIMUM_SIZE[0] <= 1000 and MINIMUM_SIZE[1] <= 700


@pytest.mark.parametrize("width", [1000, 2560])
def test_task_bar_leaves_the_status_message_its_room(qtbot, family_window, width) -> None:
    """A running task takes only the room it needs: a status message beside it is shown in full."""
    import threading

    from app.gui.workers import Task

    win = family_window
    win.resize(width, 800)
    release = threading.Event()
    task = Task(lambda _report, _cancelled: release.wait(30), name="wait")
    win.run_task(task, "Indexing 12/42")
    try:
        # A long checkpoint path (the fixture's is under the temporary folder) must not crowd the message out.
        assert win.models.source in win.model_label.toolTip()
        message = "42 results for 3 queries · 1 unreadable: broken.jpg"
        win.statusBar().showMessage(message)
        qtbot.waitUntil(win.task_bar.isVisible)
        qtbot.wait(50)
        bar = win.task_bar
        assert bar.width() <= bar.sizeHint().width() + 8
        assert bar.cancel_button.width() <= bar.cancel_button.sizeHint().width() + 8
        left_for_message = bar.x() - 8
        assert left_for_message >= win.statusBar().fontMetrics().horizontalAdvance(message)
    finally:
        release.set()
    qtbot.waitUntil(lambda: not win.task_bar.isVisible(), timeout=10000)
