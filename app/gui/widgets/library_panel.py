"""Left dock: which library, its source folders, counts and unreadable files, and "Add folder…"."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QLabel,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)


class LibraryPanel(QWidget):
    library_selected = Signal(str)
    add_folder_requested = Signal(str)
    show_errors_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.libraries = QComboBox()
        self.libraries.setEditable(False)
        self.libraries.activated.connect(lambda i: self.library_selected.emit(self.libraries.itemText(i)))
        layout.addWidget(self.libraries)
        layout.addWidget(QLabel("Folders"))
        self.folders = QListWidget()
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
        path = QFileDialog.getExistingDirectory(self, "Add a folder of photos")
        if path:
            self.add_folder_requested.emit(path)

    def show_library(self, names: list[str], current: str, folders: list[str], counts: dict) -> None:
        self.libraries.blockSignals(True)
        self.libraries.clear()
        self.libraries.addItems(names)
        if current in names:
            self.libraries.setCurrentText(current)
        self.libraries.blockSignals(False)
        self.folders.clear()
        self.folders.addItems(folders)
        total, ok, errors = counts.get("total", 0), counts.get("ok", 0), counts.get("error", 0)
        self.counts.setText(f"{ok} photos indexed" + (f" of {total}" if total != ok + errors else "")
                            + (f"<br><span style='color:#c66'>{errors} unreadable</span>" if errors else ""))
        self.errors_button.setVisible(bool(errors))
