"""A tab whose content is built the first time it is shown, so heavy widgets (pyqtgraph) cost nothing at start."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QVBoxLayout, QWidget


class LazyTab(QWidget):
    created = Signal(object)

    def __init__(self, factory: Callable[[], QWidget], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.factory = factory
        self.content: QWidget | None = None
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)

    def ensure(self) -> QWidget:
        if self.content is None:
            self.content = self.factory()
            self._layout.addWidget(self.content)
            self.created.emit(self.content)
        return self.content

    def showEvent(self, event) -> None:
        self.ensure()
        super().showEvent(event)
