"""The one vocabulary every long task speaks: a progress callback, a cancel callback and `Cancelled`.

Extraction, indexing, deduplication, downloads, maps, training and the GUI's workers all take
``progress(done, total)`` and ``cancel()`` and raise `Cancelled`, so a caller (the CLI's progress bar, a GUI
task) wires any of them the same way and catches one exception.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CancelFn", "Cancelled", "ProgressFn", "raise_if_cancelled"]

ProgressFn = Callable[[int, "int | None"], None]
"""Called as ``progress(done, total)``; ``total`` is None while unknown (a download without a length)."""

CancelFn = Callable[[], bool]
"""Polled between units of work; returning True asks the task to stop at the next safe point."""


class Cancelled(Exception):
    """A task stopped because its cancel callback said so; what it had finished is kept."""


def raise_if_cancelled(cancel: CancelFn | None) -> None:
    """Raise `Cancelled` when ``cancel`` is given and returns True."""
    if cancel is not None and cancel():
        raise Cancelled()
