"""What the window does to photos picked in a grid: tag, copy to a folder, show in the file manager, the
right-click menu. A mixin of MainWindow (it uses its grid, library, status bar and task runner)."""

from __future__ import annotations

from PySide6.QtWidgets import QInputDialog

from app.gui.widgets.library_panel import choose_folder
from app.gui.workers import Task


class PhotoActions:
    def _grid_menu(self, pos) -> None:
        from app.gui.photo_menu import grid_menu_items, photo_menu

        items = grid_menu_items(self.grid, pos)
        if items:
            self.grid_context_menu = photo_menu(self, self.grid, items)
            self.grid_context_menu.popup(self.grid.viewport().mapToGlobal(pos))

    def show_in_folder(self, path: str) -> None:
        from app.gui.desktop import show_in_folder

        show_in_folder(path, lambda message: self.statusBar().showMessage(message, 8000), self)

    def tag(self, image_ids: list[int], name: str) -> int:
        from engine import labels

        n = labels.tag(self.libraries.library, image_ids, name)
        self.statusBar().showMessage(f"Tagged {n} photos “{name}”", 8000)
        return n

    def _tag_selected(self) -> None:
        self.tag_dialog([it.image_id for it in self.grid.selected_items()])

    def tag_dialog(self, image_ids: list[int]) -> None:
        from engine import labels

        if not image_ids or self.libraries.library is None:
            self.statusBar().showMessage("Select photos first", 5000)
            return
        names = labels.label_names(self.libraries.library)
        name, ok = QInputDialog.getItem(self, "Tag photos", f"Label for {len(image_ids)} photos:", names, 0, True)
        if ok and name.strip():
            self.tag(image_ids, name)

    def _copy_selected(self) -> None:
        self.copy_dialog([it.path for it in self.grid.selected_items()])

    def copy_dialog(self, paths: list[str]) -> None:
        if not paths:
            self.statusBar().showMessage("Select photos first", 5000)
            return
        dest = choose_folder(self, f"Copy {len(paths)} photos to")
        if dest:
            self.copy_photos(paths, dest)

    def copy_photos(self, paths: list[str], dest: str) -> Task:
        """Copy in a worker (hundreds of 12 MP files take a while), with progress and Cancel in the task bar."""
        task = Task(_copy_task, paths, dest, name="copy")

        def done(copied) -> None:
            self.statusBar().showMessage(f"Copied {len(copied)} of {len(paths)} photos to {dest}", 8000)

        return self.run_task(task, f"Copying {len(paths)} photos", on_done=done)


def _copy_task(report, cancelled, paths: list[str], dest: str):
    from engine.photo_files import copy_files

    return copy_files(paths, dest, progress=lambda p: report(p.done, p.total, f"Copying {p.done}/{p.total}"),
                      cancel=cancelled)
