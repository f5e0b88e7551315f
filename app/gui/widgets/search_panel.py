"""Drag-and-drop search: the query photos (removable), the ranked results with cosine scores, "more like these".

Queries may come from anywhere: files dropped from a file manager or from a grid, pixels from a browser or the
clipboard, a box drawn on the viewer. `engine.query.run_query` reads, recognises and embeds them and ranks the
library; this panel only collects them and shows the outcome. The main window owns the one drop handler and
the paste shortcut; both call `search_files`/`search_bytes` with `add=True` when Shift is held (else the new
photos replace the query).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImageReader, QKeySequence, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.gui.thumbnails import ThumbnailCache
from app.gui.widgets.photo_view import region_thumbnail
from app.gui.widgets.thumbnail_grid import GridItem, ThumbnailGrid
from app.gui.workers import Task, TaskRunner

log = logging.getLogger(__name__)


@dataclass
class Query:
    label: str
    path: str | None = None  # a file
    data: bytes | None = None  # pasted or dragged pixels, encoded (PNG, JPEG...)
    image_id: int | None = None  # a library photo ("More like these")
    box: tuple[float, float, float, float] | None = None  # region of `path`
    thumb: QPixmap | None = field(default=None, repr=False)

    def source(self):
        """What engine.query takes for this query."""
        from engine.query import LibraryPhoto

        if self.image_id is not None:
            return LibraryPhoto(self.image_id)
        return self.data if self.data is not None else Path(self.path)


def _small_pixmap(path: str, size: int) -> QPixmap:
    """Decode at reduced size (libjpeg scaling) with EXIF orientation: cheap even for 12 MP photos."""
    reader = QImageReader(path)
    reader.setAutoTransform(True)
    full = reader.size()
    if full.isValid():
        reader.setScaledSize(full.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio))
    return QPixmap.fromImage(reader.read())


def _search_task(report, cancelled, models, lib, queries: list[Query], k: int, fold: bool = True):
    """Run the query through engine.query (the CLI's path too) and return its outcome.

    ``lib`` is the window's open Library, shared on purpose: it keeps the vector index in memory between searches
    (reading it again from disk cost a search at 100k photos about as much as the model's forward pass). The model
    is loaded only if a query is not a library photo.
    """
    from engine.query import Region, run_query

    report(0, 0, "Searching…")
    regions = [q for q in queries if q.box]
    record = lib.model_by_source(models.source)
    load = lambda: models.extractor(patch_tokens=bool(regions))
    if regions:
        q = regions[-1]
        return run_query(lib, load, region=Region(q.source(), q.box), k=k,
                         model_id=record.id if record else None, fold_stacks=fold, cancel=cancelled)
    return run_query(lib, load, [q.source() for q in queries], k=k, model_id=record.id if record else None,
                     fold_stacks=fold, cancel=cancelled)


class SearchPanel(QWidget):
    open_photo = Signal(str, list)  # path, the result paths (the list the viewer walks with Left/Right)
    results_changed = Signal(list, list)  # query image ids (those in the library), result image ids
    status = Signal(str)
    task_started = Signal(object, str)  # a long task: the window's task bar shows its progress and Cancel
    error = Signal(str, str)

    def __init__(self, models, libraries, runner: TaskRunner, cache: ThumbnailCache,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.models, self.libraries, self.runner = models, libraries, runner
        self.queries: list[Query] = []
        self.results: list = []

        top = QHBoxLayout()
        self.hint = QLabel("Drop photos here (or anywhere on the window), or paste one with Ctrl+V, to find "
                           "similar photos in the library.")
        self.hint.setWordWrap(True)
        top.addWidget(self.hint, 1)
        top.addWidget(QLabel("Results"))
        self.k = QSpinBox()
        self.k.setRange(1, 1000)
        self.k.setValue(60)
        top.addWidget(self.k)
        self.stack_box = QCheckBox("Hide near-duplicates")
        self.stack_box.setChecked(True)
        self.stack_box.setToolTip("Near-identical copies and bursts show as their best-ranked photo; the number "
                                  "after its score says how many more it stands for")
        self.stack_box.toggled.connect(lambda _on: self.run() if self.queries else None)
        top.addWidget(self.stack_box)
        self.more_button = QPushButton("More like these")
        self.more_button.setToolTip("Search again with the selected results added to the queries")
        self.more_button.clicked.connect(self.more_like_selected)
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear)
        top.addWidget(self.more_button)
        top.addWidget(self.clear_button)

        self.query_list = QListWidget()
        self.query_list.setViewMode(QListWidget.ViewMode.IconMode)
        self.query_list.setIconSize(QSize(96, 96))
        self.query_list.setFixedHeight(132)
        self.query_list.setFlow(QListWidget.Flow.LeftToRight)
        self.query_list.setWrapping(False)
        self.query_list.setToolTip("The query photos; select one and press Delete to remove it")
        QShortcut(QKeySequence.StandardKey.Delete, self.query_list, activated=self.remove_selected_queries)

        self.grid = ThumbnailGrid(cache)
        self.grid.activated.connect(self._open_result)  # double-click, or Enter on the selected result

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.query_list)
        layout.addWidget(self.grid, 1)

    # ------------------------------------------------------------------------------------------ queries
    def search_files(self, paths: list[Path], add: bool = False) -> Task | None:
        """Search by files (a folder gives its image files); `add` keeps the current queries (Shift held)."""
        from engine.query import expand_inputs

        files, skipped = expand_inputs(paths)
        if skipped:
            self.status.emit(f"{len(skipped)} more photos left out: {skipped[0].message}")
        return self._set_queries([Query(label=f.name, path=str(f)) for f in files], add)

    def search_bytes(self, data: bytes, label: str = "dropped image", add: bool = False) -> Task | None:
        """Search by encoded pixels that arrived without a file (a browser drag, the clipboard)."""
        return self._set_queries([Query(label=label, data=data)], add)

    def add_queries(self, queries: list[Query]) -> Task | None:
        return self._set_queries(queries, add=True)

    def _set_queries(self, queries: list[Query], add: bool) -> Task | None:
        self.queries = [q for q in self.queries if not q.box] + queries if add else queries
        return self.run()

    def search_region(self, path: str, box: tuple[float, float, float, float]) -> Task | None:
        self.queries = [Query(label=f"{Path(path).name} (region)", path=path, box=box)]
        return self.run()

    def remove_selected_queries(self) -> Task | None:
        rows = sorted((self.query_list.row(i) for i in self.query_list.selectedItems()), reverse=True)
        for r in rows:
            del self.queries[r]
        return self.run() if self.queries else self.clear()

    def more_like_selected(self) -> Task | None:
        picked = self.grid.selected_items()
        if not picked:
            self.status.emit("Select some results first")
            return None
        return self.add_queries([Query(label=Path(it.path).name, path=it.path, image_id=it.image_id)
                                 for it in picked])

    def clear(self) -> None:
        self.queries, self.results = [], []
        self.query_list.clear()
        self.grid.grid_model().set_items([])

    def _show_queries(self) -> None:
        self.query_list.clear()
        for q in self.queries:
            item = QListWidgetItem(q.label)
            pix = QPixmap()
            if q.data is not None:
                pix.loadFromData(q.data)
            elif q.path and q.box:  # a region search: the box it looked for, not the whole photo
                pix = region_thumbnail(q.path, q.box, 96)
            elif q.path:
                pix = _small_pixmap(q.path, 96)
            if not pix.isNull():
                item.setIcon(QIcon(pix.scaled(96, 96, Qt.AspectRatioMode.KeepAspectRatio,
                                              Qt.TransformationMode.SmoothTransformation)))
            else:
                item.setToolTip("unreadable")
            self.query_list.addItem(item)

    # -------------------------------------------------------------------------------------------- search
    def run(self) -> Task | None:
        self._show_queries()
        if not self.queries:
            return None
        if self.libraries.library is None:
            self.error.emit("No library", "Open a library or add a folder of photos first.")
            return None
        task = Task(_search_task, self.models, self.libraries.library, list(self.queries), self.k.value(),
                    self.stack_box.isChecked(), name="search")
        task.signals.finished.connect(self._show_results)
        task.signals.failed.connect(lambda m, _tb: self.error.emit("Search failed", m))
        self.status.emit("Searching…")
        self.task_started.emit(task, "Searching")
        return self.runner.start(task)

    def _show_results(self, outcome) -> None:
        results, problems = outcome.results, [u.message for u in outcome.unusable]
        self.results = results
        self.results_changed.emit(list(outcome.in_library), [r.image_id for r in results])
        self.grid.grid_model().set_items(
            [GridItem(r.image_id, r.path, score=r.score,
                      caption=f"#{r.rank}  {r.score:.3f}" + (f"  +{len(r.stack)}" if r.stack else ""))
             for r in results])
        n = len(self.queries)
        msg = f"{len(results)} results for {n} quer{'y' if n == 1 else 'ies'}"
        log.info("search: %s; first: %s", msg, results[0].path if results else None)
        if outcome.in_library:
            msg += f" · {len(outcome.in_library)} from the library, not listed"
        if problems:
            msg += f" · {len(problems)} unreadable: " + "; ".join(problems[:3])
            self.error.emit("Some photos could not be read", "\n".join(problems))
        self.status.emit(msg)

    def _open_result(self, index) -> None:
        it = self.grid.grid_model().items[index.row()]
        self.open_photo.emit(it.path, [r.path for r in self.results])
