"""Long work off the UI thread: a cancellable task with progress, run in Qt's thread pool.

A task is a plain function `fn(report, cancelled, *args)` written against engine/ or trainer/, where
`report(done, total, text)` may be called from the worker thread and `cancelled()` says whether the user pressed
Cancel. Signals cross back to the UI thread through Qt's queued connections, so widgets are only touched there.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from engine.progress import Cancelled

log = logging.getLogger(__name__)


def _plain(e: Exception) -> bool:
    """An error the message explains by itself (a bad file, a missing model, a full disk), not a crash."""
    from engine.models.download import DownloadError
    from engine.store import StoreError

    plain = OSError | ValueError | StoreError | DownloadError
    return isinstance(e, plain) and not isinstance(e, KeyError | IndexError | UnicodeError)


class TaskSignals(QObject):
    progress = Signal(object, object, str)  # done, total (0 = unknown), text; Python ints (bytes pass 2**31)
    finished = Signal(object)  # the function's return value
    failed = Signal(str, str)  # message for the user; the traceback when it was a crash, "" for a plain error
    cancelled = Signal()


class Task(QRunnable):
    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "task", **kwargs: Any) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs, self.name = fn, args, kwargs, name
        self.signals = TaskSignals()
        self._cancel = threading.Event()
        self.setAutoDelete(False)  # we keep a reference; Qt must not delete it under us
        # Set before the matching signal is emitted: a caller that connects late can still see how it ended.
        self.outcome: str | None = None  # "finished" | "failed" | "cancelled"
        self.result: Any = None
        self.error: str | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> None:
        def report(done: int, total: int = 0, text: str = "") -> None:
            self.signals.progress.emit(int(done), int(total or 0), text)

        try:
            result = self.fn(report, self.is_cancelled, *self.args, **self.kwargs)
        except Cancelled:
            self.outcome = "cancelled"
            self.signals.cancelled.emit()
            return
        except Exception as e:  # shown to the user; the traceback goes to the log file
            tb = traceback.format_exc()
            log.error("task %s failed: %s\n%s", self.name, e, tb)
            self.error, self.outcome = str(e) or type(e).__name__, "failed"
            self.signals.failed.emit(self.error, "" if _plain(e) else tb)
            return
        if self.is_cancelled():
            self.outcome = "cancelled"
            self.signals.cancelled.emit()
        else:
            self.result, self.outcome = result, "finished"
            self.signals.finished.emit(result)


class TaskRunner(QObject):
    """Starts tasks and keeps them alive until they end (a QRunnable is otherwise garbage-collected)."""

    def __init__(self, parent: QObject | None = None, max_threads: int | None = None) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        if max_threads:
            self.pool.setMaxThreadCount(max_threads)
        self._running: set[Task] = set()

    def start(self, task: Task) -> Task:
        self._running.add(task)
        for sig in (task.signals.finished, task.signals.failed, task.signals.cancelled):
            sig.connect(lambda *_, t=task: self._running.discard(t))
        self.pool.start(task)
        return task

    def cancel_all(self) -> None:
        for t in list(self._running):
            t.cancel()

    def wait(self, msecs: int = -1) -> bool:
        return self.pool.waitForDone(msecs)
