"""The library the window shows: opened once, shared by panels, with the indexing run as a worker task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, Signal

from app.gui.workers import Task
from engine.progress import Cancelled


def _index_task(report, cancelled, library_root: str, folders: list[str], model_source: str, device: str) -> Any:
    from engine.store import Library
    from engine.store.indexer import index_library

    with Library.open(library_root) as lib:
        for f in folders:
            lib.add_folder(f)

        def progress(p) -> None:
            verb = {"scan": "Scanning", "embed": "Indexing", "index": "Writing the index"}.get(p.phase, p.phase)
            count = f"{p.done}/{p.total}" if p.total else f"{p.done} files"
            report(p.done, p.total or 0, f"{verb} {count}" + (f" · {p.failed} unreadable" if p.failed else ""))

        result = index_library(lib, model_source, device=device, progress=progress, cancel=cancelled)
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

    def index_task(self, folders: list[str], model_source: str, device: str = "auto") -> Task:
        return Task(_index_task, str(self.library.root), folders, model_source, device, name="index")
