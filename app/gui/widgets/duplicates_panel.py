"""Duplicates: groups in tiers (exact copies, near-identical, same scene), compared side by side, keeper marked.

"Move others to a folder" is the only action, and it asks first: nothing leaves its place without confirmation,
and nothing is ever deleted.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.gui.thumbnails import ThumbnailCache
from app.gui.workers import Task, TaskRunner


def _find_task(report, cancelled, lib, model_source: str, near: float, scene: float):
    """``lib`` is the window's open Library: its in-memory vector index serves every panel (see search_panel)."""
    from engine import dedup

    model = lib.model_by_source(model_source)
    if model is None:
        raise ValueError(f"this library is not indexed with {model_source} yet")
    groups = dedup.find_duplicates(lib, model.id, near=near, scene=scene,  # raises Cancelled
                                   progress=lambda p: report(p.done, p.total, "Comparing photos…"), cancel=cancelled)
    paths = {i: r for g in groups for i in g.image_ids if (r := lib.image(i)) is not None}  # grouped photos only
    return groups, paths


class DuplicatesPanel(QWidget):
    status = Signal(str)
    task_started = Signal(object, str)  # a long task: the window's task bar shows its progress and Cancel
    error = Signal(str, str)
    files_moved = Signal(int)

    def __init__(self, models, libraries, runner: TaskRunner, cache: ThumbnailCache,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.models, self.libraries, self.runner, self.cache = models, libraries, runner, cache
        self.groups: list = []
        self.records: dict = {}

        top = QHBoxLayout()
        top.addWidget(QLabel("Near-identical ≥"))
        self.near = QDoubleSpinBox()
        self.near.setRange(0.5, 1.0)
        self.near.setSingleStep(0.01)
        self.near.setDecimals(3)
        self.near.setValue(0.95)
        self.near.setToolTip("Cosine similarity for re-encoded, resized or slightly cropped copies")
        top.addWidget(self.near)
        top.addWidget(QLabel("Same scene ≥"))
        self.scene = QDoubleSpinBox()
        self.scene.setRange(0.3, 1.0)
        self.scene.setSingleStep(0.01)
        self.scene.setDecimals(3)
        self.scene.setValue(0.80)
        self.scene.setToolTip("Cosine similarity for photos of the same scene (bursts, slight moves)")
        top.addWidget(self.scene)
        self.find_button = QPushButton("Find duplicates")
        self.find_button.clicked.connect(self.find)
        top.addWidget(self.find_button)
        top.addStretch(1)
        self.summary = QLabel()
        top.addWidget(self.summary)

        self.group_list = QListWidget()
        self.group_list.setIconSize(QSize(64, 64))
        self.group_list.setWordWrap(True)  # full file names, on two lines if need be, never cut
        self.group_list.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.group_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.group_list.setMinimumWidth(240)
        self.group_list.currentRowChanged.connect(self.show_group)
        self.compare = QListWidget()
        self.compare.setViewMode(QListWidget.ViewMode.IconMode)
        self.compare.setIconSize(QSize(240, 240))
        self.compare.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.compare.setWordWrap(True)
        self.compare.setSelectionMode(QListWidget.SelectionMode.NoSelection)
        self.move_button = QPushButton("Move others to a folder…")
        self.move_button.setToolTip("Moves every photo of this group except the keeper (★); asks first")
        self.move_button.clicked.connect(self._move_clicked)
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(self.compare, 1)
        rv.addWidget(self.move_button)
        split = QSplitter()
        split.addWidget(self.group_list)
        split.addWidget(right)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 2)
        split.setSizes([320, 640])
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(split, 1)
        cache.updated.connect(lambda _ids: self._refresh_icons())

    def find(self) -> Task | None:
        lib = self.libraries.library
        if lib is None:
            return None
        task = Task(_find_task, lib, self.models.source, self.near.value(), self.scene.value(),
                    name="duplicates")
        task.signals.finished.connect(self._show)
        task.signals.failed.connect(lambda m, _tb: self.error.emit("Cannot look for duplicates", m))
        self.status.emit("Looking for duplicates…")
        self.task_started.emit(task, "Looking for duplicates")
        return self.runner.start(task)

    def _show(self, result) -> None:
        from engine.dedup import TIER_NAMES

        self.groups, self.records = result
        self.group_list.clear()
        for g in self.groups:
            keeper = self.records.get(g.keeper_id)
            name = Path(keeper.path).name if keeper else str(g.keeper_id)
            item = QListWidgetItem(f"{name}\n{TIER_NAMES[g.tier]} · {len(g.image_ids)} photos")
            item.setData(Qt.ItemDataRole.UserRole, g.keeper_id)
            item.setToolTip("\n".join(self.records[i].path for i in g.image_ids if i in self.records))
            self.group_list.addItem(item)
        self.status.emit("")  # "Looking for duplicates…" is over: the summary says what was found
        spare = sum(len(g.image_ids) - 1 for g in self.groups)
        self.summary.setText(f"{len(self.groups)} groups; {spare} photos beyond the keepers")
        if self.groups:
            self.group_list.setCurrentRow(0)
        else:
            self.compare.clear()
        self._refresh_icons()

    def show_group(self, row: int) -> None:
        self.compare.clear()
        if not 0 <= row < len(self.groups):
            return
        g = self.groups[row]
        for image_id, score in zip(g.image_ids, g.scores, strict=True):
            r = self.records.get(image_id)
            if r is None:
                continue
            star = "★ keeper · " if image_id == g.keeper_id else ""
            taken = r.captured_at.strftime("%Y-%m-%d") if r.captured_at else "no date"
            item = QListWidgetItem(f"{star}{Path(r.path).name}\n{r.width}×{r.height} · {r.size / 1e6:.1f} MB · "
                                   f"{taken} · cos {score:.3f}")
            item.setData(Qt.ItemDataRole.UserRole, image_id)
            item.setToolTip(r.path)
            self.compare.addItem(item)
        self._refresh_icons()

    def _refresh_icons(self) -> None:
        for view in (self.compare, self.group_list):
            for i in range(view.count()):
                item = view.item(i)
                if not item.icon().isNull():
                    continue
                pix = self.cache.get(item.data(Qt.ItemDataRole.UserRole))
                if pix is not None and not pix.isNull():
                    item.setIcon(QIcon(pix))

    def others_in_current_group(self) -> list[str]:
        row = self.group_list.currentRow()
        if not 0 <= row < len(self.groups):
            return []
        g = self.groups[row]
        return [self.records[i].path for i in g.image_ids if i != g.keeper_id and i in self.records]

    def _move_clicked(self) -> None:
        others = self.others_in_current_group()
        if not others:
            return
        from app.gui.widgets.library_panel import choose_folder

        dest = choose_folder(self, "Move the duplicates to")
        if dest:
            self.move_others(dest, confirm=True)

    def move_others(self, dest: str, confirm: bool = True) -> int:
        from engine.photo_files import move_files

        others = self.others_in_current_group()
        if not others:
            return 0
        if confirm:
            listing = "\n".join(others[:12]) + ("\n…" if len(others) > 12 else "")
            answer = QMessageBox.question(
                self, "Move duplicates",
                f"Move {len(others)} photos to\n{dest}?\n\n{listing}\n\nThe keeper stays where it is. "
                "Nothing is deleted.")
            if answer != QMessageBox.StandardButton.Yes:
                return 0
        try:
            moved = move_files(others, dest)
        except OSError as e:
            done = getattr(e, "done", [])  # PartialMoveError: the photos moved before the error
            moved_list = "".join(f"\n{old} → {new}" for old, new in done[:12]) + ("\n…" if len(done) > 12 else "")
            self.error.emit("Could not move every photo", f"{getattr(e, 'cause', e)}\n\n{len(done)} of "
                            f"{len(others)} photos were moved to {dest} before the error:{moved_list}")
            if done:
                self.files_moved.emit(len(done))
            return len(done)
        self.status.emit(f"Moved {len(moved)} photos to {dest}; re-index the library to update it")
        row = self.group_list.currentRow()
        del self.groups[row]
        self.group_list.takeItem(row)
        self.files_moved.emit(len(moved))
        return len(moved)
