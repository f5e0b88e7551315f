"""Camera RAW files (CR2, CR3, NEF, ARW, RAF, ORF, RW2, PEF, SRW, DNG) through rawpy (LibRaw).

A RAW holds the sensor mosaic and, nearly always, a JPEG preview the camera rendered itself. The preview is used
when it is at least as large as the caller needs (a model input, a thumbnail): it decodes in milliseconds, while
demosaicing a 24 MP mosaic takes a second. Otherwise the mosaic is demosaiced at half size (each 2x2 Bayer cell
becomes one pixel: no interpolation, four times fewer pixels, still 12 MP for a 48 MP sensor).

Orientation and capture time come from LibRaw, which reads them from the maker's own metadata as well as EXIF.
Everything that goes wrong raises :class:`engine.imageio.ImageDecodeError` naming the file, like any other image.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engine.imageio import ImageInfo

RAW_EXTENSIONS: frozenset[str] = frozenset(
    {".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw", ".dng"}
)
"""Lower-case suffixes of the camera RAW formats Dinoscope reads."""

RAW_FORMAT = "RAW"  # ImageInfo.format of every RAW (the container's own name is in the file suffix)

# LibRaw's sizes.flip -> the EXIF orientation a viewer would apply (dcraw's flip: 3 = 180, 5 = 90 CCW, 6 = 90 CW).
_FLIP_TO_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
_TAG_SUBIFDS, _TAG_PHOTOMETRIC, _TAG_MAKE, _TAG_DNG_VERSION = 330, 262, 271, 50706
_PHOTOMETRIC_CFA, _PHOTOMETRIC_LINEAR_RAW = 32803, 34892

Source = str | os.PathLike | bytes | bytearray | memoryview


def is_raw_path(path: str | os.PathLike) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in RAW_EXTENSIONS


def looks_like_raw(head: bytes) -> bool:
    """True for the first bytes (64 KiB is plenty) of a camera RAW, so that RAW bytes without a file name (a drop,
    the indexer's single read) are not handed to Pillow, which would show a RAW's 160-px IFD0 thumbnail as the
    photo. CR3 and RAF have their own signatures, ORF and RW2 variant TIFF magics, CR2 a marker; the other
    TIFF-based RAWs are told apart from ordinary TIFF photos by their first directory."""
    if head[4:12] == b"ftypcrx " or head.startswith(b"FUJIFILMCCD-RAW"):
        return True
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00"):
        return True
    if head[:4] not in _TIFF_MAGICS:
        return False
    if head[8:10] == b"CR":
        return True
    tags = _ifd0_tags(head)
    return (
        _TAG_DNG_VERSION in tags
        or tags.get(_TAG_PHOTOMETRIC) in (_PHOTOMETRIC_CFA, _PHOTOMETRIC_LINEAR_RAW)
        or (_TAG_SUBIFDS in tags and _TAG_MAKE in tags)  # NEF, ARW: a preview or thumbnail in IFD0, raw below
    )


def _ifd0_tags(head: bytes) -> dict[int, int | None]:
    """Tag id -> first SHORT value (None for other types) of the first TIFF directory, as far as `head` holds it."""
    order = "<" if head[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack_from(order + "I", head, 4)
        (count,) = struct.unpack_from(order + "H", head, offset)
        tags: dict[int, int | None] = {}
        for i in range(min(count, 512)):
            tag, kind = struct.unpack_from(order + "HH", head, offset + 2 + 12 * i)
            value = struct.unpack_from(order + "H", head, offset + 2 + 12 * i + 8)[0] if kind == 3 else None
            tags[tag] = value
        return tags
    except struct.error:
        return {}


def handles(source: Source) -> bool:
    """Whether `source` (a path or encoded bytes) is a RAW this module should decode."""
    if isinstance(source, bytes | bytearray | memoryview):
        return looks_like_raw(bytes(source[:65536]))
    return is_raw_path(source)


@dataclass(frozen=True)
class _Opened:
    name: str
    width: int  # as displayed (orientation applied), full sensor resolution
    height: int
    orientation: int


def _name(source: Source) -> str:
    return "<image bytes>" if isinstance(source, bytes | bytearray | memoryview) else os.fspath(source)


def _cause(exc: BaseException) -> str:
    import rawpy

    arg = exc.args[0] if exc.args else exc
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)  # LibRaw's messages are bytes
    if isinstance(exc, FileNotFoundError):
        return "the file does not exist"
    if isinstance(exc, PermissionError):
        return "permission denied (the file cannot be read)"
    if isinstance(exc, rawpy.LibRawIOError):
        return "the RAW file is truncated or unreadable (an incomplete copy?)"
    if isinstance(exc, rawpy.LibRawFileUnsupportedError):
        return "LibRaw does not recognise this RAW file (an unsupported camera, or not a RAW at all)"
    if isinstance(exc, rawpy.LibRawDataError | rawpy.LibRawUnsupportedThumbnailError):
        return f"the RAW data is corrupt ({text})"
    if isinstance(exc, MemoryError | rawpy.LibRawTooBigError):
        return "there is not enough memory to decode it"
    return f"the RAW file cannot be decoded ({type(exc).__name__}: {text})"


def _open(source: Source):
    """rawpy.RawPy for a path or bytes; ImageDecodeError for anything LibRaw refuses."""
    import rawpy

    from engine.imageio import ImageDecodeError

    name = _name(source)
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            if not len(source):
                raise ImageDecodeError(name, "the image data is empty (0 bytes)")
            return rawpy.imread(io.BytesIO(bytes(source)))
        if os.path.isfile(name) and os.path.getsize(name) == 0:
            raise ImageDecodeError(name, "the file is empty (0 bytes)")
        return rawpy.imread(name)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(name, _cause(exc)) from None


def _describe(name: str, raw) -> _Opened:
    sizes = raw.sizes
    orientation = _FLIP_TO_ORIENTATION.get(int(sizes.flip), 1)
    width, height = int(sizes.width), int(sizes.height)
    if orientation in (6, 8):
        width, height = height, width
    return _Opened(name, width, height, orientation)


_HEAD_BYTES = 4 << 20  # TIFF-based RAWs keep IFD0 and the Exif IFD in their first few hundred KiB


def _captured_at(source: Source, raw) -> datetime | None:
    """EXIF DateTimeOriginal (else DateTime) from the RAW's TIFF directories, else from its JPEG preview (RAF,
    CR3). LibRaw knows the date too, but rawpy's `other` unpacks the whole mosaic to tell it (0.3 s at 24 MP)."""
    from PIL import Image

    from engine.imageio import _captured_at as exif_time

    if isinstance(source, bytes | bytearray | memoryview):
        head = bytes(source[:_HEAD_BYTES])
    else:
        try:
            with open(source, "rb") as f:
                head = f.read(_HEAD_BYTES)
        except OSError:
            head = b""
    if head[:4] in (b"IIRO", b"IIRS", b"IIU\x00"):
        head = b"II*\x00" + head[4:]  # ORF and RW2 are TIFF under another magic number
    elif head[:4] == b"MMOR":
        head = b"MM\x00*" + head[4:]
    if head[:4] in _TIFF_MAGICS:
        try:
            exif = Image.Exif()
            exif.load(head)
            when = exif_time(exif)
            if when is not None:
                return when
        except Exception:  # a damaged or unusual directory: try the preview
            pass
    try:
        thumb = raw.extract_thumb()
    except Exception:
        return None
    if thumb.format.name != "JPEG":
        return None
    try:
        from engine.imageio import read_info as jpeg_info

        return jpeg_info(thumb.data).captured_at
    except Exception:
        return None


def read_info(source: Source, *, max_pixels: int | None = None) -> ImageInfo:
    """Size (as displayed), orientation and capture time, without unpacking the mosaic."""
    from engine.imageio import ImageInfo, _check_pixels

    with _open(source) as raw:
        opened = _describe(_name(source), raw)
        captured_at = _captured_at(source, raw)
    _check_pixels(opened.name, (opened.width, opened.height), max_pixels)
    return ImageInfo(width=opened.width, height=opened.height, orientation=opened.orientation, format=RAW_FORMAT,
                     captured_at=captured_at, mode="RGB")


def load_rgb(source: Source, *, min_side: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Upright HxWx3 uint8 RGB: the embedded preview when its shorter side is at least `min_side` (or, with no
    `min_side`, at least the half-size demosaic's), else the half-size demosaic."""
    from engine.imageio import ImageDecodeError, _check_pixels

    name = _name(source)
    with _open(source) as raw:
        opened = _describe(name, raw)
        _check_pixels(name, (opened.width, opened.height), max_pixels)
        need = min_side if min_side is not None else min(opened.width, opened.height) // 2
        preview = _preview(raw, opened, need)
    if preview is not None:
        return preview
    # LibRaw refuses to unpack the mosaic once the preview was unpacked ("out of order call"): open afresh.
    with _open(source) as raw:
        try:
            raw.unpack()  # on its own, so that a short file is reported as truncated
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        except Exception as exc:
            raise ImageDecodeError(name, _cause(exc)) from None
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _preview(raw, opened: _Opened, need: int) -> np.ndarray | None:
    """The camera's own rendering, upright, when it is large enough; None when there is none or it is too small."""
    import rawpy

    from engine import imageio

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    except Exception:  # a damaged preview: the mosaic may still be fine
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            info = imageio.read_info(thumb.data)
        except imageio.ImageDecodeError:
            return None
        if min(info.width, info.height) < need:
            return None
        try:
            rgb = imageio.load_rgb(thumb.data, min_side=need or None)
        except imageio.ImageDecodeError:
            return None
        if info.orientation != 1:
            return rgb  # the preview carries its own orientation, already applied by load_rgb
    else:  # an uncompressed bitmap preview
        rgb = np.ascontiguousarray(thumb.data[..., :3], dtype=np.uint8)
        if rgb.ndim != 3 or min(rgb.shape[:2]) < need:
            return None
    return _orient(rgb, opened.orientation)


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    if orientation == 3:
        rgb = rgb[::-1, ::-1]
    elif orientation == 6:  # 90 degrees clockwise
        rgb = np.rot90(rgb, k=-1)
    elif orientation == 8:
        rgb = np.rot90(rgb, k=1)
    return np.ascontiguousarray(rgb)


__all__ = ["RAW_EXTENSIONS", "RAW_FORMAT", "handles", "is_raw_path", "load_rgb", "looks_like_raw", "read_info"]
