"""Decode any supported photo into an upright RGB uint8 array, or fail with one clear exception.

Everything that reads pixels from disk (or from a drag-and-drop payload) goes through here, so that the rest of
Dinoscope can rely on a single contract:

* ``load_rgb`` returns an ``HxWx3`` ``uint8`` C-contiguous RGB array, rotated as a photo viewer would show it
  (EXIF orientation applied), whatever the file held: grey, palette, CMYK, 16-bit, float or alpha images.
* Anything that cannot be decoded raises :class:`ImageDecodeError` (a ``ValueError``) whose message names the file
  and the cause in plain words, so the GUI can show it as-is and a library scan can log it and carry on.
* Decompression bombs are refused from the header, before any pixel memory is allocated.

Pillow does the work; pillow-heif adds HEIC/HEIF when installed. Pillow 11.2+ reads AVIF by itself (pillow-heif 1.x
no longer does). Importing this module is cheap: Pillow's format plugins and pillow-heif (~35 ms) are loaded on the
first decode, not at import time.

Why this file is long: one decoder for every format behind the same guards (header-first size and aspect
checks, EXIF orientation, reduced JPEG decode, HEIC/AVIF), so every caller gets the same refusals; RAW is engine.raw.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from engine import raw as _raw

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "ImageDecodeError",
    "ImageInfo",
    "heif_available",
    "load_rgb",
    "load_thumbnail",
    "read_info",
]

DEFAULT_MAX_MEGAPIXELS = 200.0
"""Default bomb limit. 200 MP admits the largest phone photos (16320x12240 = 199.8 MP) and stitched panoramas."""

_MAX_MEGAPIXELS_ENV = "DINOSCOPE_MAX_MEGAPIXELS"

MAX_ASPECT_RATIO = 100.0
"""Longest side over shortest side. The widest stitched panoramas stay near 20:1; past 100:1 an image is a strip
(a 1 x 100,000 PNG weighs 475 bytes), and scaling its short side to the model's 256 pixels would make a 25,600,000
pixel long side: ~24 GB in the resize. Refused from the header, like a decompression bomb."""

_HAS_HEIF_PACKAGE = importlib.util.find_spec("pillow_heif") is not None
_HAS_PIL_AVIF = importlib.util.find_spec("PIL._avif") is not None
_HAS_RAWPY = importlib.util.find_spec("rawpy") is not None

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
    | ({".heic", ".heif"} if _HAS_HEIF_PACKAGE else set())
    | ({".avif"} if _HAS_PIL_AVIF or _HAS_HEIF_PACKAGE else set())
    | (_raw.RAW_EXTENSIONS if _HAS_RAWPY else set())
)
"""Lower-case suffixes (with the dot) that a library scan should pick up."""

# Pillow format names we agree to open. Everything else Pillow knows (EPS runs Ghostscript, PSD, ICO, PPM...) is
# refused as "not supported", which keeps the attack surface to well-exercised decoders.
_ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF", "HEIF", "AVIF")
_DRAFTABLE_FORMATS = frozenset({"JPEG", "MPO"})  # libjpeg can decode at 1/2, 1/4 or 1/8 scale

_EXIF_IFD = 0x8769
_TAG_ORIENTATION = ExifTags.Base.Orientation  # 0x0112
_TAG_DATETIME = ExifTags.Base.DateTime  # 0x0132, IFD0: last modification, often the capture time
_TAG_DATETIME_ORIGINAL = ExifTags.Base.DateTimeOriginal  # 0x9003, Exif IFD: when the shutter fired
_TAG_OFFSET_TIME_ORIGINAL = ExifTags.Base.OffsetTimeOriginal  # 0x9011, e.g. "+02:00"
_TAG_OFFSET_TIME = ExifTags.Base.OffsetTime  # 0x9010

# EXIF orientation -> the transposition a viewer applies (as ImageOps.exif_transpose does).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset(
    {Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90}
)

_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")

Source = str | os.PathLike | bytes | bytearray | memoryview


class ImageDecodeError(ValueError):
    """The one exception for any image that cannot be read: missing, unreadable, empty, corrupt, too big, unknown.

    ``str(err)`` is a complete sentence for the user ("photo.jpg: the file is truncated (...)"); ``path`` keeps the
    full path (or ``"<image bytes>"``) for logs and ``cause`` the reason alone. It pickles, so worker processes can
    send it back.
    """

    def __init__(self, path: str, cause: str) -> None:
        self.path = path
        self.cause = cause
        name = os.path.basename(path.rstrip("/\\")) or path
        super().__init__(f"{name}: {cause}")

    def __reduce__(self):  # the default would call cls(message) and lose the two-argument signature
        return (type(self), (self.path, self.cause))


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an image, read without decoding its pixels."""

    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    orientation: int  # EXIF orientation stored in the file, 1..8 (1 when absent)
    format: str  # Pillow's format name: "JPEG", "PNG", "HEIF", "AVIF", "MPO", ...
    captured_at: datetime | None  # EXIF DateTimeOriginal, else DateTime; tz-aware only when the file says so
    mode: str  # Pillow mode of the stored data: "RGB", "L", "P", "I;16", "CMYK", ...


def heif_available() -> bool:
    """True when HEIC/HEIF files can be decoded (pillow-heif is installed and importable)."""
    return "HEIF" in _pil_formats()


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


def load_rgb(source: Source, *, min_side: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode ``source`` (a path, or the encoded bytes of a file) to an upright ``HxWx3`` uint8 RGB array.

    ``min_side`` is a speed hint for callers that will shrink the image anyway: JPEGs are then decoded at the
    smallest DCT scale (1/2, 1/4 or 1/8) whose shorter side is still >= ``min_side``, which is 4-5x faster for
    phone photos; other formats decode at full size. The caller does the final resize.

    ``max_pixels`` (default: ``DINOSCOPE_MAX_MEGAPIXELS`` env var, else 200 MP) is checked against the header
    before decoding. Raises :class:`ImageDecodeError` for anything that cannot be decoded.
    """
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be a positive number of pixels, got {min_side}")
    if _raw.handles(source):  # camera RAW: LibRaw, the embedded preview when it is large enough (engine/raw.py)
        return _raw.load_rgb(source, min_side=min_side, max_pixels=max_pixels)
    square = (min_side, min_side) if min_side else None
    return _decode(source, max_pixels, lambda width, height: square, lambda image, full_size: _to_array(image))


def load_thumbnail(source: Source, size: int = 256) -> np.ndarray:
    """Decode ``source`` to an upright RGB array whose longest side is at most ``size`` (aspect kept, never enlarged).

    JPEGs are DCT-downscaled while decoding to about twice the final size, then resized with bicubic filtering,
    which is both fast and alias-free; this is what library thumbnails use.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if _raw.handles(source):
        image = Image.fromarray(_raw.load_rgb(source, min_side=size))
        image.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
        return _to_array(image)

    def draft_box(width: int, height: int) -> tuple[int, int]:
        # Keep at least 2x the final thumbnail in each stored dimension (Pillow's own reducing_gap=2 rule);
        # a uniform scale, so the EXIF orientation does not matter here.
        scale = 2.0 * size / max(width, height)
        return max(1, int(width * scale)), max(1, int(height * scale))

    def shrink(image: Image.Image, full_size: tuple[int, int]) -> np.ndarray:
        # The target comes from the full-resolution size: DCT scaling rounds up, which would skew the aspect by 1px.
        width, height = full_size
        scale = size / max(width, height)
        if scale < 1:
            target = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
        return _to_array(image)

    return _decode(source, None, draft_box, shrink)


def read_info(source: Source, *, max_pixels: int | None = None) -> ImageInfo:
    """Read size, orientation, format and capture time from the header only, without decoding pixels.

    A library scan calls this first; it applies the same ``max_pixels`` limit as :func:`load_rgb`, so a file
    accepted here will not be refused there as too large. Raises :class:`ImageDecodeError` on bad files.
    """
    if _raw.handles(source):
        return _raw.read_info(source, max_pixels=max_pixels)
    name, opened = _open(source)
    with opened as im:
        _check_pixels(name, im.size, max_pixels)
        try:
            exif = _header_exif(im)
            orientation = _orientation(im, exif)
            captured_at = _captured_at(exif)
        except Exception:  # a malformed EXIF block must not make an otherwise readable photo unreadable
            orientation, captured_at = 1, None
        width, height = im.size
        # Pillow already reports TIFF sizes rotated (it rotates while loading), and libheif rotates HEIF images
        # itself; for every other format the stored size is the pre-rotation one.
        if orientation in (5, 6, 7, 8) and im.format != "TIFF" and "original_orientation" not in im.info:
            width, height = height, width
        return ImageInfo(
            width=width,
            height=height,
            orientation=orientation,
            format=im.format or "unknown",
            captured_at=captured_at,
            mode=im.mode,
        )


# ---------------------------------------------------------------------------------------------------------------
# Opening and decoding


@functools.cache
def _pil_formats() -> tuple[str, ...]:
    """Import the Pillow plugins we allow and register pillow-heif; runs once, on the first open.

    This lazily registered opener is the module's only global state. Registering twice is harmless, so two threads
    racing through the first call need no lock.
    """
    from PIL import (  # noqa: F401  (imported for their side effect: registering the formats)
        AvifImagePlugin,
        BmpImagePlugin,
        GifImagePlugin,
        JpegImagePlugin,
        MpoImagePlugin,
        PngImagePlugin,
        TiffImagePlugin,
        WebPImagePlugin,
    )

    # Our header check (_check_pixels, DINOSCOPE_MAX_MEGAPIXELS) replaces Pillow's global guard: Pillow's hard
    # stop at 179 MP would otherwise refuse 200 MP phone photos before our own, configurable limit is consulted.
    Image.MAX_IMAGE_PIXELS = None

    if _HAS_HEIF_PACKAGE:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except Exception:  # a broken native build should cost HEIC support, not the whole app
            pass
    return tuple(fmt for fmt in _ALLOWED_FORMATS if fmt in Image.OPEN)


def _open(source: Source) -> tuple[str, Image.Image]:
    """Open lazily (header only) and return (name for messages, image); every failure is an ImageDecodeError."""
    formats = _pil_formats()
    if isinstance(source, bytes | bytearray | memoryview):
        name = "<image bytes>"
        if not len(source):
            raise ImageDecodeError(name, "the image data is empty (0 bytes)")
        fp: str | io.BytesIO = io.BytesIO(source)
    else:
        name = os.fspath(source)
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        try:
            st = os.stat(name)
        except OSError as exc:
            raise ImageDecodeError(name, _os_error_cause(exc)) from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageDecodeError(name, "this is a folder, not an image file")
        if st.st_size == 0:
            raise ImageDecodeError(name, "the file is empty (0 bytes)")
        fp = name

    try:
        return name, Image.open(fp, formats=formats)
    except UnidentifiedImageError:
        raise ImageDecodeError(name, _unidentified_cause(source)) from None
    except Exception as exc:
        raise ImageDecodeError(name, _decode_failure_cause(exc, source)) from None


def _decode(
    source: Source,
    max_pixels: int | None,
    draft_box: Callable[[int, int], tuple[int, int] | None],
    finish: Callable[[Image.Image, tuple[int, int]], np.ndarray],
) -> np.ndarray:
    """Open, check the size, optionally DCT-downscale, decode, rotate upright, convert to RGB, then ``finish``.

    ``finish(rgb_image, full_size)`` gets the upright (width, height) the image has at full resolution too, and runs
    while the file is still open: closing a Pillow image invalidates its pixel buffer.
    """
    name, opened = _open(source)
    with opened as im:
        _check_pixels(name, im.size, max_pixels)
        full_width, full_height = im.size
        try:
            if im.format in _DRAFTABLE_FORMATS:
                box = draft_box(*im.size)
                if box is not None:
                    # The box is symmetric or scales both sides alike, so it holds after a 90-degree rotation too.
                    im.draft("RGB", box)
            im.load()
            # TIFF (rotated by load(), tag removed) and HEIF (rotated by libheif, tag reset) report 1 here.
            transpose = _TRANSPOSE.get(_loaded_orientation(im))
            rgb = _to_rgb(im)
            if transpose is not None:
                rgb = rgb.transpose(transpose)
                if transpose in _SWAPS_AXES:
                    full_width, full_height = full_height, full_width
            return finish(rgb, (full_width, full_height))
        except Exception as exc:  # every decoder failure, whatever Pillow raises, becomes the one documented error
            raise ImageDecodeError(name, _decode_failure_cause(exc, source)) from None


def _to_array(image: Image.Image) -> np.ndarray:
    """A writable array that owns its memory (np.asarray would give a read-only view of a bytes object, which
    torch.from_numpy warns about and in-place drawing cannot use); the copy costs ~15 ms at 12 MP."""
    return np.array(image, dtype=np.uint8, order="C")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Alpha is composited on white; high bit depths are scaled, never clipped."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        im = Image.fromarray(_scale_to_uint8(np.asarray(im)))  # 2-D uint8 -> mode "L"
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode == "RGB":
        return im
    try:
        return im.convert("RGB")  # L, 1, P, CMYK (Adobe inversion handled by the JPEG plugin), YCbCr, HSV
    except ValueError as exc:
        raise ValueError(f"the colour mode {mode!r} cannot be converted to RGB") from exc


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map high-bit-depth grey to 0..255 by its nominal range (not by clipping, which would turn 16-bit white black).

    uint16 data is exact (round(v / 257)). For 32-bit int and float data the file does not say its range, so the
    smallest usual one that holds the data is assumed: [0, 1] (float only), [0, 255], [0, 65535], else [0, max].
    """
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    values = arr.astype(np.float64)
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 0.0
    if arr.dtype.kind == "f" and top <= 1.0:
        full_scale = 1.0
    elif top <= 255:
        full_scale = 255.0
    elif top <= 65535:
        full_scale = 65535.0
    else:
        full_scale = top
    scaled = np.nan_to_num(values, nan=0.0, posinf=full_scale, neginf=0.0) * (255.0 / full_scale)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Size limits


def _max_pixels(max_pixels: int | None) -> int:
    if max_pixels is not None:
        return int(max_pixels)
    try:
        megapixels = float(os.environ.get(_MAX_MEGAPIXELS_ENV, DEFAULT_MAX_MEGAPIXELS))
    except ValueError:
        megapixels = DEFAULT_MAX_MEGAPIXELS
    return int(megapixels * 1_000_000)


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int | None) -> None:
    """Refuse an image whose header size is over the limit, or whose shape is a strip no photo has (scaled to the
    model's input it would need gigabytes), before a single pixel buffer is allocated."""
    limit = _max_pixels(max_pixels)
    pixels = size[0] * size[1]
    short, long = min(size), max(size)
    if short < 1 or long / short > MAX_ASPECT_RATIO:
        raise ImageDecodeError(
            name,
            f"its {size[0]} x {size[1]} pixels are not a photo's shape (sides over {MAX_ASPECT_RATIO:.0f} to 1); "
            "scaling it for the model would take gigabytes of memory",
        )
    if limit > 0 and pixels > limit:
        raise ImageDecodeError(
            name,
            f"{pixels / 1e6:.1f} megapixels exceeds the {_fmt_mp(limit)}-megapixel limit "
            f"(set {_MAX_MEGAPIXELS_ENV} to raise it)",
        )


def _fmt_mp(pixels: float) -> str:
    megapixels = pixels / 1e6
    return f"{megapixels:.0f}" if abs(megapixels - round(megapixels)) < 0.05 else f"{megapixels:.1f}"


# ---------------------------------------------------------------------------------------------------------------
# Error messages


def _os_error_cause(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "the file does not exist"
    if isinstance(exc, PermissionError):
        return "permission denied (the file cannot be read)"
    if isinstance(exc, IsADirectoryError):
        return "this is a folder, not an image file"
    return f"the file cannot be read ({exc.strerror or exc})"


def _decode_failure_cause(exc: BaseException, source: Source) -> str:
    """Turn whatever Pillow or a codec raised into a sentence for the user."""
    text = str(exc).strip()
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        # Pillow's own guard (2 x Image.MAX_IMAGE_PIXELS, 179 MP by default, is a hard error; above 89 MP it only
        # warns, unless warnings are turned into errors). Pillow fires it while reading the header, before our check.
        match = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", text)
        if match:
            pixels, limit = int(match[1]), int(match[2])
            return (
                f"{pixels / 1e6:.1f} megapixels exceeds Pillow's {_fmt_mp(limit)}-megapixel decompression-bomb "
                "limit (PIL.Image.MAX_IMAGE_PIXELS)"
            )
        return f"the image is too large to decode safely (more megapixels than Pillow allows: {text})"
    if isinstance(exc, MemoryError):
        return "there is not enough memory to decode it"
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return _os_error_cause(exc)
    lowered = text.lower()
    if (
        isinstance(exc, EOFError)
        or any(word in lowered for word in ("truncated", "premature end", "end of file"))
        or _container_truncated(*_peek(source))
    ):
        return _TRUNCATED
    if isinstance(exc, ValueError) and "colour mode" in text:
        return text
    return f"the image data is corrupt or uses an unsupported feature ({text or type(exc).__name__})"


_TRUNCATED = "the file is truncated (an incomplete copy or download?)"


def _peek(source: Source) -> tuple[bytes, int]:
    """The first 32 bytes and the total length, for diagnosing a failure (never on the success path)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source[:32]), len(source)
    try:
        with open(source, "rb") as f:
            return f.read(32), os.fstat(f.fileno()).st_size
    except OSError:
        return b"", 0


def _container_truncated(head: bytes, length: int) -> bool:
    """RIFF (WebP) declares its total size up front; libwebp only says "could not create decoder object"."""
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP" and int.from_bytes(head[4:8], "little") + 8 > length


# Signatures of the formats we read, to tell "damaged" from "not an image" when Pillow cannot identify the data.
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"II+\x00": "TIFF",
    b"MM\x00+": "TIFF",
    b"BM": "BMP",
}


def _unidentified_cause(source: Source) -> str:
    """Why Pillow did not recognise the data: damaged, a refused format, HEIC without pillow-heif, not an image."""
    head, length = _peek(source)
    is_heif = head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS
    is_avif = head[4:12] in (b"ftypavif", b"ftypavis")
    if is_heif and "HEIF" not in _pil_formats():
        return "HEIC/HEIF photos need the optional pillow-heif package (pip install pillow-heif)"
    if is_avif and "AVIF" not in _pil_formats():
        return "AVIF images need Pillow 11.2 or newer built with AVIF support"
    if _container_truncated(head, length):
        return _TRUNCATED
    known = "HEIF" if is_heif else "AVIF" if is_avif else "WEBP" if head[8:12] == b"WEBP" else None
    known = known or next((fmt for sig, fmt in _SIGNATURES.items() if head.startswith(sig)), None)
    if known:
        return f"the {known} data is damaged or truncated (its header cannot be read)"
    try:  # identify the format (header only, never decoded) just to name it in the message
        fp = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
        with Image.open(fp) as other:
            fmt = other.format
    except Exception:
        fmt = None
    if fmt:
        return f"{fmt} images are not supported (supported: JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC, AVIF)"
    return "not an image, or not in a format Dinoscope can read"


# ---------------------------------------------------------------------------------------------------------------
# EXIF


def _header_exif(im: Image.Image) -> Image.Exif:
    """EXIF from the header. PngImageFile.getexif() would decode all pixels to look for a trailing eXIf chunk."""
    if im.format == "PNG" and "exif" not in im.info:
        return Image.Image.getexif(im)  # still sees XMP orientation from iTXt chunks before the pixel data
    return im.getexif()


def _loaded_orientation(im: Image.Image) -> int:
    """Orientation still to apply after load(); a damaged EXIF block means "as stored", not an unreadable photo."""
    try:
        value = int(im.getexif().get(_TAG_ORIENTATION, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _orientation(im: Image.Image, exif: Image.Exif) -> int:
    if "original_orientation" in im.info:  # pillow-heif: libheif applied it and reset the EXIF tag to 1
        value = im.info["original_orientation"]
    else:
        value = exif.get(_TAG_ORIENTATION, 1)
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _captured_at(exif: Image.Exif) -> datetime | None:
    sub = exif.get_ifd(_EXIF_IFD)
    for stamp, offset in (
        (sub.get(_TAG_DATETIME_ORIGINAL), sub.get(_TAG_OFFSET_TIME_ORIGINAL)),
        (exif.get(_TAG_DATETIME), sub.get(_TAG_OFFSET_TIME)),
    ):
        parsed = _parse_exif_datetime(stamp, offset)
        if parsed is not None:
            return parsed
    return None


def _parse_exif_datetime(stamp: object, offset: object) -> datetime | None:
    """Parse "YYYY:MM:DD HH:MM:SS" (cameras also write "YYYY-MM-DD" and trailing NULs); blanks/zeros -> None."""
    if isinstance(stamp, bytes):
        stamp = stamp.decode("ascii", "replace")
    if not isinstance(stamp, str):
        return None
    stamp = stamp.strip("\x00 ").replace("-", ":")
    try:
        value = datetime.strptime(stamp[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    if isinstance(offset, bytes):
        offset = offset.decode("ascii", "replace")
    if isinstance(offset, str):
        match = re.fullmatch(r"([+-])(\d\d):(\d\d)", offset.strip("\x00 "))
        if match:
            delta = timedelta(hours=int(match[2]), minutes=int(match[3]))
            value = value.replace(tzinfo=timezone(delta if match[1] == "+" else -delta))
    return value
