"""Left dock: the library, its folder tree (a click filters the grid), counts, unreadable files, "Add folder…"."""

from __future__ import annotations

import os

from PySide6.QtCore import QStandardPaths, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QLabel,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

PathRole = Qt.ItemDataRole.UserRole


def pictures_folder() -> str:
    """Where a folder picker starts: the desktop's Pictures folder (XDG, macOS, Windows), else home."""
    found = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    return found if found and os.path.isdir(found) else os.path.expanduser("~")


def choose_folder(parent: QWidget, title: str) -> str:
    """The desktop's own folder picker, opening in Pictures."""
    return QFileDialog.getExistingDirectory(parent, title, pictures_folder(), QFileDialog.Option.ShowDirsOnly)


def subfolders(root: str, paths: list[str]) -> list[str]:
    """Every folder between ``root`` and the photos under it, sorted (parents before children)."""
    root = root.rstrip("/\\")
    prefix = root + os.sep
    # The photos' own folders first (a set: 100k photos live in a few hundred folders), then their parents
    parents = {p.rpartition(os.sep)[0] for p in paths if p.startswith(prefix)}
    found: set[str] = set()
    for d in parents:
        while len(d) > len(root) and d not in found:
            found.add(d)
            d = os.path.dirname(d)
    return sorted(found)


class LibraryPanel(QWidget):
    library_selected = Signal(str)
    add_folder_requested = Signal(str)
    show_errors_requested = Signal()
    folder_selected = Signal(str)  # "" = the whole library

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumWidth(220)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Library"))
        self.libraries = QComboBox()
        self.libraries.setEditable(False)
        self.libraries.activated.connect(lambda i: self.library_selected.emit(self.libraries.itemText(i)))
        layout.addWidget(self.libraries)
        layout.addWidget(QLabel("Folders"))
        self.folders = QTreeWidget()
        self.folders.setHeaderHidden(True)
        self.folders.setToolTip("Click a folder to show only its photos")
        self.folders.currentItemChanged.connect(self._picked)
        layout.addWidget(self.folders, 1)
        self.add_button = QPushButton("Add folder…")
        self.add_button.clicked.connect(self.choose_folder)
        layout.addWidget(self.add_button)
        self.counts = QLabel()
        self.counts.setWordWrap(True)
        layout.addWidget(self.counts)
        self.errors_button = QPushButton("Unreadable files…")
        self.errors_button.clicked.connect(self.show_errors_requested)
        self.errors_button.hide()
        layout.addWidget(self.errors_button)

    def choose_folder(self) -> None:
        path = choose_folder(self, "Add a folder of photos")
        if path:
            self.add_folder_requested.emit(path)

    def _picked(self, item: QTreeWidgetItem | None, _previous=None) -> None:
        self.folder_selected.emit(item.data(0, PathRole) if item is not None else "")

    @property
    def selected_folder(self) -> str:
        item = self.folders.currentItem()
        return item.data(0, PathRole) if item is not None else ""

    def selected_source_folder(self) -> str:
        """The library folder (a top-level entry) the selection lies in; "" when "All photos" is picked."""
        item = self.folders.currentItem()
        while item is not None and item.parent() is not None and item.parent().data(0, PathRole):
            item = item.parent()
        return item.data(0, PathRole) if item is not None else ""

    def show_library(self, names: list[str], current: str, folders: list[str], counts: dict,
                     paths: list[str] | None = None) -> None:
        self.libraries.blockSignals(True)
        self.libraries.clear()
        self.libraries.addItems(names)
        if current in names:
            self.libraries.setCurrentText(current)
        self.libraries.blockSignals(False)
        self.show_folders(folders, paths or [])
        self.show_counts(counts)

    def show_folders(self, folders: list[str], paths: list[str]) -> None:
        keep = self.selected_folder
        self.folders.blockSignals(True)
        self.folders.clear()
        everything = QTreeWidgetItem(["All photos"])
        everything.setData(0, PathRole, "")
        self.folders.addTopLevelItem(everything)
        current = everything
        for folder in folders:
            top = QTreeWidgetItem(everything, [os.path.basename(folder.rstrip("/\\")) or folder])
            top.setData(0, PathRole, folder)
            top.setToolTip(0, folder)
            items = {folder.rstrip("/\\"): top}
            for sub in subfolders(folder, paths):
                parent = items.get(os.path.dirname(sub), top)
                item = QTreeWidgetItem(parent, [os.path.basename(sub)])
                item.setData(0, PathRole, sub)
                item.setToolTip(0, sub)
                items[sub] = item
            current = next((it for p, it in items.items() if p == keep), current)
        everything.setExpanded(True)
        self.folders.setCurrentItem(current)
        self.folders.blockSignals(False)

    def show_counts(self, counts: dict) -> None:
        total, ok, errors = counts.get("total", 0), counts.get("ok", 0), counts.get("error", 0)
        self.counts.setText(f"{ok} photos indexed" + (f" of {total}" if total != ok + errors else "")
                            + (f"<br><span style='color:#c66'>{errors} unreadable</span>" if errors else ""))
        self.errors_button.setVisible(bool(errors))
