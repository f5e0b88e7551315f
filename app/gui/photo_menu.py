"""The context menu on photos in a grid: what digiKam and Apple Photos offer on a right-click."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QApplication, QMenu, QWidget

from app.gui.widgets.thumbnail_grid import GridItem, ThumbnailGrid


def photo_menu(window, grid: ThumbnailGrid, items: list[GridItem], parent: QWidget | None = None) -> QMenu:
    """Actions on the photos under the mouse (the selection, or the clicked photo)."""
    menu = QMenu(parent or grid)
    paths = [it.path for it in items]
    n = len(items)
    first = items[0]

    def add(name: str, text: str, slot) -> None:
        action = menu.addAction(text)
        action.setObjectName(name)
        action.triggered.connect(slot)

    context = [it.path for it in grid.grid_model().items]
    add("open", "Open", lambda: window.open_photo(first.path, context))
    add("show_in_folder", "Show in folder", lambda: window.show_in_folder(first.path))
    add("copy_path", "Copy path" if n == 1 else f"Copy {n} paths",
        lambda: QApplication.clipboard().setText("\n".join(paths)))
    menu.addSeparator()
    add("search_similar", "Search similar" if n == 1 else f"Search similar to these {n}",
        lambda: window.search_files([Path(p) for p in paths]))
    add("tag", f"Tag {n} photo{'s' if n > 1 else ''}…", lambda: window.tag_dialog([it.image_id for it in items]))
    add("copy_to", "Copy to folder…", lambda: window.copy_dialog(paths))
    return menu


def grid_menu_items(grid: ThumbnailGrid, pos) -> list[GridItem]:
    """The clicked photo; the whole selection when the click lands inside it (the file-manager habit)."""
    index = grid.indexAt(pos)
    if not index.isValid():
        return []
    clicked = grid.grid_model().items[index.row()]
    picked = grid.selected_items()
    if any(it.image_id == clicked.image_id for it in picked):
        return picked
    grid.setCurrentIndex(index)
    return [clicked]
