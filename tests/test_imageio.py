"""engine.imageio on real photos (scikit-image's samples), re-encoded by the tests into every supported format."""

from __future__ import annotations

import os
import pickle
import resource
import struct
import subprocess
import sys
import time
import warnings
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from engine.imageio import (
    SUPPORTED_EXTENSIONS,
    ImageDecodeError,
    ImageInfo,
    heif_available,
    load_rgb,
    load_thumbnail,
    read_info,
)

HAS_AVIF = features.check("avif")


# ---------------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def chelsea(skimage_data_dir: Path) -> np.ndarray:
    """A real 300x451 RGB photo (a cat), small enough to encode in every format quickly."""
    with Image.open(skimage_data_dir / "chelsea.png") as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def big_jpeg(skimage_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4000x3000 q90 JPEG (the astronaut, upscaled), like a 12 MP phone photo."""
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    with Image.open(skimage_data_dir / "astronaut.png") as im:
        astronaut = im.convert("RGB")
    astronaut.resize((4000, 3000), Image.Resampling.BILINEAR).save(path, quality=90)
    return path


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _check_rgb_array(arr: np.ndarray) -> None:
    assert arr.dtype == np.uint8
    assert arr.ndim == 3 and arr.shape[2] == 3
    assert arr.flags.c_contiguous
    assert arr.flags.writeable  # callers draw on it or hand it to torch.from_numpy


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(rgb * a + 255.0 * (1.0 - a)).astype(np.uint8)


def _write_png_bomb(path: Path, width: int, height: int) -> None:
    """A valid all-black 1-bit PNG of width x height, written row by row so the test itself never holds it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _marker_photo(chelsea: np.ndarray) -> np.ndarray:
    """A darkened real photo (120 wide, 80 high as stored) with a pure red 30x30 block in its stored top-left."""
    img = np.asarray(Image.fromarray(chelsea).resize((120, 80), Image.Resampling.BILINEAR)) // 2
    img = img.copy()
    img[:30, :30] = (255, 0, 0)
    return img


def _red_corners(arr: np.ndarray) -> set[str]:
    """Which display corners hold the red marker."""
    h, w = arr.shape[:2]
    corners = {
        "top-left": arr[2:12, 2:12],
        "top-right": arr[2:12, w - 12 : w - 2],
        "bottom-left": arr[h - 12 : h - 2, 2:12],
        "bottom-right": arr[h - 12 : h - 2, w - 12 : w - 2],
    }
    red = set()
    for name, patch in corners.items():
        r, g, b = patch.reshape(-1, 3).mean(axis=0)
        if r > 180 and g < 80 and b < 80:
            red.add(name)
    return red


# ---------------------------------------------------------------------------------------------------------------
# Every format decodes to the same upright RGB uint8 array


def _encode(kind: str, rgb: np.ndarray, d: Path) -> tuple[Path, np.ndarray, float]:
    """Write ``rgb`` as ``kind``; return the file, the RGB a correct decoder must give, and a mean-abs tolerance."""
    img = Image.fromarray(rgb)
    h, w = rgb.shape[:2]
    if kind == "jpeg_q50":
        img.save(p := d / "q50.jpg", quality=50)
        return p, rgb, 8.0
    if kind == "jpeg_q95":
        img.save(p := d / "q95.JPG", quality=95)  # upper-case suffix on purpose
        return p, rgb, 3.0
    if kind == "jpeg_cmyk":
        img.convert("CMYK").save(p := d / "cmyk.jpg", quality=95)
        return p, rgb, 3.0
    if kind == "png_rgb":
        img.save(p := d / "rgb.png")
        return p, rgb, 0.0
    if kind == "png_rgba":
        alpha = np.full((h, w), 255, np.uint8)
        alpha[:, : w // 3] = 0  # fully transparent: white
        alpha[:, w // 3 : 2 * w // 3] = 128  # half transparent: blended with white
        Image.fromarray(np.dstack([rgb, alpha])).save(p := d / "rgba.png")
        return p, _on_white(rgb, alpha), 0.51
    if kind == "png_la":
        grey = np.asarray(img.convert("L"))
        alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
        Image.fromarray(np.dstack([grey, alpha])).save(p := d / "la.png")
        return p, _on_white(np.dstack([grey] * 3), alpha), 0.51
    if kind == "png_grey":
        grey = img.convert("L")
        grey.save(p := d / "grey.png")
        return p, np.dstack([np.asarray(grey)] * 3), 0.0
    if kind == "png_grey16":
        # Spread the 8-bit grey photo over the full 16-bit range (v * 257): a clipping decoder would return white.
        grey16 = np.asarray(img.convert("L")).astype(np.uint16) * 257
        Image.fromarray(grey16).save(p := d / "grey16.png")
        with Image.open(p) as check:
            assert check.mode.startswith("I")
        return p, np.dstack([np.asarray(img.convert("L"))] * 3), 0.0
    if kind == "tiff_grey16":
        grey16 = np.asarray(img.convert("L")).astype(np.uint16) * 257
        Image.fromarray(grey16).save(p := d / "grey16.tif")
        return p, np.dstack([np.asarray(img.convert("L"))] * 3), 0.0
    if kind == "tiff_float":
        grey = np.asarray(img.convert("L"))
        Image.fromarray(grey.astype(np.float32) / 255.0).save(p := d / "float.tiff")
        return p, np.dstack([grey] * 3), 0.0
    if kind == "png_rgb16":
        import cv2

        # not a plain byte copy (v * 257): the low byte matters for rounding
        rgb16 = np.minimum(rgb.astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)
        p = d / "rgb16.png"
        assert cv2.imwrite(str(p), np.ascontiguousarray(rgb16[..., ::-1]))
        return p, np.rint(rgb16 / 257.0).astype(np.uint8), 1.0
    if kind == "png_palette_transparent":
        pal = img.quantize(colors=200)
        expected = np.asarray(pal.convert("RGB")).copy()
        idx = np.asarray(pal).copy()
        idx[:40, :60] = 255  # an index the quantiser left unused, declared transparent
        out = Image.frombytes("P", pal.size, idx.tobytes())
        palette = pal.getpalette()
        out.putpalette(palette + [0, 0, 0] * (256 - len(palette) // 3))  # index 255 must exist to be transparent
        out.save(p := d / "palette.png", transparency=255)
        expected[:40, :60] = 255
        return p, expected, 0.0
    if kind == "webp":
        img.save(p := d / "photo.webp", quality=90)
        return p, rgb, 5.0
    if kind == "tiff":
        img.save(p := d / "photo.tif", compression="tiff_lzw")
        return p, rgb, 0.0
    if kind == "bmp":
        img.save(p := d / "photo.bmp")
        return p, rgb, 0.0
    if kind == "gif_animated":
        first = img.quantize(colors=255)
        second = Image.new("RGB", img.size, (0, 0, 255)).quantize(colors=2)
        first.save(p := d / "anim.gif", save_all=True, append_images=[second], duration=100, loop=0)
        with Image.open(p) as check:
            assert check.n_frames == 2
        return p, np.asarray(first.convert("RGB")), 0.0
    if kind == "heic":
        if not heif_available():
            pytest.fail("pillow-heif is pinned in requirements.txt but does not load: a broken install")
        img.save(p := d / "photo.heic", quality=90)
        return p, rgb, 6.0
    if kind == "avif":
        if not HAS_AVIF:
            pytest.fail("the pinned Pillow wheel has an AVIF codec; without it the install is broken")
        img.save(p := d / "photo.avif", quality=90)
        return p, rgb, 6.0
    raise AssertionError(kind)


FORMAT_CASES = [
    "jpeg_q50",
    "jpeg_q95",
    "jpeg_cmyk",
    "png_rgb",
    "png_rgba",
    "png_la",
    "png_grey",
    "png_grey16",
    "png_rgb16",
    "png_palette_transparent",
    "tiff_grey16",
    "tiff_float",
    "webp",
    "tiff",
    "bmp",
    "gif_animated",
    "heic",
    "avif",
]


@pytest.mark.parametrize("kind", FORMAT_CASES)
def test_every_format_decodes_to_rgb_uint8(kind: str, chelsea: np.ndarray, tmp_path: Path) -> None:
    path, expected, tolerance = _encode(kind, chelsea, tmp_path)
    arr = load_rgb(path)
    _check_rgb_array(arr)
    assert arr.shape == expected.shape
    assert _mean_abs_diff(arr, expected) <= tolerance
    # bytes (drag-and-drop, clipboard) decode exactly like the file
    np.testing.assert_array_equal(load_rgb(path.read_bytes()), arr)
    # read_info agrees with the decoded size, from the header alone
    info = read_info(path)
    assert (info.height, info.width) == arr.shape[:2]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.array([0, 257, 32896, 65535, 65406, 65407], np.uint16), (4, 1))
    Image.fromarray(ramp).save(path := tmp_path / "ramp16.png")
    arr = load_rgb(path)
    np.testing.assert_array_equal(arr[0, :, 0], [0, 1, 128, 255, 254, 255])  # round(v / 257)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_gif_returns_first_frame(chelsea: np.ndarray, tmp_path: Path) -> None:
    path, _, _ = _encode("gif_animated", chelsea, tmp_path)
    arr = load_rgb(path)
    blue = np.array([0, 0, 255])
    assert (np.abs(arr.astype(int) - blue).sum(axis=2) < 10).mean() < 0.01  # not the solid blue second frame


def test_supported_extensions() -> None:
    base = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
    assert base <= SUPPORTED_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in SUPPORTED_EXTENSIONS)
    assert ({".heic", ".heif"} <= SUPPORTED_EXTENSIONS) == heif_available()
    if HAS_AVIF:
        assert ".avif" in SUPPORTED_EXTENSIONS


# ---------------------------------------------------------------------------------------------------------------
# EXIF orientation and metadata


# Where a viewer shows the stored top-left corner: 3 = rotate 180, 6 = rotate 90 clockwise, 8 = 90 counter-clockwise.
ORIENTATIONS = {1: "top-left", 3: "bottom-right", 6: "top-right", 8: "bottom-left"}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_jpeg_exif_orientation(orientation: int, chelsea: np.ndarray, tmp_path: Path) -> None:
    stored = _marker_photo(chelsea)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path := tmp_path / f"o{orientation}.jpg", quality=95, exif=exif)

    arr = load_rgb(path)
    expected_shape = (120, 80, 3) if orientation in (6, 8) else (80, 120, 3)
    assert arr.shape == expected_shape
    assert _red_corners(arr) == {ORIENTATIONS[orientation]}

    info = read_info(path)
    assert info.orientation == orientation
    assert (info.height, info.width) == expected_shape[:2]
    assert info.format == "JPEG"

    small = load_rgb(path, min_side=40)  # the draft path (decoded at 1/2 scale here) must rotate too
    assert small.shape == (expected_shape[0] // 2, expected_shape[1] // 2, 3)
    assert _red_corners(small) == {ORIENTATIONS[orientation]}


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "HEIF", "AVIF"])
def test_orientation_6_in_other_formats(fmt: str, chelsea: np.ndarray, tmp_path: Path) -> None:
    """TIFF and HEIF come out of their decoders already rotated; they must not be rotated twice."""
    if fmt == "HEIF" and not heif_available():
        pytest.fail("pillow-heif is pinned in requirements.txt but does not load: a broken install")
    if fmt == "AVIF" and not HAS_AVIF:
        pytest.fail("the pinned Pillow wheel has an AVIF codec; without it the install is broken")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"o6.{fmt.lower()}"
    extra = {"WEBP": {"lossless": True}, "HEIF": {"quality": 95}, "AVIF": {"quality": 95}}.get(fmt, {})
    Image.fromarray(_marker_photo(chelsea)).save(path, format=fmt, exif=exif.tobytes(), **extra)

    arr = load_rgb(path)
    assert arr.shape == (120, 80, 3)
    assert _red_corners(arr) == {"top-right"}
    info = read_info(path)
    assert (info.width, info.height) == (80, 120)
    assert info.orientation == 6


def test_read_info_capture_time(chelsea: np.ndarray, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0132] = "2020:01:01 00:00:00"  # DateTime (IFD0): only a fallback
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 15:30:09"  # DateTimeOriginal (Exif IFD)
    Image.fromarray(chelsea).save(path := tmp_path / "dated.jpg", exif=exif)
    info = read_info(path)
    assert isinstance(info, ImageInfo)
    assert info.captured_at == datetime(2021, 7, 4, 15, 30, 9)
    assert (info.width, info.height, info.orientation, info.mode) == (451, 300, 1, "RGB")

    exif.get_ifd(0x8769)[0x9011] = "+02:00"  # OffsetTimeOriginal makes it an absolute time
    Image.fromarray(chelsea).save(path, exif=exif)
    assert read_info(path).captured_at == datetime(2021, 7, 4, 15, 30, 9, tzinfo=timezone(timedelta(hours=2)))

    only_datetime = Image.Exif()
    only_datetime[0x0132] = "2019:12:24 18:00:00"
    Image.fromarray(chelsea).save(path, exif=only_datetime)
    assert read_info(path).captured_at == datetime(2019, 12, 24, 18, 0, 0)

    blank = Image.Exif()
    blank.get_ifd(0x8769)[0x9003] = "0000:00:00 00:00:00"  # what some cameras write when the clock is unset
    Image.fromarray(chelsea).save(path, exif=blank)
    assert read_info(path).captured_at is None

    Image.fromarray(chelsea).save(png := tmp_path / "plain.png")
    info = read_info(png)
    assert (info.format, info.captured_at, info.orientation) == ("PNG", None, 1)


def test_read_info_reads_only_the_header(chelsea: np.ndarray, tmp_path: Path) -> None:
    """A truncated JPEG still has a complete header: read_info succeeds, only load_rgb notices the missing data."""
    Image.fromarray(chelsea).save(full := tmp_path / "full.jpg", quality=95)
    data = full.read_bytes()
    (half := tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    info = read_info(half)
    assert (info.width, info.height, info.format) == (451, 300, "JPEG")
    with pytest.raises(ImageDecodeError):
        load_rgb(half)


# ---------------------------------------------------------------------------------------------------------------
# Fast paths


def test_min_side_uses_dct_scaling(big_jpeg: Path) -> None:
    full = load_rgb(big_jpeg)
    assert full.shape == (3000, 4000, 3)
    for min_side, expected in [(224, (375, 500)), (448, (750, 1000)), (1000, (1500, 2000)), (5000, (3000, 4000))]:
        arr = load_rgb(big_jpeg, min_side=min_side)
        _check_rgb_array(arr)
        assert arr.shape[:2] == expected
        assert min(arr.shape[:2]) >= min(min_side, 3000)
    # the reduced decode is the same picture
    small = load_rgb(big_jpeg, min_side=224)
    reference = np.asarray(Image.fromarray(full).resize((500, 375), Image.Resampling.BOX))
    assert _mean_abs_diff(small, reference) < 4.0


def test_min_side_on_png_decodes_fully(chelsea: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(chelsea).save(path := tmp_path / "c.png")
    assert load_rgb(path, min_side=32).shape == (300, 451, 3)
    with pytest.raises(ValueError):
        load_rgb(path, min_side=0)


def test_load_thumbnail(big_jpeg: Path, chelsea: np.ndarray, tmp_path: Path) -> None:
    thumb = load_thumbnail(big_jpeg)
    _check_rgb_array(thumb)
    assert thumb.shape == (192, 256, 3)
    assert load_thumbnail(big_jpeg, size=100).shape == (75, 100, 3)

    Image.fromarray(chelsea).save(path := tmp_path / "c.webp", lossless=True)
    thumb = load_thumbnail(path, size=128)
    assert max(thumb.shape[:2]) == 128
    assert abs(thumb.shape[0] / thumb.shape[1] - 300 / 451) < 0.01
    assert load_thumbnail(path, size=1000).shape == (300, 451, 3)  # never enlarged


# ---------------------------------------------------------------------------------------------------------------
# Inputs: bytes, odd paths


def test_bytes_input(chelsea: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(chelsea).save(path := tmp_path / "c.jpg")
    data = path.read_bytes()
    expected = load_rgb(path)
    for payload in (data, bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(load_rgb(payload), expected)
    assert read_info(data).width == 451
    assert load_thumbnail(data, size=64).shape == (43, 64, 3)


def test_unicode_path_with_spaces(chelsea: np.ndarray, tmp_path: Path) -> None:
    folder = tmp_path / "Mes photos d'été 2024"
    folder.mkdir()
    path = folder / "Фото кота ✓ 照片.jpeg"
    Image.fromarray(chelsea).save(path, format="JPEG")
    assert load_rgb(path).shape == (300, 451, 3)
    assert load_rgb(str(path)).shape == (300, 451, 3)
    assert read_info(path).width == 451


# ---------------------------------------------------------------------------------------------------------------
# Failures: always ImageDecodeError, naming the file and the cause


def _decode_error(source, **kwargs) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as caught:
        load_rgb(source, **kwargs)
    return caught.value


def test_zero_byte_file(tmp_path: Path) -> None:
    (path := tmp_path / "empty.jpg").write_bytes(b"")
    err = _decode_error(path)
    assert str(err).startswith("empty.jpg: ") and "empty" in err.cause
    assert isinstance(err, ValueError) and err.path == str(path)
    with pytest.raises(ImageDecodeError, match="empty"):
        load_rgb(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        read_info(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP", "HEIF", "AVIF"])
def test_truncated_file(fmt: str, chelsea: np.ndarray, tmp_path: Path) -> None:
    if fmt == "HEIF" and not heif_available():
        pytest.fail("pillow-heif is pinned in requirements.txt but does not load: a broken install")
    if fmt == "AVIF" and not HAS_AVIF:
        pytest.fail("the pinned Pillow wheel has an AVIF codec; without it the install is broken")
    Image.fromarray(chelsea).save(full := tmp_path / "full", format=fmt)
    data = full.read_bytes()
    (path := tmp_path / f"photo.{fmt.lower()}").write_bytes(data[: len(data) // 2])  # an interrupted copy
    err = _decode_error(path)
    assert str(err).startswith(f"photo.{fmt.lower()}: ")
    assert "truncated" in err.cause
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_rgb(data[: len(data) // 2])


def test_text_file_named_jpg(tmp_path: Path) -> None:
    (path := tmp_path / "notes.jpg").write_text("these are my holiday notes, not a photo\n" * 20)
    err = _decode_error(path)
    assert str(err) == "notes.jpg: not an image, or not in a format Dinoscope can read"
    with pytest.raises(ImageDecodeError, match="not an image"):
        read_info(path)
    with pytest.raises(ImageDecodeError, match=r"<image bytes>: not an image"):
        load_rgb(b"\x00\x01garbage" * 100)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    err = _decode_error(tmp_path / "gone.png")
    assert str(err) == "gone.png: the file does not exist"
    with pytest.raises(ImageDecodeError, match="does not exist"):
        read_info(tmp_path / "gone.png")
    with pytest.raises(ImageDecodeError, match="folder"):
        load_rgb(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 000 does not stop root from reading")
def test_permission_denied(chelsea: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(chelsea).save(path := tmp_path / "locked.jpg")
    path.chmod(0)
    try:
        err = _decode_error(path)
        assert "permission denied" in str(err)
    finally:
        path.chmod(0o644)


def test_unsupported_format_is_named(chelsea: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(chelsea).save(path := tmp_path / "photo.ppm")
    err = _decode_error(path)
    assert "PPM images are not supported" in str(err)


def test_decompression_bomb_refused_from_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    _write_png_bomb(path, 20000, 20000)  # 400 MP: 400 MB as 8-bit grey, 1.2 GB as RGB
    assert path.stat().st_size < 100_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    err = _decode_error(path)
    assert time.perf_counter() - start < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200_000
    assert str(err).startswith("bomb.png: 400.0 megapixels exceeds")
    with pytest.raises(ImageDecodeError, match="megapixels"):
        read_info(path)
    with pytest.raises(ImageDecodeError, match="megapixels"):
        load_thumbnail(path.read_bytes())


def test_own_megapixel_limit(chelsea: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(chelsea).save(path := tmp_path / "c.png")  # 0.135 MP
    err = _decode_error(path, max_pixels=100_000)
    assert str(err) == (
        "c.png: 0.1 megapixels exceeds the 0.1-megapixel limit (set DINOSCOPE_MAX_MEGAPIXELS to raise it)"
    )
    monkeypatch.setenv("DINOSCOPE_MAX_MEGAPIXELS", "0.05")
    with pytest.raises(ImageDecodeError, match="megapixel limit"):
        load_rgb(path)
    with pytest.raises(ImageDecodeError, match="megapixel limit"):
        read_info(path)
    assert load_rgb(path, max_pixels=200_000).shape == (300, 451, 3)  # an explicit limit wins over the env var
    monkeypatch.setenv("DINOSCOPE_MAX_MEGAPIXELS", "1")
    assert load_rgb(path).shape == (300, 451, 3)


def test_our_limit_is_the_only_one(tmp_path: Path) -> None:
    """190 MP is over Pillow's own 179 MP hard stop but within our 200 MP default: the header must read, with no
    DecompressionBomb warning, and lowering DINOSCOPE_MAX_MEGAPIXELS still refuses it."""
    _write_png_bomb(path := tmp_path / "big.png", 19000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert read_info(path).width == 19000
    with pytest.raises(ImageDecodeError, match=r"190\.0 megapixels"):
        load_rgb(path, max_pixels=100_000_000)


def test_decode_error_pickles() -> None:
    err = ImageDecodeError("/photos/a b.jpg", "the file is truncated (an incomplete copy or download?)")
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err) == "a b.jpg: the file is truncated (an incomplete copy or download?)"
    assert (clone.path, clone.cause) == (err.path, err.cause)


def test_corrupt_exif_does_not_make_the_photo_unreadable(tmp_path: Path) -> None:
    broken = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\xff\xff"  # IFD claims 5 entries, has none
    Image.new("RGB", (40, 30), (10, 200, 30)).save(path := tmp_path / "broken_exif.jpg", exif=broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow warns "Corrupt EXIF data" (while opening, so -W error
        assert load_rgb(path).shape == (30, 40, 3)  # would make it an ImageDecodeError: an acceptable outcome too)
        info = read_info(path)
    assert (info.width, info.height, info.orientation, info.captured_at) == (40, 30, 1, None)


def test_import_is_cheap_and_heif_registers_lazily() -> None:
    code = (
        "import sys, engine.imageio as m; "
        "print('pillow_heif' in sys.modules, 'PIL.WebPImagePlugin' in sys.modules, end=' '); "
        "m.heif_available(); print('PIL.WebPImagePlugin' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]
