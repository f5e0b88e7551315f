"""The status-bar strip that shows a running task: what it does, a progress bar, the ETA and Cancel."""

from __future__ import annotations

import time

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from app.gui.workers import Task


def _eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    s = int(seconds)
    return f"ETA {s // 60}:{s % 60:02d}" if s < 3600 else f"ETA {s // 3600}h{s % 3600 // 60:02d}"


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
        self.task: Task | None = None
        self._start = 0.0
        self.hide()

    def follow(self, task: Task, title: str) -> None:
        self.task = task
        self._start = time.monotonic()
        self.label.setText(title)
        self.bar.setRange(0, 0)  # busy until the first report
        self.eta.setText("")
        self.cancel_button.setEnabled(True)
        task.signals.progress.connect(lambda d, t, text, task=task: task is self.task and self._progress(d, t, text))
        for sig in (task.signals.finished, task.signals.failed, task.signals.cancelled):
            sig.connect(lambda *_, task=task: self._done(task))
        self.show()

    def _progress(self, done: int, total: int, text: str) -> None:
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
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
        if task is self.task:  # an older task ending must not hide the one now shown
            self.task = None
            self.hide()
