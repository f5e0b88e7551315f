"""The one vocabulary every long task speaks: a `Progress` record, a progress callback, a cancel callback and
`Cancelled`.

Extraction, indexing, deduplication, downloads, copies, patch tokens, maps and curation all take
``progress(Progress)`` and ``cancel()`` and raise `Cancelled`, so a caller (the CLI's progress bar, a GUI task)
wires any of them the same way and catches one exception. A task fills what it knows: a download its bytes, the
indexer its phase, failures and current file, a map fit only its stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CancelFn", "Cancelled", "Progress", "ProgressFn", "Stopwatch", "raise_if_cancelled"]


@dataclass(frozen=True)
class Progress:
    """Where a long task stands. ``total`` is None while unknown (scanning, a download without a length)."""

    done: int
    total: int | None = None
    failed: int = 0  # inputs that could not be used so far (unreadable photos)
    elapsed: float = 0.0  # seconds since the task started
    phase: str = ""  # what it is doing now, in a word or a short phrase ("scan", "embed", "fitting UMAP")
    current: str | None = None  # the item in hand (a file path), for display

    @property
    def rate(self) -> float:
        """Items per second so far; 0 until something is done (never an absurd first-tick figure)."""
        return self.done / self.elapsed if self.elapsed > 0.05 and self.done else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, None while unknown."""
        if self.total is None or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)


ProgressFn = Callable[[Progress], None]
"""Called with a `Progress` now and then (the task decides how often; cheap to call)."""


class Stopwatch:
    """Makes `Progress` records with the elapsed time filled in, from the task's start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int | None = None, **kw) -> Progress:
        return Progress(done, total, elapsed=time.perf_counter() - self.start, **kw)

CancelFn = Callable[[], bool]
"""Polled between units of work; returning True asks the task to stop at the next safe point."""


class Cancelled(Exception):
    """A task stopped because its cancel callback said so; what it had finished is kept."""


def raise_if_cancelled(cancel: CancelFn | None) -> None:
    """Raise `Cancelled` when ``cancel`` is given and returns True."""
    if cancel is not None and cancel():
        raise Cancelled()
