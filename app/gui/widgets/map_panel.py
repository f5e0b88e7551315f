"""The Map tab: the library's map (a PCA layout at once, UMAP when ready) coloured by cluster, folder, label or
date with a legend; box or lasso selection into a labelled side grid; the latest search's top results ringed."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.thumbnails import ThumbnailCache
from app.gui.widgets.map_colours import COLOUR_BY, PhotoFacts, groups_for, read_facts
from app.gui.widgets.map_view import MapView
from app.gui.widgets.thumbnail_grid import GridItem, ThumbnailGrid
from app.gui.workers import Task, TaskRunner

RING_TOP = 12  # a search's best results ringed on the map: a handful to find, not the whole library
EMPTY_SELECTION = "Nothing selected.\n\nChoose Box or Lasso above and draw around photos on the map, or click a " \
                  "colour in the legend, to see those photos here. Double-click a dot to open its photo."


def _map_task(report, cancelled, lib, model_source: str, refit: bool, quick: bool):
    """``lib`` is the window's open Library: its in-memory vector index serves every panel (see search_panel)."""
    from engine.stacks import stacks
    from engine.viz.library_map import load_map, one_per_stack, quick_layout, update_map

    model = lib.model_by_source(model_source)
    if model is None:
        if quick:  # the tab opening on a library not indexed yet: say so in the panel, no dialog
            return None, "unindexed", {}, PhotoFacts()
        raise ValueError(f"this library is not indexed with {model_source} yet")
    paths = dict(lib.image_paths(status="ok"))  # for the grid of map selections; read here, off the UI thread
    if quick:
        stored = load_map(lib, model.id)
        m, kind = (stored, "stored") if len(stored.ids) else (quick_layout(lib, model.id), "pca")
    else:
        m, kind = update_map(lib, model.id, refit=refit, progress=lambda p: report(0, 0, p.phase)), "umap"
    m = one_per_stack(m, stacks(lib, model.id))  # one dot per stack of copies and bursts
    return m, kind, paths, read_facts(lib, m.ids)


def _swatch(colour: str) -> QIcon:
    pix = QPixmap(14, 14)
    pix.fill(QColor(colour))
    return QIcon(pix)


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
        self.fit_button = QPushButton("Fit")
        self.fit_button.setToolTip("Show the whole map")
        bar.addWidget(self.fit_button)
        bar.addSpacing(12)
        bar.addWidget(QLabel("Colour by"))
        self.colour_by = QComboBox()
        self.colour_by.addItems(list(COLOUR_BY))
        self.colour_by.setToolTip("Cluster: groups of similar photos found on the map; or the photos' folder, "
                                  "first label or capture date")
        self.colour_by.currentTextChanged.connect(lambda _t: self.recolour())
        bar.addWidget(self.colour_by)
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
        for b in [*self.modes.buttons(), self.fit_button, self.update_button, self.refit_button]:
            b.setFixedWidth(b.fontMetrics().horizontalAdvance(b.text()) + 28)
        self.state = QLabel()  # in the side panel: the bar has no room for it in a small window
        self.state.setWordWrap(True)
        self.view = MapView(cache)
        self.view.selection_changed.connect(self._selected)
        self.view.photo_activated.connect(self.open_photo)
        self.fit_button.clicked.connect(self.view.fit)

        # Right: the legend, then the selected photos (or what to do to select some).
        side = QWidget()
        sv = QVBoxLayout(side)
        sv.setContentsMargins(0, 0, 0, 0)
        self.legend_title = QLabel("<b>Colours</b>")
        self.legend = QListWidget()
        self.legend.setIconSize(QSize(14, 14))
        self.legend.setToolTip("Click a colour to select its photos")
        self.legend.itemClicked.connect(self._legend_clicked)
        self.ring_note = QLabel()
        self.ring_note.setWordWrap(True)
        self.selection_title = QLabel("<b>Selected photos</b>")
        self.grid = ThumbnailGrid(cache, icon=80)  # two columns in the side panel
        self.grid.doubleClicked.connect(
            lambda i: self.open_photo.emit(self.grid.grid_model().items[i.row()].image_id))
        self.empty = QLabel(EMPTY_SELECTION)
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.empty.setMargin(8)
        self.selection = QStackedWidget()
        self.selection.addWidget(self.empty)
        self.selection.addWidget(self.grid)
        for w, stretch in ((self.state, 0), (self.legend_title, 0), (self.legend, 2), (self.ring_note, 0),
                           (self.selection_title, 0), (self.selection, 5)):
            sv.addWidget(w, stretch)
        side.setMinimumWidth(230)
        split = QSplitter()
        split.addWidget(self.view)
        split.addWidget(side)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)
        self.splitter = split
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(split, 1)
        self.kind = ""
        self._paths: dict[int, str] = {}
        self._clusters: np.ndarray | None = None
        self._facts = PhotoFacts()
        self.legend_entries: list = []
        self.last_search: tuple[list[int], list[int]] = ([], [])
        self.ringed: list[int] = []
        self._show_ring_note()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        total = self.splitter.width()
        if total > 0 and self.splitter.sizes()[1] < 230:
            self.splitter.setSizes([total - 300, 300])

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
        m, kind, self._paths, self._facts = result
        self.kind = kind
        if m is None:
            self.state.setText(f"This library has no vectors from {self.models.source} yet: index it to see the map")
            return
        self._clusters = m.clusters if (m.clusters >= 0).any() else None
        self.view.set_points(m.ids, m.coords)
        self.recolour()
        self._selected([])
        self._ring()
        if kind == "pca":
            self.state.setText(f"{len(m.ids)} photos · quick PCA layout while UMAP computes…")
            self.compute(refit=False)
        else:
            n_clusters = len(set(m.clusters.tolist()) - {-1})
            self.state.setText(f"{len(m.ids)} photos · {n_clusters} clusters")

    def recolour(self) -> None:
        groups, self.legend_entries = groups_for(self.colour_by.currentText(), self.view.ids, self._clusters,
                                                 self._facts)
        self.view.set_groups(groups)
        self.legend.clear()
        for e in self.legend_entries:
            item = QListWidgetItem(_swatch(e.colour), f"{e.name}  ({e.count})")
            item.setData(Qt.ItemDataRole.UserRole, e.group)
            self.legend.addItem(item)

    def _legend_clicked(self, item: QListWidgetItem) -> None:
        group = item.data(Qt.ItemDataRole.UserRole)
        self.view.select_ids([int(i) for i in self.view.ids[self.view.groups == group]])

    def _selected(self, ids: list[int]) -> None:
        self.grid.grid_model().set_items([GridItem(i, self._paths.get(i, "")) for i in ids])
        self.selection.setCurrentWidget(self.grid if ids else self.empty)
        self.selection_title.setText(f"<b>Selected photos</b> ({len(ids)})" if ids else "<b>Selected photos</b>")
        if ids:
            self.status.emit(f"{len(ids)} photos selected on the map")

    def show_search(self, query_ids: list[int], result_ids: list[int]) -> None:
        """The latest search: its queries and its RING_TOP best results are ringed, whenever the map is shown."""
        self.last_search = (list(query_ids), list(result_ids))
        self._ring()

    def _ring(self) -> None:
        queries, results = self.last_search
        top = [i for i in results if i not in set(queries)][:RING_TOP]
        self.view.set_highlight(queries, top)
        self.ringed = top
        self._show_ring_note()

    def _show_ring_note(self) -> None:
        n = len(self.ringed)
        self.ring_note.setText(
            f"Ringed: the latest search's query (red) and its {n} best results (yellow)" if n else
            "Search by a photo, and its best results are ringed here")
