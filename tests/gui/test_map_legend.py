"""The Map tab as a person reads it: dots coloured by cluster with a legend (or by folder, label, date), the
selection marked on the map and listed in a labelled side panel (with a hint when empty), a "Fit" button instead
of pyqtgraph's "A", and the latest search's best results ringed, even when it was made before the map opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings

from app.gui.main_window import MainWindow
from app.gui.widgets.map_colours import NONE_COLOUR, colour_of
from app.gui.widgets.map_panel import EMPTY_SELECTION, RING_TOP
from engine.store import Library
from engine.store.indexer import index_library
from tests.test_library_map import _photos


def test_map_legend_colour_by_selection_and_search_rings(qtbot, tmp_path: Path, skimage_data_dir: Path,
                                                          tiny_checkpoint: Path) -> None:
    photos = tmp_path / "photos"
    _photos(photos / "indoor", skimage_data_dir, 18)
    _photos(photos / "outdoor", skimage_data_dir, 24, offset=18)
    with Library.open("maps") as lib:
        index_library(lib, str(tiny_checkpoint), folders=[str(photos)], device="cpu", precision="fp32")
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    settings.setValue("library/name", "maps")
    settings.setValue("model/source", str(tiny_checkpoint))
    win = MainWindow(settings=settings, first_start_sample=False)
    qtbot.addWidget(win)
    win.resize(1000, 700)
    win.show()
    ids = [it.image_id for it in win.grid.grid_model().items]
    win.tag(ids[:5], "cats")

    # A search before the Map tab was ever opened: 60 results asked on a 42-photo library.
    query = photos / "indoor" / "p002.jpg"
    win.search_panel.k.setValue(60)
    task = win.search_files([query])
    qtbot.waitUntil(lambda: task.outcome is not None and bool(win.search_panel.results), timeout=60000)
    assert len(win.search_panel.results) == 41  # every photo but the query itself (the self rule)

    win.tabs.setCurrentWidget(win.map_tab)
    panel = win.map_panel
    qtbot.waitUntil(lambda: panel.kind == "umap", timeout=240000)
    # Only the query and the top results are ringed, not every photo.
    ringed = panel.view.highlight.data
    assert len(ringed) == 1 + RING_TOP
    assert panel.ringed == [r.image_id for r in win.search_panel.results if r.path != str(query)][:RING_TOP]

    # Colour by cluster: one legend line per cluster with its count; the dots wear the same colours.
    assert panel.colour_by.currentText() == "Cluster"
    entries = panel.legend_entries
    assert entries and all(e.name.startswith("Cluster ") for e in entries)
    assert sum(e.count for e in entries) == len(panel.view.ids) == 42 and panel.legend.count() == len(entries)
    brushes = panel.view.scatter.data["brush"]
    for n, g in enumerate(panel.view.groups[:10]):
        assert brushes[n].color().name() == colour_of(int(g))

    panel.colour_by.setCurrentText("Folder")
    assert sorted((e.name, e.count) for e in panel.legend_entries) == [("indoor", 18), ("outdoor", 24)]
    assert panel.legend.item(0).text() == "outdoor  (24)"  # the biggest first
    panel.colour_by.setCurrentText("Label")
    assert [(e.name, e.count) for e in panel.legend_entries] == [("cats", 5), ("no label", 37)]
    assert panel.legend_entries[-1].colour == NONE_COLOUR
    panel.colour_by.setCurrentText("Date")
    assert [(e.name, e.count) for e in panel.legend_entries] == [("no date", 42)]

    # Selection: empty-state text first; a legend click selects that group, marked on the map and listed.
    assert panel.selection.currentWidget() is panel.empty and panel.empty.text() == EMPTY_SELECTION
    panel.colour_by.setCurrentText("Label")
    panel.legend.itemClicked.emit(panel.legend.item(0))
    assert sorted(panel.view.selected) == sorted(ids[:5])
    assert panel.selection.currentWidget() is panel.grid and panel.grid.grid_model().rowCount() == 5
    assert panel.selection_title.text() == "<b>Selected photos</b> (5)"
    marked = np.array([[p.pos().x(), p.pos().y()] for p in panel.view.selection_item.points()])
    rows = [int(np.flatnonzero(panel.view.ids == i)[0]) for i in ids[:5]]
    assert np.allclose(np.sort(marked, axis=0), np.sort(panel.view.coords[rows], axis=0))

    # No stray "A" button; a labelled Fit button brings every photo back into view.
    assert not panel.view.getPlotItem().autoBtn.isVisible()
    panel.view.getViewBox().scaleBy((0.05, 0.05))
    assert len(panel.view.visible_indices()) < 42
    panel.fit_button.click()
    assert len(panel.view.visible_indices()) == 42
    # The side panel keeps its width in a small window.
    assert panel.splitter.widget(1).width() >= 230
