"""The library the window shows: opened once, shared by panels, with the indexing run as a worker task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, Signal

from app.gui.workers import Task
from engine.progress import Cancelled

LIVE_COMMIT = 16


def _index_task(report, cancelled, library_root: str, folders: list[str], model_source: str, device: str,
                before=None, int8: bool = False) -> Any:
    """`before` runs first, in this worker thread (the window stops its folder watcher there: it holds the
    library's write lock, and waiting for it to let go must not block the UI). `int8`: the user's preference for
    int8 indexing, taken where the run lands on the CPU."""
    if before is not None:
        before()
    from engine.device import index_precision
    from engine.store import Library
    from engine.store.indexer import index_library

    with Library.open(library_root) as lib:
        for f in folders:
            lib.add_folder(f)

        def progress(p) -> None:
            verb = {"scan": "Scanning", "embed": "Indexing", "index": "Writing the index"}.get(p.phase, p.phase)
            count = f"{p.done}/{p.total}" if p.total else f"{p.done} files"
            report(p.done, p.total or 0, f"{verb} {count}" + (f" · {p.failed} unreadable" if p.failed else ""))

        # Commits every LIVE_COMMIT photos, so the window's grid and counts follow the run (a first start on the
        # 42-photo sample would otherwise show "0 photos" until the end).
        result = index_library(lib, model_source, device=device, precision=index_precision(int8, device),
                               progress=progress, cancel=cancelled, commit_every=LIVE_COMMIT)
        if not result.cancelled and result.model_id is not None:
            from engine.stacks import update_stacks

            report(0, 0, "Grouping copies and bursts…")
            update_stacks(lib, result.model_id, cancel=cancelled)  # new photos join their stacks
    if result.cancelled:
        raise Cancelled()
    return result


class LibraryService(QObject):
    opened = Signal(object)  # the engine.store.Library
    contents_changed = Signal()

    def __init__(self, settings: QSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.library: Any = None

    @property
    def name(self) -> str | None:
        return self.library.name if self.library is not None else None

    def open(self, name_or_path: str | Path) -> Any:
        from engine.store import Library

        self.library = Library.open(name_or_path)
        self.settings.setValue("library/name", str(name_or_path))
        self.opened.emit(self.library)
        return self.library

    def close(self) -> None:
        if self.library is not None:
            self.library.close()
            self.library = None

    def rename(self, new_name: str) -> Any:
        """Rename the open library (its folder under the data folder); the photos do not move."""
        from engine import data_home
        from engine.store import Library, StoreError

        lib = self.library
        if lib is None:
            raise StoreError("no library is open")
        root, name = Library.resolve(new_name)  # checks the name
        if lib.root.parent != data_home.libraries_dir():
            raise StoreError(f"'{lib.name}' lives outside the data folder ({lib.root}); rename its folder instead")
        if root.exists():
            raise StoreError(f"there is already a library called '{name}'")
        self.close()
        lib.root.rename(root)
        return self.open(name)

    def remove(self) -> str:
        """Delete the open library's own files (its database, vectors and thumbnails), never the photos."""
        import shutil

        from engine import data_home
        from engine.store import StoreError

        lib = self.library
        if lib is None:
            raise StoreError("no library is open")
        if lib.root.parent != data_home.libraries_dir():
            raise StoreError(f"'{lib.name}' lives outside the data folder ({lib.root}); it is left as it is")
        self.close()
        shutil.rmtree(lib.root)
        if str(self.settings.value("library/name", "")) == lib.name:
            self.settings.remove("library/name")
        return lib.name

    def index_task(self, folders: list[str], model_source: str, device: str = "auto", before=None,
                   int8: bool = False) -> Task:
        return Task(_index_task, str(self.library.root), folders, model_source, device, before, int8, name="index")
