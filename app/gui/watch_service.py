"""Watching the open library's folders while the window runs: engine.watch in a background thread.

The switch is the QSettings key "library/watch" (default on). The watcher holds the library's write lock while it
runs, so the window pauses it around its own indexing (`paused()`); browsing, search and the map only read and
never wait on it. Each index run that changed something is announced with `changed`, on the UI thread (Qt queues
signals emitted from another thread), so the grid, map and search can reload.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from PySide6.QtCore import QObject, QSettings, Signal

SETTING = "library/watch"
RETRY_S = 10.0  # a library busy with another writer is tried again this often


class _Ready(threading.Event):
    """An Event that also calls back when set (watch_library sets it once its watches are in place)."""

    def __init__(self, callback) -> None:
        super().__init__()
        self._callback = callback

    def set(self) -> None:
        super().set()
        self._callback()


class WatchService(QObject):
    changed = Signal(object)  # engine.watch.WatchBatch that added, changed, moved or deleted photos
    notice = Signal(str)  # a folder gone or back, a busy library: for the status bar
    failed = Signal(str)  # the watcher stopped (bad model, damaged library): for a message
    running_changed = Signal(bool)
    watching = Signal()  # the folders are watched (the write lock is held) from now on

    def __init__(self, settings: QSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._target: tuple[str, str, str, bool] | None = None

    # ------------------------------------------------------------------------------------------------ switch
    @property
    def enabled(self) -> bool:
        """The setting (default on); DINOSCOPE_WATCH=0 in the environment turns it off for this process."""
        if os.environ.get("DINOSCOPE_WATCH", "").strip() == "0":
            return False
        return bool(self.settings.value(SETTING, True, type=bool))

    def set_enabled(self, on: bool) -> None:
        self.settings.setValue(SETTING, bool(on))
        if not on:
            self.stop()
        elif self._target is not None:
            self.start(*self._target)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------------------------------ start / stop
    def start(self, library_root: str, model_source: str, device: str = "auto", int8: bool = False) -> bool:
        """Follow this library's folders with this model (what the window last indexed with; `int8` as in
        LibraryService.index_task). False when the setting is off. A watcher already running for another library,
        model or precision is stopped first."""
        target = (str(library_root), str(model_source), device, bool(int8))
        if self.running and target == self._target and not self._stop.is_set():
            return True  # already following these folders with this model: a restart would only cost a join
        self._target = target
        if not self.enabled:
            return False
        self.stop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(*self._target, self._stop), daemon=True,
                                        name="library-watch")
        self._thread.start()
        self.running_changed.emit(True)
        return True

    def stop(self, timeout: float = 30.0) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        self._thread = None
        self.running_changed.emit(False)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop watching for the duration (the window's own indexing needs the write lock), then resume."""
        was_running = self.running
        self.stop()
        try:
            yield
        finally:
            if was_running and self._target is not None:
                self.start(*self._target)

    # ------------------------------------------------------------------------------------------------ thread
    def _run(self, library_root: str, model_source: str, device: str, int8: bool, stop: threading.Event) -> None:
        from engine.device import index_precision
        from engine.models import load_backbone
        from engine.store import Library, LibraryBusyError, StoreError
        from engine.watch import watch_library

        try:
            model = load_backbone(model_source, device="cpu")
        except Exception as exc:  # a model file that went away, an offline zoo name
            self.failed.emit(f"Watching stopped: the model {model_source} cannot be loaded ({exc})")
            return
        busy_said = False
        while not stop.is_set():
            try:
                with Library.open(library_root, create=False) as lib:
                    watch_library(lib, model, cancel=stop.is_set, device=device, model_name=model_source,
                                  precision=index_precision(int8, device),
                                  on_batch=self._batch, on_notice=lambda n: self.notice.emit(n.message),
                                  ready=_Ready(self.watching.emit))
                return
            except LibraryBusyError as exc:
                if not busy_said:
                    self.notice.emit(f"Watching paused: {exc}")
                    busy_said = True
                stop.wait(RETRY_S)
            except StoreError as exc:
                self.failed.emit(f"Watching stopped: {exc}")
                return

    def _batch(self, batch) -> None:
        if batch.error:
            self.notice.emit(f"Watching: {batch.error} (will retry)")
            return
        r = batch.report
        if r is not None and (r.new or r.changed or r.moved or r.deleted or r.failed or r.embedded):
            self.changed.emit(batch)
