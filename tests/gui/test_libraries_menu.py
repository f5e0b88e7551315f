"""The Library menu: new, rename, remove a folder (photos stay), remove a library (asks, never deletes photos), and
"Add folder…" on the demo library asking whether a new library was meant. Dialogs are answered by clicking."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox

from engine.store import Library


def _click(box: QMessageBox, label: str) -> None:
    (button,) = [b for b in box.buttons() if b.text() == label]
    button.click()


def test_menu_lists_the_library_actions(family_window) -> None:
    texts = [a.text().replace("&", "") for a in family_window.library_menu.actions() if a.text()]
    assert texts == ["New library…", "Rename library…", "Add folder…", "Remove folder…", "Remove library…",
                     "Watch folders for changes"]


def test_new_and_rename_library(qtbot, family_window) -> None:
    win = family_window
    dlg = win.library_actions.new_library()
    dlg.setTextValue("holidays")
    dlg.accept()
    assert win.libraries.name == "holidays" and "holidays" in Library.list_names()
    assert win.grid.grid_model().rowCount() == 0 and win.windowTitle().startswith("holidays")
    dlg = win.library_actions.rename_library()
    assert dlg.textValue() == "holidays"
    dlg.setTextValue("summer 2024")
    dlg.accept()
    assert win.libraries.name == "summer 2024"
    assert "holidays" not in Library.list_names() and "summer 2024" in Library.list_names()
    assert win.library_panel.libraries.currentText() == "summer 2024"
    # A name already taken is refused with a message; the library stays as it was.
    dlg = win.library_actions.rename_library()
    dlg.setTextValue("family")
    dlg.accept()
    assert win.libraries.name == "summer 2024" and "already a library" in win.last_error.text()


def test_remove_folder_keeps_the_photos(qtbot, family_window, family) -> None:
    win, root = family_window, family[0]
    on_disk = sorted(root.rglob("*.jpg"))
    assert win.library_actions.remove_folder() is None  # "All photos" picked: which folder? says so
    assert "Pick a folder" in win.statusBar().currentMessage()
    tree = win.library_panel.folders
    tree.setCurrentItem(tree.topLevelItem(0).child(0).child(0))  # a subfolder: its library folder is meant
    box = win.library_actions.remove_folder()
    assert str(root) in box.text() and "stay where they are" in box.text()
    _click(box, "Cancel")
    assert [f.path for f in win.libraries.library.folders()] == [str(root)]
    box = win.library_actions.remove_folder()
    _click(box, "Remove folder")
    assert win.grid.grid_model().rowCount() == 0 and win.libraries.library.folders() == []
    assert sorted(root.rglob("*.jpg")) == on_disk


def test_remove_library_asks_and_never_deletes_photos(qtbot, family_window, family) -> None:
    win, root = family_window, family[0]
    on_disk = sorted(root.rglob("*.jpg"))
    lib_root = win.libraries.library.root
    box = win.library_actions.remove_library()
    assert "photos themselves are not touched" in box.text()
    _click(box, "Cancel")
    assert lib_root.exists() and win.libraries.name == "family"
    box = win.library_actions.remove_library()
    _click(box, "Remove library")
    assert not lib_root.exists() and "family" not in Library.list_names()
    assert win.libraries.name == "default"  # the window stays usable on an empty library
    assert sorted(root.rglob("*.jpg")) == on_disk


def test_add_folder_on_the_sample_asks_for_a_new_library(qtbot, family_window, family, tmp_path) -> None:
    win, root = family_window, family[0]
    win.open_library("sample")
    win.library_actions.add_folder(str(root / "pets"))
    box = win.library_actions.dialog
    assert isinstance(box, QMessageBox) and "demo library" in box.text()
    _click(box, "New library")
    assert win.libraries.name == "pets"
    qtbot.waitUntil(lambda: not win.task_bar.isVisible(), timeout=60000)
    assert win.grid.grid_model().rowCount() == 2
    assert Library.open("sample").folders() == []  # the demo library got nothing
    # Any other library takes the folder without a question.
    win.library_actions.add_folder(str(root / "things"))
    assert win.library_actions.dialog is None
    qtbot.waitUntil(lambda: not win.task_bar.isVisible() and win.grid.grid_model().rowCount() == 5, timeout=60000)
