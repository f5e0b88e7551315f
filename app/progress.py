"""A plain stderr progress bar for the command line (redraws in a terminal, prints sparse lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def fmt_secs(s: float | None) -> str:
    """Seconds as m:ss or h:mm:ss, "--:--" when unknown (ETAs in progress lines)."""
    if s is None:
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


MIN_RATE_SECONDS = 1.0
"""No rate is shown before this much time has passed: the first update often comes milliseconds after the start
(work resumed, a cached step), and done / elapsed would print rates like 5089059.3 img/s."""


class ProgressBar:
    def __init__(self, label: str, unit: str = "img", stream: TextIO | None = None) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()
        self._last = 0.0
        self._printed: tuple | None = None
        self.last: tuple[int, int | None, str] | None = None

    def __call__(self, p) -> None:
        """The bar as an `engine.progress.ProgressFn`: follows any engine task (download, index, dedup...)."""
        self.last = (p.done, p.total, f"({p.failed} unreadable)" if p.failed else "")
        self.update(*self.last)

    def finish(self) -> None:
        """Draw the last state reported through `__call__` as final (nothing if none came)."""
        if self.last is not None:
            self.close(*self.last)

    def update(self, done: int, total: int | None, extra: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < (0.1 if self.tty else 5.0):
            return
        if not self.tty and self._printed == (done, total, extra):
            return  # a log file gets each state once
        self._last = now
        self._printed = (done, total, extra)
        elapsed = now - self.start
        rate = done / elapsed if elapsed >= MIN_RATE_SECONDS else None
        if self.unit == "B":
            amount = f"{_fmt_bytes(done)}" + (f"/{_fmt_bytes(total)}" if total else "")
            speed = f"{_fmt_bytes(rate)}/s" if rate is not None else "--/s"
        else:
            amount = f"{done}" + (f"/{total}" if total else "")
            speed = f"{rate:.1f} {self.unit}/s" if rate is not None else f"-- {self.unit}/s"
        eta = (total - done) / rate if total and rate else None
        bar = ""
        if total:
            filled = int(24 * min(done / total, 1.0))
            bar = "[" + "#" * filled + "." * (24 - filled) + f"] {100 * done / total:5.1f}% "
        line = f"{self.label} {bar}{amount} {speed} ETA {fmt_secs(eta)}{(' ' + extra) if extra else ''}"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, done: int, total: int | None, extra: str = "") -> None:
        if not self.tty and self._printed and self._printed[:2] == (done, total) and not extra:
            return
        self.update(done, total, extra, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
