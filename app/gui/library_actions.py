"""The Library menu: new, rename, remove a folder, remove a library, and the bundled sample's first start.

Every question is a window-modal dialog opened without blocking (``self.dialog`` while it is up), so the
window keeps painting and tests answer it by clicking its buttons. Nothing here ever deletes a photo.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QInputDialog, QMenu, QMessageBox, QWidget

log = logging.getLogger(__name__)

SAMPLE_NAME = "sample"


def copy_sample_photos() -> Path:
    """The bundled sample photos, copied once into the data folder: a library pointing inside the bundle breaks
    when the bundle moves or is updated."""
    from app.gui.resources import asset_path
    from engine import data_home

    dest = data_home.home() / "sample-photos"
    if not dest.is_dir():
        src = asset_path("sample")
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.py", "__pycache__"))  # photos and licences
        tmp.rename(dest)  # all or nothing: a half copy is never taken for the sample
    return dest


class LibraryActions(QObject):
    def __init__(self, window) -> None:
        super().__init__(window)
        self.window = window
        self.dialog: QWidget | None = None

    @property
    def libraries(self):
        return self.window.libraries

    def fill_menu(self, menu: QMenu) -> None:
        for text, slot in (("&New library…", self.new_library), ("&Rename library…", self.rename_library),
                           (None, None), ("&Add folder…", self.window.library_panel.choose_folder),
                           ("Remove &folder…", self.remove_folder), (None, None),
                           ("Remove &library…", self.remove_library)):
            if text is None:
                menu.addSeparator()
            else:
                menu.addAction(text).triggered.connect(slot)

    # --------------------------------------------------------------------------------------------- dialogs
    def _ask_text(self, title: str, label: str, text: str, then: Callable[[str], None]) -> QInputDialog:
        dlg = QInputDialog(self.window)
        dlg.setWindowTitle(title)
        dlg.setLabelText(label)
        dlg.setTextValue(text)
        dlg.textValueSelected.connect(lambda value: value.strip() and then(value.strip()))
        return self._show(dlg)

    def _ask(self, title: str, text: str, buttons: list[tuple[str, QMessageBox.ButtonRole, Callable | None]],
             icon=QMessageBox.Icon.Question) -> QMessageBox:
        box = QMessageBox(icon, title, text, parent=self.window)
        for label, role, action in buttons:
            b = box.addButton(label, role)
            if action is not None:
                b.clicked.connect(action)
        return self._show(box)

    def _show(self, dlg):
        self.dialog = dlg
        dlg.finished.connect(lambda _r: setattr(self, "dialog", None))
        dlg.open()
        return dlg

    def _busy(self) -> bool:
        if self.window.task_bar.isVisible():
            self.window.statusBar().showMessage("Wait for the running task to end (or cancel it) first", 8000)
            return True
        return False

    # --------------------------------------------------------------------------------------------- actions
    def new_library(self) -> QInputDialog:
        return self._ask_text("New library", "Name of the new library:", "", self.create)

    def create(self, name: str) -> None:
        from engine.store import Library

        if name in Library.list_names():
            self.window.error("Cannot create the library", f"There is already a library called “{name}”.")
            return
        self.window.open_library(name)

    def rename_library(self) -> QInputDialog | None:
        if self.libraries.library is None or self._busy():
            return None
        return self._ask_text("Rename library", "New name:", self.libraries.name, self.rename)

    def rename(self, name: str) -> None:
        old = self.libraries.name
        try:
            self.libraries.rename(name)
        except Exception as e:
            self.window.error("Cannot rename the library", str(e))
            if self.libraries.library is None:
                self.window.open_library(old)
            return
        self.window.statusBar().showMessage(f"Renamed “{old}” to “{name}”", 8000)

    def remove_folder(self) -> QMessageBox | None:
        lib = self.libraries.library
        if lib is None or self._busy():
            return None
        folder = self.window.library_panel.selected_source_folder()
        if not folder:
            self.window.statusBar().showMessage("Pick a folder of the library in the Folders list first", 8000)
            return None
        return self._ask("Remove folder",
                         f"Remove {folder} from the library “{lib.name}”?\n\nIts photos stay where they are; "
                         "the library forgets them (their thumbnails, vectors and labels).",
                         [("Remove folder", QMessageBox.ButtonRole.DestructiveRole,
                           lambda: self.drop_folder(folder)),
                          ("Cancel", QMessageBox.ButtonRole.RejectRole, None)])

    def drop_folder(self, folder: str) -> int:
        try:
            n = self.libraries.library.remove_folder(folder)
        except Exception as e:
            self.window.error("Cannot remove the folder", str(e))
            return 0
        self.window.refresh_library()
        self.window.statusBar().showMessage(f"Removed {folder}: {n} photos left the library (files untouched)",
                                            8000)
        return n

    def remove_library(self) -> QMessageBox | None:
        lib = self.libraries.library
        if lib is None or self._busy():
            return None
        return self._ask("Remove library",
                         f"Remove the library “{lib.name}”?\n\nIts index, thumbnails, labels and map are deleted; "
                         "the photos themselves are not touched.",
                         [("Remove library", QMessageBox.ButtonRole.DestructiveRole, self.drop_library),
                          ("Cancel", QMessageBox.ButtonRole.RejectRole, None)], QMessageBox.Icon.Warning)

    def drop_library(self) -> None:
        from engine.store import Library

        try:
            name = self.libraries.remove()
        except Exception as e:
            self.window.error("Cannot remove the library", str(e))
            return
        others = Library.list_names()
        self.window.open_library(others[0] if others else "default")
        self.window.statusBar().showMessage(f"Removed the library “{name}” (no photo was deleted)", 8000)

    # ------------------------------------------------------------------------------------------ add folder
    def add_folder(self, path: str) -> None:
        """Adding your own photos to the bundled sample is most likely meant for a library of your own: ask."""
        if self.libraries.name != SAMPLE_NAME:
            self.window.add_folder(path)
            return
        self._ask("Add folder",
                  f"“{SAMPLE_NAME}” is the demo library. Make a new library for {Path(path).name} instead?",
                  [("New library", QMessageBox.ButtonRole.AcceptRole, lambda: self._new_with(path)),
                   ("Add to sample", QMessageBox.ButtonRole.ActionRole, lambda: self.window.add_folder(path)),
                   ("Cancel", QMessageBox.ButtonRole.RejectRole, None)])

    def _new_with(self, path: str) -> None:
        from engine.store import Library

        base = "".join(c if c.isalnum() or c in " _.+-" else "_" for c in Path(path).name).strip(" ._+-") or "photos"
        name, n = base[:60], 2
        while name in Library.list_names():
            name, n = f"{base[:56]} {n}", n + 1
        self.window.open_library(name)
        self.window.add_folder(path)
