"""Render dinoscope.svg to dinoscope.png (256x256, transparent background) with Qt's own SVG renderer.

Run from anywhere: ``.venv/bin/python assets/icons/render_icon.py [SIZE]``. Needs no display (uses the
offscreen Qt platform).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SVG = HERE / "dinoscope.svg"
PNG = HERE / "dinoscope.png"


def render(size: int = 256, svg: Path = SVG, png: Path = PNG) -> Path:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([])  # QPainter on a QImage wants an application
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise RuntimeError(f"could not parse {svg}")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    if not image.save(str(png), "PNG"):
        raise RuntimeError(f"could not write {png}")
    return png


if __name__ == "__main__":
    out = render(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
    print(f"wrote {out}")
