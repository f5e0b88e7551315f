"""Labels: tag a few photos, let the embeddings suggest the rest (k-NN or a linear probe), review and accept.

Numbers come from engine.labels; this panel shows suggestions most-confident first and writes what the user
accepts.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.thumbnails import ThumbnailCache
from app.gui.widgets.thumbnail_grid import GridItem, ThumbnailGrid
from app.gui.workers import Task, TaskRunner


def _suggest_task(report, cancelled, lib, model_source: str, method: str):
    """``lib`` is the window's open Library: its in-memory vector index serves every panel (see search_panel)."""
    from engine import labels

    model = lib.model_by_source(model_source)
    if model is None:
        raise ValueError(f"this library is not indexed with {model_source} yet; add a folder or re-index first")
    return labels.suggest(lib, model.id, method=method)


class LabelsPanel(QWidget):
    status = Signal(str)
    task_started = Signal(object, str)  # a long task: the window's task bar shows its progress and Cancel
    error = Signal(str, str)

    def __init__(self, models, libraries, runner: TaskRunner, cache: ThumbnailCache,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.models, self.libraries, self.runner = models, libraries, runner
        self.suggestions: list = []
        top = QHBoxLayout()
        top.addWidget(QLabel("Suggest with"))
        self.method = QComboBox()
        self.method.addItem("k-NN (k=20, T=0.07)", "knn")
        self.method.addItem("Linear probe", "probe")
        top.addWidget(self.method)
        self.suggest_button = QPushButton("Suggest labels")
        self.suggest_button.setToolTip("Label every untagged photo from the ones you tagged (needs two labels)")
        self.suggest_button.clicked.connect(self.suggest)
        top.addWidget(self.suggest_button)
        top.addStretch(1)
        review = QHBoxLayout()  # a second row: one row did not fit a 1000-pixel window
        review.addWidget(QLabel("Accept all above"))
        self.min_conf = QDoubleSpinBox()
        self.min_conf.setRange(0.0, 1.0)
        self.min_conf.setSingleStep(0.05)
        self.min_conf.setValue(0.9)
        review.addWidget(self.min_conf)
        self.accept_above = QPushButton("Accept")
        self.accept_above.clicked.connect(lambda: self.accept([s for s in self.suggestions
                                                               if s.confidence >= self.min_conf.value()]))
        review.addWidget(self.accept_above)
        self.accept_selected = QPushButton("Accept selected")
        self.accept_selected.clicked.connect(self._accept_selected)
        self.reject_selected = QPushButton("Reject selected")
        self.reject_selected.setToolTip("Drop these suggestions; tag the photos yourself to correct them")
        self.reject_selected.clicked.connect(self._reject_selected)
        review.addSpacing(16)
        review.addWidget(self.accept_selected)
        review.addWidget(self.reject_selected)
        review.addStretch(1)
        self.export_button = QPushButton("Export labels…")
        self.export_button.clicked.connect(self._export)
        top.addWidget(self.export_button)
        self.summary = QLabel("Tag photos in the Library tab (select, then Tag…), then suggest labels here.")
        self.grid = ThumbnailGrid(cache)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(review)
        layout.addWidget(self.summary)
        layout.addWidget(self.grid, 1)

    def suggest(self) -> Task | None:
        lib = self.libraries.library
        if lib is None:
            return None
        task = Task(_suggest_task, lib, self.models.source, self.method.currentData(), name="labels")
        task.signals.finished.connect(self._show)
        task.signals.failed.connect(lambda m, _tb: self.error.emit("Cannot suggest labels", m))
        self.status.emit("Suggesting labels…")
        self.task_started.emit(task, "Suggesting labels")
        return self.runner.start(task)

    def _show(self, suggestions: list) -> None:
        self.suggestions = suggestions
        self.grid.grid_model().set_items([GridItem(s.image_id, s.path, score=s.confidence,
                                                   caption=f"{s.label} {s.confidence:.2f}") for s in suggestions])
        by_label: dict[str, int] = {}
        for s in suggestions:
            by_label[s.label] = by_label.get(s.label, 0) + 1
        parts = ", ".join(f"{n} {name}" for name, n in sorted(by_label.items()))
        self.summary.setText(f"{len(suggestions)} suggestions ({parts}), most confident first")

    def accept(self, chosen: list) -> int:
        from engine import labels

        if not chosen or self.libraries.library is None:
            return 0
        n = labels.accept(self.libraries.library, chosen)
        done = {s.image_id for s in chosen}
        self._show([s for s in self.suggestions if s.image_id not in done])
        self.status.emit(f"Accepted {n} labels")
        return n

    def _selected(self) -> list:
        ids = {it.image_id for it in self.grid.selected_items()}
        return [s for s in self.suggestions if s.image_id in ids]

    def _accept_selected(self) -> None:
        self.accept(self._selected())

    def _reject_selected(self) -> None:
        gone = {s.image_id for s in self._selected()}
        self._show([s for s in self.suggestions if s.image_id not in gone])

    def _export(self) -> None:
        from engine import labels

        if self.libraries.library is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export labels", "labels.csv", "CSV (*.csv);;JSON (*.json)")
        if path:
            labels.export(self.libraries.library, path)
            self.status.emit(f"Labels written to {path}")
