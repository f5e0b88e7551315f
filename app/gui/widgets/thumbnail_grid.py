"""A virtualised grid of photos: a list model over image ids, thumbnails from the cache, optional scores."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PySide6.QtCore import (
    QAbstractListModel,
    QMimeData,
    QModelIndex,
    QPersistentModelIndex,
    QRect,
    QSize,
    Qt,
    QUrl,
    Signal,
)
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate, QWidget

from app.gui.thumbnails import ThumbnailCache

IdRole = Qt.ItemDataRole.UserRole + 1
PathRole = Qt.ItemDataRole.UserRole + 2
ScoreRole = Qt.ItemDataRole.UserRole + 3


@dataclass
class GridItem:
    image_id: int
    path: str
    score: float | None = None
    caption: str = ""


class RowItems(Sequence):
    """A grid's items kept as the library's (id, path) rows, made into GridItems only when looked at: as 100k
    objects they cost the UI thread 0.15-0.25 s each time a library opened or the sort changed."""

    def __init__(self, rows: list[tuple[int, str]], captions: dict[int, str] | None = None) -> None:
        self.rows = rows
        self.captions = captions or {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self.rows)))]
        i, p = self.rows[k]
        return GridItem(i, p, caption=self.captions.get(i, ""))

    def __iter__(self) -> Iterator[GridItem]:
        captions = self.captions
        return (GridItem(i, p, caption=captions.get(i, "")) for i, p in self.rows)


class ThumbnailModel(QAbstractListModel):
    def __init__(self, cache: ThumbnailCache, parent=None) -> None:
        super().__init__(parent)
        self.cache = cache
        self.items: Sequence[GridItem] = []
        self._row_of: dict[int, int] = {}
        self.show_names = False  # the file name under each thumbnail (when no caption or score says more)
        cache.updated.connect(self._thumbs_arrived)
        self.set_placeholder_size(128)

    def set_placeholder_size(self, size: int) -> None:
        # With uniform item sizes Qt measures the first item only: the placeholder must be as big as a thumbnail.
        pix = QPixmap(size, size)
        pix.fill(QColor(0, 0, 0, 0))
        painter = QPainter(pix)
        painter.fillRect(0, size // 8, size, size * 3 // 4, QColor(60, 60, 66))  # a 4:3 grey card, centred
        painter.end()
        self._placeholder = QIcon(pix)

    def set_items(self, items: Sequence[GridItem]) -> None:
        self.beginResetModel()
        self.items = items
        if isinstance(items, RowItems):
            self._row_of = {i: k for k, (i, _p) in enumerate(items.rows)}
        else:
            self._row_of = {it.image_id: k for k, it in enumerate(items)}
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.items)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        it = self.items[index.row()]
        if role == Qt.ItemDataRole.DecorationRole:
            # A QIcon is scaled into the icon box keeping its aspect; a bare QPixmap would be cropped.
            pix = self.cache.get(it.image_id)
            return QIcon(pix) if pix is not None and not pix.isNull() else self._placeholder
        if role == Qt.ItemDataRole.DisplayRole:
            if it.caption:
                return it.caption
            if it.score is not None:
                return f"{it.score:.3f}"
            return it.path.replace("\\", "/").rsplit("/", 1)[-1] if self.show_names else None
        if role == Qt.ItemDataRole.ToolTipRole:
            return it.path + (f"\ncosine {it.score:.4f}" if it.score is not None else "")
        if role == IdRole:
            return it.image_id
        if role == PathRole:
            return it.path
        if role == ScoreRole:
            return it.score
        return None

    def flags(self, index):
        return super().flags(index) | Qt.ItemFlag.ItemIsDragEnabled

    def mimeTypes(self) -> list[str]:
        return ["text/uri-list"]

    def mimeData(self, indexes) -> QMimeData:
        """Dragging photos out of a grid carries their files, so a drop on the search zone searches by them."""
        md = QMimeData()
        md.setUrls([QUrl.fromLocalFile(self.items[i.row()].path) for i in indexes if i.isValid()])
        return md

    def _thumbs_arrived(self, ids: list[int]) -> None:
        """Repaint the rows whose thumbnails arrived, one signal per run of adjacent rows. One signal from the first
        to the last row made QListView walk every row between: a search's thumbnails, scattered over a 100k
        library's grid, cost each later drop about 0.1 s on the UI thread."""
        rows = sorted({self._row_of[i] for i in ids if i in self._row_of})
        start = 0
        for k in range(1, len(rows) + 1):
            if k == len(rows) or rows[k] != rows[k - 1] + 1:
                self.dataChanged.emit(self.index(rows[start]), self.index(rows[k - 1]),
                                      [Qt.ItemDataRole.DecorationRole])
                start = k


class ThumbnailDelegate(QStyledItemDelegate):
    """A fixed square for the picture (fitted, centred) and a fixed strip for the caption, whatever the aspect."""

    def __init__(self, size: int, parent=None) -> None:
        super().__init__(parent)
        self.size = size

    def sizeHint(self, option, index) -> QSize:
        return QSize(self.size + 8, self.size + 26)

    def paint(self, painter: QPainter, option, index) -> None:
        r = option.rect
        painter.save()
        if option.state & QStyle.StateFlag.State_Selected:
            painter.fillRect(r, option.palette.highlight())
        box = QRect(r.x() + (r.width() - self.size) // 2, r.y() + 4, self.size, self.size)
        icon = index.data(Qt.ItemDataRole.DecorationRole)
        text = index.data(Qt.ItemDataRole.DisplayRole)
        if isinstance(icon, QIcon):
            # With a caption the picture sits on it (a landscape photo does not float away from its name).
            bottom = Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom
            where = bottom if text else Qt.AlignmentFlag.AlignCenter
            icon.paint(painter, box, where)
        if text:
            strip = QRect(r.x() + 2, box.bottom() + 3, r.width() - 4, 18)
            colour = option.palette.highlightedText() if option.state & QStyle.StateFlag.State_Selected \
                else option.palette.text()
            painter.setPen(colour.color())
            elided = option.fontMetrics.elidedText(str(text), Qt.TextElideMode.ElideRight, strip.width())
            painter.drawText(strip, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter, elided)
        painter.restore()


MIN_ICON, MAX_ICON = 64, 384


class ThumbnailGrid(QListView):
    """Thumbnails in as many columns as fit, the columns stretched to fill the width (no ragged right margin);
    Ctrl+wheel changes the thumbnail size like a photo app's zoom slider."""

    icon_size_changed = Signal(int)

    def __init__(self, cache: ThumbnailCache, icon: int = 128, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.icon_size = icon
        self.setModel(ThumbnailModel(cache, self))
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)  # lets Qt lay out 100k items without measuring each
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(500)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setDragEnabled(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.set_icon_size(icon)

    def set_icon_size(self, size: int) -> None:
        size = max(MIN_ICON, min(MAX_ICON, int(size)))
        changed = size != self.icon_size
        self.icon_size = size
        self.grid_model().set_placeholder_size(size)
        self.setItemDelegate(ThumbnailDelegate(size, self))
        self.setIconSize(QSize(size, size))
        self._fill_width()
        if changed:
            self.icon_size_changed.emit(size)

    def set_show_names(self, on: bool) -> None:
        self.grid_model().show_names = on
        self.viewport().update()

    def _layout_width(self) -> int:
        """The width Qt wraps items in: it keeps room for a vertical scroll bar that may appear."""
        bar = 0 if self.verticalScrollBar().isVisible() else \
            self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent, None, self)
        return self.viewport().width() - bar - 2

    def columns(self) -> int:
        return max(1, self._layout_width() // (self.icon_size + 12))

    def _fill_width(self) -> None:
        """Spread the leftover width over the columns, so the grid reaches the right edge."""
        cols = self.columns()
        self.setGridSize(QSize(max(self.icon_size + 12, self._layout_width() // cols), self.icon_size + 30))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fill_width()

    def wheelEvent(self, event) -> None:
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            steps = event.angleDelta().y() / 120
            if steps:
                self.set_icon_size(self.icon_size + round(steps * 16))
            event.accept()
            return
        super().wheelEvent(event)

    def grid_model(self) -> ThumbnailModel:
        return self.model()  # type: ignore[return-value]

    def selected_items(self) -> list[GridItem]:
        m = self.grid_model()
        return [m.items[i.row()] for i in sorted(self.selectedIndexes(), key=lambda i: i.row())]
