"""Thumbnail pixmaps for grids: decoded from the store's JPEG blobs in a worker, cached, delivered by signal.

A grid of 100k images asks only for the rows it paints; each miss queues the id, and one worker decodes a
batch of queued ids at a time, so scrolling never waits on SQLite or JPEG decoding.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage, QPixmap


class _Signals(QObject):
    ready = Signal(object)  # dict[int, QImage]


class _LoadBatch(QRunnable):
    def __init__(self, fetch: Callable[[list[int]], dict[int, bytes]], ids: list[int], signals: _Signals) -> None:
        super().__init__()
        self.fetch, self.ids, self.signals = fetch, ids, signals

    def run(self) -> None:
        images: dict[int, QImage] = {}
        try:
            blobs = self.fetch(self.ids)
        except Exception:  # a library closed or moved under us: show blanks, never crash the grid
            blobs = {}
        for key in self.ids:
            img = QImage()
            data = blobs.get(key)
            if data:
                img.loadFromData(data)
            images[key] = img  # an empty QImage marks "no thumbnail" so we do not ask again
        self.signals.ready.emit(images)


class ThumbnailCache(QObject):
    """LRU of pixmaps keyed by image id; `get` returns None on a miss and schedules the load."""

    updated = Signal(list)  # ids whose pixmaps arrived

    def __init__(self, fetch: Callable[[list[int]], dict[int, bytes]], capacity: int = 4000,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.fetch = fetch
        self.capacity = capacity
        self._pixmaps: OrderedDict[int, QPixmap] = OrderedDict()
        self._queued: list[int] = []
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._signals = _Signals()
        self._signals.ready.connect(self._arrived)

    def get(self, image_id: int) -> QPixmap | None:
        pix = self._pixmaps.get(image_id)
        if pix is not None:
            self._pixmaps.move_to_end(image_id)
            return pix
        if image_id not in self._inflight:
            self._inflight.add(image_id)
            self._queued.append(image_id)
            if len(self._queued) == 1:
                from PySide6.QtCore import QTimer

                QTimer.singleShot(0, self._flush)
        return None

    def _flush(self) -> None:
        ids, self._queued = self._queued[-256:], []
        for stale in set(self._inflight) - set(ids):
            if stale not in ids:
                self._inflight.discard(stale)  # scrolled past before we got to it
        if ids:
            self._pool.start(_LoadBatch(self.fetch, ids, self._signals))

    def _arrived(self, images: dict) -> None:
        for key, img in images.items():
            self._inflight.discard(key)
            self._pixmaps[key] = QPixmap.fromImage(img)
        while len(self._pixmaps) > self.capacity:
            self._pixmaps.popitem(last=False)
        self.updated.emit(list(images))

    def clear(self) -> None:
        self._pixmaps.clear()
        self._inflight.clear()
        self._queued.clear()

    def wait(self) -> None:
        self._pool.waitForDone()
