"""The Library tab: every photo of the library (or of the folder picked in the dock), sorted, at the size chosen."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from app.gui.thumbnails import ThumbnailCache
from app.gui.widgets.thumbnail_grid import MAX_ICON, MIN_ICON, RowItems, ThumbnailGrid

SORTS = {"Name": "path", "Date taken": "captured_at", "Date added": "id"}


def under(path: str, folder: str) -> bool:
    """Whether ``path`` lies in ``folder`` or below it ("" stands for the whole library)."""
    if not folder:
        return True
    folder = folder.rstrip("/\\")
    return path.startswith(folder) and path[len(folder) : len(folder) + 1] in ("/", "\\", os.sep)


class BrowseTab(QWidget):
    def __init__(self, cache: ThumbnailCache, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.folder = ""  # the folder picked in the library dock; "" shows every photo
        self.rows: list[tuple[int, str]] = []
        self.indexing = False
        self.stacks: dict[int, list[int]] = {}  # cover id -> member ids, cover first (engine.stacks)
        self.expanded: set[int] = set()  # covers whose stack is shown in full
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Sort by"))
        self.sort_box = QComboBox()
        self.sort_box.addItems(list(SORTS))
        bar.addWidget(self.sort_box)
        bar.addSpacing(8)
        self.tag_button = QPushButton("Tag…")
        self.tag_button.setToolTip("Give the selected photos a label")
        bar.addWidget(self.tag_button)
        self.copy_button = QPushButton("Copy to…")
        self.copy_button.setToolTip("Copy the selected photos into a folder (nothing is moved or overwritten)")
        bar.addWidget(self.copy_button)
        bar.addSpacing(8)
        self.names_box = QCheckBox("File names")
        self.names_box.setToolTip("Show each photo's file name under its thumbnail")
        bar.addWidget(self.names_box)
        bar.addStretch(1)
        self.grid_status = QLabel()
        self.grid_status.setSizePolicy(QSizePolicy.Policy.Minimum, QSizePolicy.Policy.Preferred)  # never cut
        bar.addWidget(self.grid_status)
        bar.addSpacing(8)
        bar.addWidget(QLabel("Size"))
        self.size_slider = QSlider(Qt.Orientation.Horizontal)
        self.size_slider.setRange(MIN_ICON, MAX_ICON)
        self.size_slider.setSingleStep(16)
        self.size_slider.setPageStep(32)
        self.size_slider.setMinimumWidth(100)
        self.size_slider.setMaximumWidth(180)
        self.size_slider.setToolTip("Thumbnail size (Ctrl+wheel on the grid does the same)")
        bar.addWidget(self.size_slider)
        self.grid = ThumbnailGrid(cache)
        self.size_slider.setValue(self.grid.icon_size)
        self.size_slider.valueChanged.connect(self.grid.set_icon_size)
        self.grid.icon_size_changed.connect(self._size_changed)
        self.names_box.toggled.connect(self.grid.set_show_names)
        self.grid.clicked.connect(lambda index: self.toggle_stack(self.grid.grid_model().items[index.row()].image_id))
        # A note that must be read in full (the status bar would cut it behind the task bar): an info strip.
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet("QLabel { border: 1px solid palette(mid); border-radius: 4px; padding: 6px; }")
        self.notice.hide()
        v = QVBoxLayout(self)
        v.addLayout(bar)
        v.addWidget(self.notice)
        v.addWidget(self.grid, 1)

    def show_notice(self, text: str) -> None:
        self.notice.setText(text)
        self.notice.setVisible(bool(text))

    def _size_changed(self, size: int) -> None:
        self.size_slider.blockSignals(True)
        self.size_slider.setValue(size)
        self.size_slider.blockSignals(False)

    @property
    def order(self) -> str:
        return SORTS[self.sort_box.currentText()]

    def set_folder(self, folder: str, rows: list[tuple[int, str]] | None = None) -> None:
        """Show the photos under `folder` ("" = all), of `rows` when given (one pass over a 100k library, not two)."""
        self.folder = folder
        self.show_rows(self.rows if rows is None else rows)

    def set_stacks(self, stacks: dict[int, list[int]]) -> None:
        """Stacks of near-identical copies and bursts: one tile per stack (its cover, with a count) until opened."""
        self.stacks = stacks
        self.expanded &= set(stacks)

    def toggle_stack(self, image_id: int) -> bool:
        """Open or close the stack whose cover this is (a click on its tile); False for a photo in no stack."""
        if image_id not in self.stacks:
            return False
        self.expanded ^= {image_id}
        self.show_rows(self.rows)
        return True

    def show_rows(self, rows: list[tuple[int, str]]) -> None:
        """The library's photos in the chosen order; only those under the picked folder are shown, and a closed
        stack only by its cover."""
        self.rows = rows
        folder, stacks, expanded = self.folder, self.stacks, self.expanded
        hidden = {m for cover, members in stacks.items() if cover not in expanded for m in members[1:]}
        inside = rows if not folder else [(i, p) for i, p in rows if under(p, folder)]
        kept = [(i, p) for i, p in inside if i not in hidden] if hidden else inside  # 100k rows: no objects made
        captions = {cover: f"▾ {len(members)} photos" if cover in expanded else f"▸ stack of {len(members)}"
                    for cover, members in stacks.items() if members}
        self.grid.grid_model().set_items(RowItems(kept, captions))
        where = f" in {os.path.basename(self.folder.rstrip('/'))}" if self.folder else ""
        stacked = len(inside) - len(kept)
        more = f" (+{stacked} in stacks)" if stacked else ""
        self.grid_status.setText(f"{len(kept)} photos{more}{where}" + (" so far" if self.indexing else ""))
