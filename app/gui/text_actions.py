"""The window's side of search by words: offering to index the library with dino.txt when words are searched
without its vectors, running that indexing as a background task (download, then ViT-L over every photo, with
progress, ETA and Cancel), and resuming it at the next start when the app was closed or killed before it ended.

A Cancel is a choice and is remembered as one (no resume); quitting is not.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QMessageBox

from app.gui.workers import Task


def _duration(hours: float) -> str:
    if hours < 1 / 60:
        return "under a minute"
    if hours < 1:
        return f"about {round(hours * 60)} minutes"
    return f"about {hours:.1f} hours"


class TextActions(QObject):
    def __init__(self, window) -> None:
        super().__init__(window)
        self.window = window
        self.task: Task | None = None
        self.offer: QMessageBox | None = None
        self.closing = False  # set by the window's closeEvent: the task's cancel then keeps it pending

    @property
    def text(self):
        return self.window.text

    def offer_index(self, cost) -> QMessageBox | None:
        """Words were searched in a library without dino.txt vectors: say what indexing costs and offer it."""
        from engine.models import zoo

        lib = self.window.libraries.library
        if not cost.photos:
            self.window.statusBar().showMessage("The library has no photos yet: add a folder first", 8000)
            return None
        download = (f"downloads {cost.download_bytes / 1e9:.1f} GB once (dino.txt: its ViT-L/14 with registers, "
                    "vision head and text encoder), then " if cost.download_bytes else "")
        source = self.text.source
        what = zoo.DINOTXT if source == zoo.DINOTXT else source
        box = QMessageBox(QMessageBox.Icon.Question, "Search by words",
                          f"Searching “{lib.name}” by words needs its photos indexed with dino.txt ({what}).\n\n"
                          f"This {download}runs it over {cost.photos} photos: {_duration(cost.hours)} on a CPU like "
                          "the one it was measured on (much less on a GPU). It runs in the background: you can "
                          "keep working, cancel it, and a restart resumes it.",
                          parent=self.window)
        start = box.addButton("Index for text search", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Not now", QMessageBox.ButtonRole.RejectRole)
        start.clicked.connect(lambda: self.index_library())
        box.finished.connect(lambda _r: setattr(self, "offer", None))
        self.offer = box
        box.open()
        return box

    def index_library(self, resumed: bool = False) -> Task | None:
        """Index every photo of the open library with dino.txt, in the background (after any running indexing)."""
        w = self.window
        lib = w.libraries.library
        if lib is None:
            return None
        if self.task is not None and self.task.outcome is None:
            return self.task
        running = w._indexing
        if running is not None and running.outcome is None:  # one writer at a time: start when that one ends
            root = str(lib.root)

            def after(_result) -> None:
                now = w.libraries.library
                if not self.closing and now is not None and str(now.root) == root:
                    QTimer.singleShot(0, lambda: self.index_library(resumed))

            running.signals.finished.connect(after)  # not after a Cancel or a failure: the user decides again
            self.text.mark_pending(root)
            w.statusBar().showMessage("Indexing for text search starts when the running indexing ends", 8000)
            return None
        task = self.text.index_task(str(lib.root), w.models.device_name, before=w.watcher.stop)
        self.task = w._indexing = task
        self.text.mark_pending(str(lib.root))
        task.signals.finished.connect(lambda _r: self._ended(search_again=True))
        # A failure (a dropped connection, a full disk) keeps it pending: the next start tries again, as promised
        task.signals.failed.connect(lambda *_: self._ended(keep_pending=True))
        task.signals.cancelled.connect(lambda: self._ended(keep_pending=self.closing))
        title = "Resuming indexing for text search" if resumed else "Indexing for text search (dino.txt)"
        return w.run_task(task, title, on_progress=self._progress)

    def _progress(self, _done: int, _total: int, text: str) -> None:
        if not text.startswith("Downloading"):  # the grid follows the photos, not the bytes of a download
            self.window._maybe_refresh_while_indexing()

    def _ended(self, search_again: bool = False, keep_pending: bool = False) -> None:
        if not keep_pending:
            self.text.clear_pending()
        if self.closing:
            return
        self.window._indexing_ended()
        panel = self.window.search_panel
        if search_again and any(q.text for q in panel.queries):
            panel.run()  # the words that asked for the index

    def resume_if_pending(self) -> Task | None:
        """At start: an indexing for text search that did not end (the app quit or was killed) goes on."""
        lib = self.window.libraries.library
        if lib is None or not self.text.pending_for(str(lib.root)):
            return None
        return self.index_library(resumed=True)
