"""The Map tab: the library's map (a PCA layout at once, UMAP when ready), selection into a grid, search shown."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QButtonGroup, QHBoxLayout, QLabel, QPushButton, QSplitter, QVBoxLayout, QWidget

from app.gui.thumbnails import ThumbnailCache
from app.gui.widgets.map_view import MapView
from app.gui.widgets.thumbnail_grid import GridItem, ThumbnailGrid
from app.gui.workers import Task, TaskRunner


def _map_task(report, cancelled, lib, model_source: str, refit: bool, quick: bool):
    """``lib`` is the window's open Library: its in-memory vector index serves every panel (see search_panel)."""
    from engine.viz.library_map import load_map, quick_layout, update_map

    model = lib.model_by_source(model_source)
    if model is None:
        if quick:  # the tab opening on a library not indexed yet: say so in the panel, no dialog
            return None, "unindexed", {}
        raise ValueError(f"this library is not indexed with {model_source} yet")
    paths = dict(lib.image_paths(status="ok"))  # for the grid of map selections; read here, off the UI thread
    if quick:
        stored = load_map(lib, model.id)
        if len(stored.ids):
            return stored, "stored", paths
        return quick_layout(lib, model.id), "pca", paths
    return update_map(lib, model.id, refit=refit, progress=lambda p: report(0, 0, p.phase)), "umap", paths


class MapPanel(QWidget):
    status = Signal(str)
    task_started = Signal(object, str)  # a long task: the window's task bar shows its progress and Cancel
    error = Signal(str, str)
    open_photo = Signal(int)

    def __init__(self, models, libraries, runner: TaskRunner, cache: ThumbnailCache,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.models, self.libraries, self.runner = models, libraries, runner
        bar = QHBoxLayout()
        self.modes = QButtonGroup(self)
        for i, (name, tip) in enumerate((("Pan", "Drag to move, wheel to zoom"), ("Box", "Drag a box to select"),
                                         ("Lasso", "Draw around photos to select them"))):
            b = QPushButton(name)
            b.setCheckable(True)
            b.setChecked(i == 0)
            b.setToolTip(tip)
            self.modes.addButton(b, i)
            bar.addWidget(b)
        self.modes.idClicked.connect(lambda i: self.view.set_mode(("pan", "box", "lasso")[i]))
        self.update_button = QPushButton("Update map")
        self.update_button.setToolTip("Place new photos on the map (or fit it, the first time)")
        self.update_button.clicked.connect(lambda: self.compute(refit=False))
        self.refit_button = QPushButton("Refit")
        self.refit_button.setToolTip("Fit the whole map again (photos move)")
        self.refit_button.clicked.connect(lambda: self.compute(refit=True))
        bar.addSpacing(12)
        bar.addWidget(self.update_button)
        bar.addWidget(self.refit_button)
        bar.addStretch(1)
        self.state = QLabel()
        bar.addWidget(self.state)
        self.view = MapView(cache)
        self.view.selection_changed.connect(self._selected)
        self.view.photo_activated.connect(self.open_photo)
        self.grid = ThumbnailGrid(cache, icon=96)
        split = QSplitter()
        split.addWidget(self.view)
        split.addWidget(self.grid)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(split, 1)
        self.kind = ""
        self._paths: dict[int, str] = {}

    def load(self) -> Task | None:
        """Show what there is at once (the stored map, or a PCA layout); start UMAP if there is no stored map."""
        return self._run(refit=False, quick=True)

    def compute(self, refit: bool = False) -> Task | None:
        return self._run(refit=refit, quick=False)

    def _run(self, refit: bool, quick: bool) -> Task | None:
        lib = self.libraries.library
        if lib is None:
            return None
        task = Task(_map_task, lib, self.models.source, refit, quick, name="map")
        task.signals.finished.connect(self._show)
        task.signals.progress.connect(lambda _d, _t, text: self.state.setText(text))
        task.signals.failed.connect(lambda m, _tb: self.error.emit("Cannot draw the map", m))
        if not quick:
            self.state.setText("Computing the map (UMAP; the first time in a session also compiles it)…")
        self.task_started.emit(task, "Computing the map")
        return self.runner.start(task)

    def _show(self, result) -> None:
        m, kind, self._paths = result
        self.kind = kind
        if m is None:
            self.state.setText(f"This library has no vectors from {self.models.source} yet: index it to see the map")
            return
        self.view.set_points(m.ids, m.coords, m.clusters if (m.clusters >= 0).any() else None)
        if kind == "pca":
            self.state.setText(f"{len(m.ids)} photos · quick PCA layout while UMAP computes…")
            self.compute(refit=False)
        else:
            n_clusters = len(set(m.clusters.tolist()) - {-1})
            self.state.setText(f"{len(m.ids)} photos · {n_clusters} clusters")

    def _selected(self, ids: list[int]) -> None:
        self.grid.grid_model().set_items([GridItem(i, self._paths.get(i, "")) for i in ids])
        self.status.emit(f"{len(ids)} photos selected on the map")

    def show_search(self, query_ids: list[int], result_ids: list[int]) -> None:
        self.view.set_highlight(query_ids, result_ids)
