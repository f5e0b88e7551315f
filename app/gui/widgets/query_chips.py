"""The query as a row of chips: one per photo, region or words, each with its own × (and Delete when focused)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QScrollArea, QToolButton, QWidget

THUMB = 96


class QueryChip(QFrame):
    """A photo chip shows its thumbnail over its name; a words chip shows the words in quotes."""

    remove_clicked = Signal()

    def __init__(self, label: str, pixmap: QPixmap | None, words: bool = False, tooltip: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("query_chip")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.label = label
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 4, 2, 4)
        layout.setSpacing(4)
        self.thumb = QLabel()
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        if pixmap is not None and not pixmap.isNull():
            self.thumb.setPixmap(pixmap.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                                               Qt.TransformationMode.SmoothTransformation))
            layout.addWidget(self.thumb)
        self.caption = QLabel(f"“{label}”" if words else label)
        widest = 220 if words else 140
        self.caption.setMaximumWidth(widest)
        self.caption.setWordWrap(True)
        if words:
            font = self.caption.font()
            font.setPointSizeF(font.pointSizeF() * 1.15)
            self.caption.setFont(font)
        elif pixmap is None or pixmap.isNull():
            self.caption.setText(f"{label}\n(unreadable)")
        # Wrapped labels get squeezed to a few characters a line by the layout: as wide as the text, up to `widest`
        longest = max(self.caption.fontMetrics().horizontalAdvance(line) for line in self.caption.text().split("\n"))
        self.caption.setMinimumWidth(min(longest + 4, widest))
        layout.addWidget(self.caption)
        self.remove_button = QToolButton()
        self.remove_button.setText("×")
        self.remove_button.setAutoRaise(True)
        self.remove_button.setToolTip("Remove from the query")
        self.remove_button.clicked.connect(self.remove_clicked)
        layout.addWidget(self.remove_button, 0, Qt.AlignmentFlag.AlignTop)
        self.setToolTip(tooltip or label)

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace):
            self.remove_clicked.emit()
            return
        super().keyPressEvent(event)


class QueryChips(QScrollArea):
    """Scrolls sideways when the query outgrows the window; shows `empty_text` when there is no query."""

    remove_requested = Signal(int)  # index of the chip

    def __init__(self, empty_text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFixedHeight(THUMB + 36)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        inner = QWidget()
        self.row = QHBoxLayout(inner)
        self.row.setContentsMargins(4, 4, 4, 4)
        self.hint = QLabel(empty_text)
        self.hint.setWordWrap(True)
        self.hint.setEnabled(False)  # drawn greyed, as a placeholder
        self.setWidget(inner)
        self.chips: list[QueryChip] = []
        self.set_chips([])

    def set_chips(self, chips: list[QueryChip]) -> None:
        while self.row.count():
            w = self.row.takeAt(0).widget()
            if w is not None and w is not self.hint:
                w.hide()  # gone now, not only when the event loop gets to deleteLater
                w.deleteLater()
        self.chips = chips
        for i, chip in enumerate(chips):
            chip.remove_clicked.connect(lambda i=i: self.remove_requested.emit(i))
            self.row.addWidget(chip)
        self.hint.setVisible(not chips)
        self.row.addWidget(self.hint, 1)
        if chips:
            self.row.addStretch(1)

    def count(self) -> int:
        return len(self.chips)

    def chip(self, i: int) -> QueryChip:
        return self.chips[i]
