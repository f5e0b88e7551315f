"""The library map: one dot per photo (pyqtgraph, fluent at 100k), coloured by cluster or label.

Hovering shows the photo; box or lasso selection fills a grid; zooming in until few photos are visible swaps
the dots for thumbnails; the current query and its results are ringed.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem, QGraphicsPixmapItem, QLabel, QWidget

from app.gui.thumbnails import ThumbnailCache
from app.gui.widgets.map_colours import colour_of
from engine.viz.selection import PointLocator, points_in_box, points_in_polygon

THUMBS_BELOW = 150  # visible photos under which dots become thumbnails
FRAME = 3  # pixels of the group's colour around a thumbnail on the map


def framed(pix: QPixmap, colour: str, size: int = 72) -> QPixmap:
    """A thumbnail inside a frame of its group's colour, so the colours still read when dots become photos."""
    inner = pix.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
    out = QPixmap(inner.width() + 2 * FRAME, inner.height() + 2 * FRAME)
    out.fill(QColor(colour))
    painter = QPainter(out)
    painter.drawPixmap(FRAME, FRAME, inner)
    painter.end()
    return out


class _SelectViewBox(pg.ViewBox):
    """Left-drag draws a box or lasso in selection modes; otherwise pans as usual."""

    def __init__(self, owner: MapView) -> None:
        super().__init__()
        self.owner = owner
        self.path_item = QGraphicsPathItem()
        self.path_item.setPen(QPen(QColor(255, 210, 0), 0, Qt.PenStyle.DashLine))
        self.path_item.setZValue(20)
        self.addItem(self.path_item, ignoreBounds=True)
        self._trace: list[QPointF] = []

    def mouseDragEvent(self, ev, axis=None) -> None:
        mode = self.owner.mode
        if mode == "pan" or ev.button() != Qt.MouseButton.LeftButton:
            super().mouseDragEvent(ev, axis)
            return
        ev.accept()
        p = self.mapSceneToView(ev.scenePos())
        if ev.isStart():
            self._trace = [self.mapSceneToView(ev.buttonDownScenePos()), p]
        else:
            self._trace.append(p)
        path = QPainterPath()
        if mode == "box":
            a, b = self._trace[0], self._trace[-1]
            path.addRect(min(a.x(), b.x()), min(a.y(), b.y()), abs(a.x() - b.x()), abs(a.y() - b.y()))
        else:
            path.moveTo(self._trace[0])
            for q in self._trace[1:]:
                path.lineTo(q)
            path.closeSubpath()
        self.path_item.setPath(path)
        if ev.isFinish():
            pts = np.array([[q.x(), q.y()] for q in self._trace])
            self.path_item.setPath(QPainterPath())
            self.owner.select_shape(mode, pts)


class MapView(pg.PlotWidget):
    selection_changed = Signal(list)  # image ids
    photo_activated = Signal(int)  # image id (double-click)

    def __init__(self, cache: ThumbnailCache, parent: QWidget | None = None) -> None:
        self._vb = None
        super().__init__(parent=parent, viewBox=_SelectViewBox(self))
        self.cache = cache
        self.mode = "pan"
        self.setBackground("#1c1c20")
        self.hideAxis("left")
        self.hideAxis("bottom")
        self.getPlotItem().hideButtons()  # pyqtgraph's unlabelled auto-range "A"; the panel has a "Fit" button
        self.getViewBox().setAspectLocked(True)
        self.scatter = pg.ScatterPlotItem(size=6, pen=None, pxMode=True)
        self.highlight = pg.ScatterPlotItem(size=13, pxMode=True, brush=None)
        self.highlight.setZValue(10)
        self.selection_item = pg.ScatterPlotItem(size=10, pxMode=True, pen=pg.mkPen("#ffffff", width=1.5),
                                                 brush=pg.mkBrush(255, 255, 255, 90))
        self.selection_item.setZValue(8)
        self.addItem(self.scatter)
        self.addItem(self.selection_item)
        self.addItem(self.highlight)
        self.groups = np.zeros(0, dtype=np.int64)
        self.ids = np.zeros(0, dtype=np.int64)
        self.coords = np.zeros((0, 2), dtype=np.float32)
        self._index: dict[int, int] = {}
        self.locator = PointLocator(self.coords)
        self.selected: list[int] = []
        self._thumb_items: dict[int, QGraphicsPixmapItem] = {}
        self.tooltip = QLabel(self)
        self.tooltip.setStyleSheet("background: #222; color: #eee; border: 1px solid #555; padding: 3px")
        self.tooltip.hide()
        self.scene().sigMouseMoved.connect(self._hover)
        self.scene().sigMouseClicked.connect(self._clicked)
        self.getViewBox().sigRangeChanged.connect(lambda *_: self._update_thumbnails())
        cache.updated.connect(lambda _ids: self._update_thumbnails())

    # --------------------------------------------------------------------------------------------- data
    def set_points(self, ids: np.ndarray, coords: np.ndarray, groups: np.ndarray | None = None) -> None:
        """ids (N,), coords (N, 2), groups (N,) ints (cluster or label index; -1 = none)."""
        self.ids = np.asarray(ids, dtype=np.int64)
        self.coords = np.asarray(coords, dtype=np.float32)
        self._index = {int(i): n for n, i in enumerate(self.ids)}
        self.locator = PointLocator(self.coords)
        self.selected = []
        self.selection_item.setData([], [])
        self.highlight.setData([], [])
        self.set_groups(groups)
        self.fit()

    def set_groups(self, groups: np.ndarray | None) -> None:
        """Colour the dots (and the thumbnails' frames) by group; -1 is grey."""
        self.groups = np.full(len(self.ids), -1, dtype=np.int64) if groups is None else np.asarray(groups)
        brushes = {g: pg.mkBrush(colour_of(int(g))) for g in set(self.groups.tolist())}
        brush = [brushes[g] for g in self.groups.tolist()]
        self.scatter.setData(x=self.coords[:, 0], y=self.coords[:, 1], brush=brush)
        self._clear_thumbnails()
        self._update_thumbnails()

    def fit(self) -> None:
        """Every photo in view."""
        if len(self.ids):
            self.getViewBox().autoRange(padding=0.1)  # room for the thumbnails drawn around edge dots

    def set_highlight(self, query_ids: list[int], result_ids: list[int]) -> None:
        spots = []
        for ids, colour in ((result_ids, (255, 210, 0)), (query_ids, (255, 60, 60))):
            for i in ids:
                n = self._index.get(int(i))
                if n is not None:
                    spots.append({"pos": tuple(self.coords[n]), "pen": pg.mkPen(colour, width=2), "brush": None})
        self.highlight.setData(spots)

    # ------------------------------------------------------------------------------------------ selection
    def set_mode(self, mode: str) -> None:
        if mode not in ("pan", "box", "lasso"):
            raise ValueError(mode)
        self.mode = mode

    def select_shape(self, kind: str, pts: np.ndarray) -> list[int]:
        if kind == "box":
            (x0, y0), (x1, y1) = pts[0], pts[-1]
            mask = points_in_box(self.coords, x0, y0, x1, y1)
        else:
            mask = points_in_polygon(self.coords, pts)
        return self.select_ids([int(i) for i in self.ids[mask]])

    def select_ids(self, ids: list[int]) -> list[int]:
        """Select these photos: marked on the map, and announced (the panel's grid shows them)."""
        self.selected = [int(i) for i in ids if int(i) in self._index]
        rows = [self._index[i] for i in self.selected]
        if rows:
            self.selection_item.setData(x=self.coords[rows, 0], y=self.coords[rows, 1])
        else:
            self.selection_item.setData([], [])
        self.selection_changed.emit(self.selected)
        return self.selected

    # --------------------------------------------------------------------------------------------- hover
    def _pixel_size(self) -> float:
        px = self.getViewBox().viewPixelSize()
        return float(max(px[0], px[1]))

    def point_at(self, scene_pos) -> int | None:
        p = self.getViewBox().mapSceneToView(scene_pos)
        n = self.locator.nearest(p.x(), p.y(), max_distance=8 * self._pixel_size())
        return None if n is None else int(self.ids[n])

    def _hover(self, scene_pos) -> None:
        image_id = self.point_at(scene_pos)
        if image_id is None:
            self.tooltip.hide()
            return
        pix = self.cache.get(image_id)
        if pix is None or pix.isNull():
            self.tooltip.setText(f"photo {image_id}")
        else:
            self.tooltip.setPixmap(pix.scaled(160, 160, Qt.AspectRatioMode.KeepAspectRatio))
        pos = self.mapFromScene(scene_pos)
        self.tooltip.adjustSize()
        self.tooltip.move(min(pos.x() + 14, self.width() - self.tooltip.width()),
                          min(pos.y() + 14, self.height() - self.tooltip.height()))
        self.tooltip.show()
        self.tooltip.raise_()

    def _clicked(self, ev) -> None:
        if ev.double():
            image_id = self.point_at(ev.scenePos())
            if image_id is not None:
                self.photo_activated.emit(image_id)

    # ----------------------------------------------------------------------------------------- thumbnails
    def visible_indices(self) -> np.ndarray:
        (x0, x1), (y0, y1) = self.getViewBox().viewRange()
        return self.locator.count_in_view(x0, y0, x1, y1)

    def _update_thumbnails(self) -> None:
        if self.plotItem is None:  # closed: thumbnails may still arrive from the shared cache
            return
        visible = self.visible_indices() if len(self.ids) else np.zeros(0, dtype=int)
        if len(visible) == 0 or len(visible) > THUMBS_BELOW:
            self._clear_thumbnails()
            return
        wanted = {int(self.ids[n]): n for n in visible}
        for image_id in list(self._thumb_items):
            if image_id not in wanted:
                self.getViewBox().removeItem(self._thumb_items.pop(image_id))
        for image_id, n in wanted.items():
            pix = self.cache.get(image_id)
            if pix is None or pix.isNull():
                continue
            item = self._thumb_items.get(image_id)
            if item is None:
                group = int(self.groups[n]) if n < len(self.groups) else -1
                item = QGraphicsPixmapItem(framed(pix, colour_of(group)))
                # Thumbnails keep their pixel size whatever the zoom; centred on the dot.
                item.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
                item.setOffset(-item.pixmap().width() / 2, -item.pixmap().height() / 2)
                item.setZValue(5)
                self.getViewBox().addItem(item, ignoreBounds=True)
                self._thumb_items[image_id] = item
            item.setPos(float(self.coords[n, 0]), float(self.coords[n, 1]))

    def _clear_thumbnails(self) -> None:
        for item in self._thumb_items.values():
            self.getViewBox().removeItem(item)
        self._thumb_items.clear()

    @property
    def thumbnails_shown(self) -> int:
        return len(self._thumb_items)
