"""The status-bar strip that shows a running task: what it does, a progress bar, the ETA and Cancel."""

from __future__ import annotations

import time

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QWidget

from app.gui.workers import Task


def _eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    s = int(seconds)
    return f"ETA {s // 60}:{s % 60:02d}" if s < 3600 else f"ETA {s // 3600}h{s % 3600 // 60:02d}"


def set_progress(bar: QProgressBar, done: int, total: int) -> None:
    """A progress bar counts in 32-bit ints: byte counts of multi-GB downloads are scaled down to fit."""
    step = -(-total // 2**30) if total > 2**30 else 1
    bar.setRange(0, total // step)
    bar.setValue(min(done, total) // step)


class TaskBar(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel()
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(220)
        self.bar.setTextVisible(True)
        self.eta = QLabel()
        self.cancel_button = QPushButton("Cancel")
        for w in (self.label, self.bar, self.eta, self.cancel_button):
            layout.addWidget(w)
        self.cancel_button.clicked.connect(self._cancel)
        # As wide as its contents: on a wide screen the status bar must not stretch it over the messages.
        self.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)
        self.cancel_button.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Fixed)
        self.task: Task | None = None  # the task shown: the newest still running
        self._start = 0.0
        # Every running task, oldest first, with its title, start time and last progress, so that when the shown
        # one ends the bar goes back to the next (an indexing run keeps its Cancel through a quick search).
        self._running: list[Task] = []
        self._state: dict[int, tuple[str, float, tuple[int, int, str] | None]] = {}
        self.hide()

    def follow(self, task: Task, title: str) -> None:
        if task.outcome is not None:  # ended before anyone followed it: nothing to show
            return
        self._running.append(task)
        self._state[id(task)] = (title, time.monotonic(), None)
        task.signals.progress.connect(lambda d, t, text, task=task: self._record(task, d, t, text))
        for sig in (task.signals.finished, task.signals.failed, task.signals.cancelled):
            sig.connect(lambda *_, task=task: self._done(task))
        self._show_newest()

    def _show_newest(self) -> None:
        if not self._running:
            self.task = None
            self.hide()
            return
        task = self._running[-1]
        title, self._start, last = self._state[id(task)]
        self.task = task
        self.label.setText(title)
        self.bar.setRange(0, 0)  # busy until a report
        self.eta.setText("")
        self.cancel_button.setEnabled(not task.is_cancelled())
        if task.is_cancelled():
            self.label.setText(title + " — cancelling…")
        elif last is not None:
            self._progress(*last)
        self.show()

    def _record(self, task: Task, done: int, total: int, text: str) -> None:
        if id(task) in self._state:
            title, start, _ = self._state[id(task)]
            self._state[id(task)] = (title, start, (done, total, text))
        if task is self.task:
            self._progress(done, total, text)
    def _progress(self, done: int, total: int, text: str) -> None:
        if total > 0:
            set_progress(self.bar, done, total)
            elapsed = time.monotonic() - self._start
            rate = done / elapsed if elapsed > 0 and done else 0
            self.eta.setText(_eta((total - done) / rate) if rate else "")
        if text:
            self.label.setText(text)

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.cancel_button.setEnabled(False)
            self.label.setText(self.label.text() + " — cancelling…")

    def _done(self, task: Task) -> None:
        if task not in self._running:
            return
        self._running.remove(task)
        self._state.pop(id(task), None)
        if task is self.task:  # an older task ending leaves the one shown alone
            self._show_newest()
