"""What a drop or the clipboard carries, as query inputs: one reading for drag-and-drop and paste alike.

Local files and folders come as paths (a folder contributes its image files, `engine.query.expand_inputs`);
pixels dragged out of a web browser or copied from an image editor come as their encoded bytes, in the format the
source offered (PNG, JPEG, WebP...), or re-encoded as PNG when the source offers only Qt's raw image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QMimeData
from PySide6.QtGui import QImage

ENCODED_FORMATS = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff", "image/heic",
                   "image/avif")


@dataclass(frozen=True)
class Dropped:
    """Paths to search by and/or the bytes of one image that arrived without a file."""

    paths: list[Path]
    data: bytes | None = None
    data_label: str = "dropped image"

    def __bool__(self) -> bool:
        return bool(self.paths) or self.data is not None


def _is_image_path(p: Path) -> bool:
    from engine.imageio import SUPPORTED_EXTENSIONS

    return p.is_dir() or (p.suffix.lower() in SUPPORTED_EXTENSIONS and not p.name.startswith("."))


def _png(image: QImage) -> bytes:
    buf = QByteArray()
    io = QBuffer(buf)
    io.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(io, "PNG")
    return bytes(buf.data())


def read_mime(md: QMimeData | None, label: str = "dropped image") -> Dropped:
    """The usable content of a drop or the clipboard; empty when there is nothing to search by.

    Local files that are not images (a text file) are left out, so a drag of only such files is refused at
    drag-enter; remote URLs are not fetched (the browser sends the pixels too, which are used instead).
    """
    if md is None:
        return Dropped([])
    paths = [Path(u.toLocalFile()) for u in md.urls() if u.isLocalFile()] if md.hasUrls() else []
    paths = [p for p in paths if _is_image_path(p)]
    if paths:
        return Dropped(paths)
    for fmt in ENCODED_FORMATS:
        if md.hasFormat(fmt):
            data = bytes(md.data(fmt).data())
            if data:
                return Dropped([], data, label)
    if md.hasImage():
        image = md.imageData()
        if hasattr(image, "toImage"):  # a QPixmap
            image = image.toImage()
        if isinstance(image, QImage) and not image.isNull():
            return Dropped([], _png(image), label)
    return Dropped([])


__all__ = ["ENCODED_FORMATS", "Dropped", "read_mime"]
