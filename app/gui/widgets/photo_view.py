"""A zoomable photo with an overlay layer, a click-to-pick-a-patch gesture and a box-drawing gesture.

Zoom as in a photo viewer: "fit" shows the whole photo (a small one is enlarged at most MAX_FIT_SCALE times, so
a 64-pixel icon does not turn into a blur filling the screen), "100%" shows one image pixel per screen pixel, the
wheel zooms around the mouse.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QImageReader, QPainter, QPen, QPixmap, QTransform
from PySide6.QtWidgets import QGraphicsPixmapItem, QGraphicsRectItem, QGraphicsScene, QGraphicsView


def to_qimage(rgb: np.ndarray) -> QImage:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()  # copy: own the pixels


MAX_FIT_SCALE = 2.0
ZOOM_STEP = 1.25
MIN_SCALE, MAX_SCALE = 0.02, 16.0


def region_thumbnail(path: str, box: tuple[float, float, float, float], size: int) -> QPixmap:
    """The part of a photo a region search looked for (box in the upright photo's pixels), as a thumbnail."""
    reader = QImageReader(path)
    reader.setAutoTransform(True)  # the box is in EXIF-upright coordinates, like engine.imageio.load_rgb
    image = reader.read()
    if image.isNull():
        return QPixmap()
    x0, y0, x1, y1 = (round(v) for v in box)
    crop = image.copy(x0, y0, max(1, x1 - x0), max(1, y1 - y0))
    return QPixmap.fromImage(crop).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                          Qt.TransformationMode.SmoothTransformation)


class PhotoView(QGraphicsView):
    """Shows an image at its own pixel coordinates; mouse positions are reported in those coordinates."""

    patch_clicked = Signal(float, float)  # x, y in image pixels
    box_drawn = Signal(float, float, float, float)  # x0, y0, x1, y1 in image pixels

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setDragMode(QGraphicsView.DragMode.NoDrag)
        self.setBackgroundBrush(QColor(28, 28, 32))
        self.base = QGraphicsPixmapItem()
        self.overlay = QGraphicsPixmapItem()
        self.overlay.setZValue(1)
        self.box = QGraphicsRectItem()
        self.box.setZValue(2)
        self.box.setPen(QPen(QColor(255, 210, 0), 0, Qt.PenStyle.DashLine))
        self.box.hide()
        for item in (self.base, self.overlay, self.box):
            self.scene().addItem(item)
        self.box_mode = False
        self.fit_mode = True  # follows the window's size until the user zooms
        self._press: QPointF | None = None
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)

    def set_image(self, rgb: np.ndarray) -> None:
        self.base.setPixmap(QPixmap.fromImage(to_qimage(rgb)))
        self.overlay.setPixmap(QPixmap())
        self.box.hide()
        self.scene().setSceneRect(QRectF(0, 0, rgb.shape[1], rgb.shape[0]))
        self.fit()

    def set_overlay(self, rgb: np.ndarray | None, opacity: float = 1.0) -> None:
        self.overlay.setPixmap(QPixmap.fromImage(to_qimage(rgb)) if rgb is not None else QPixmap())
        self.overlay.setOpacity(opacity)

    @property
    def scale_factor(self) -> float:
        """Screen pixels per image pixel."""
        return self.transform().m11()

    def fit(self) -> None:
        """The whole photo in view, enlarged at most MAX_FIT_SCALE times."""
        self.fit_mode = True
        pix = self.base.pixmap()
        if pix.isNull():
            return
        area = self.viewport().rect().adjusted(2, 2, -2, -2)
        s = min(area.width() / pix.width(), area.height() / pix.height(), MAX_FIT_SCALE)
        self.setTransform(QTransform.fromScale(s, s))
        self.centerOn(self.base)

    def actual_size(self) -> None:
        """100%: one image pixel per screen pixel, centred on what was in the middle."""
        self.zoom_to(1.0)

    def zoom_to(self, scale: float) -> None:
        self.fit_mode = False
        centre = self.mapToScene(self.viewport().rect().center())
        scale = min(max(scale, MIN_SCALE), MAX_SCALE)
        self.setTransform(QTransform.fromScale(scale, scale))
        self.centerOn(centre)

    def wheelEvent(self, event) -> None:
        steps = event.angleDelta().y() / 120
        if not steps or self.base.pixmap().isNull():
            return
        self.fit_mode = False
        factor = ZOOM_STEP ** steps
        target = min(max(self.scale_factor * factor, MIN_SCALE), MAX_SCALE)
        self.scale(target / self.scale_factor, target / self.scale_factor)  # around the mouse (the anchor)
        event.accept()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.fit_mode:
            self.fit()

    def _image_point(self, event) -> QPointF:
        p = self.mapToScene(event.position().toPoint())
        r = self.sceneRect()
        return QPointF(min(max(p.x(), 0.0), r.width() - 1e-3), min(max(p.y(), 0.0), r.height() - 1e-3))

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton and not self.base.pixmap().isNull():
            self._press = self._image_point(event)
            if self.box_mode:
                self.box.setRect(QRectF(self._press, self._press))
                self.box.show()
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:
        if self.box_mode and self._press is not None:
            self.box.setRect(QRectF(self._press, self._image_point(event)).normalized())
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self._press is not None:
            end = self._image_point(event)
            start, self._press = self._press, None
            if self.box_mode:
                r = QRectF(start, end).normalized()
                if r.width() >= 4 and r.height() >= 4:
                    self.box_drawn.emit(r.left(), r.top(), r.right(), r.bottom())
            else:
                self.patch_clicked.emit(end.x(), end.y())
        super().mouseReleaseEvent(event)
