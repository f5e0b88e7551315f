"""A zoomable photo with an overlay layer, a click-to-pick-a-patch gesture and a box-drawing gesture."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QGraphicsPixmapItem, QGraphicsRectItem, QGraphicsScene, QGraphicsView


def to_qimage(rgb: np.ndarray) -> QImage:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()  # copy: own the pixels


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
        self._press: QPointF | None = None

    def set_image(self, rgb: np.ndarray) -> None:
        self.base.setPixmap(QPixmap.fromImage(to_qimage(rgb)))
        self.overlay.setPixmap(QPixmap())
        self.box.hide()
        self.scene().setSceneRect(QRectF(0, 0, rgb.shape[1], rgb.shape[0]))
        self.fit()

    def set_overlay(self, rgb: np.ndarray | None, opacity: float = 1.0) -> None:
        self.overlay.setPixmap(QPixmap.fromImage(to_qimage(rgb)) if rgb is not None else QPixmap())
        self.overlay.setOpacity(opacity)

    def fit(self) -> None:
        if not self.base.pixmap().isNull():
            self.fitInView(self.base, Qt.AspectRatioMode.KeepAspectRatio)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
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
