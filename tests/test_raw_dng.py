"""Writes real DNG files from real photos for the RAW tests (and checks the writer itself): a Bayer mosaic through
pidng, optionally followed by a second directory holding a JPEG preview, as cameras and Adobe's converter do.

pidng's own SubIFD tag is broken in 4.0.9 (it fails to encode), so the preview sits in IFD1 of the chain instead of
a SubIFD; LibRaw reads previews from either place.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample"
WHEN = "2024:05:06 07:08:09"


def sample_rgb(name: str = "animals/ladybird.jpg", longest: int = 640) -> np.ndarray:
    """A real photo from the bundled sample library, shrunk, with even sides (a Bayer cell is 2 x 2)."""
    im = Image.open(SAMPLE / name).convert("RGB")
    im.thumbnail((longest, longest))
    rgb = np.asarray(im)
    return rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]


def bayer_mosaic(rgb: np.ndarray) -> np.ndarray:
    """RGGB mosaic, 12-bit values in uint16: what a sensor would have recorded of this scene."""
    rgb = (rgb.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    m = np.empty(rgb.shape[:2], np.uint16)
    m[0::2, 0::2] = rgb[0::2, 0::2, 0]
    m[0::2, 1::2] = rgb[0::2, 1::2, 1]
    m[1::2, 0::2] = rgb[1::2, 0::2, 1]
    m[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return m


def _raw_tags(height: int, width: int, orientation: int, when: str | None):
    from pidng.core import DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation

    t = DNGTags()
    t.set(Tag.ImageWidth, width)
    t.set(Tag.ImageLength, height)
    t.set(Tag.TileWidth, width)
    t.set(Tag.TileLength, height)
    t.set(Tag.Orientation, orientation)
    t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    t.set(Tag.SamplesPerPixel, 1)
    t.set(Tag.BitsPerSample, 16)
    t.set(Tag.CFARepeatPatternDim, [2, 2])
    t.set(Tag.CFAPattern, CFAPattern.RGGB)
    t.set(Tag.BlackLevel, 0)
    t.set(Tag.WhiteLevel, 4095)
    identity = [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]
    t.set(Tag.ColorMatrix1, identity)
    t.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
    t.set(Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]])
    t.set(Tag.Make, "Dinoscope")
    t.set(Tag.Model, "Test Camera")
    t.set(Tag.UniqueCameraModel, "Dinoscope Test Camera")
    if when:
        t.set(Tag.DateTime, when)
    t.set(Tag.DNGVersion, DNGVersion.V1_4)
    t.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    return t


def dng_bytes(rgb: np.ndarray, *, preview_longest: int | None = None, orientation: int = 1,
              when: str | None = WHEN) -> bytes:
    """A DNG of `rgb` (stored as the sensor saw it: `orientation` says how to turn it upright). With
    `preview_longest`, a JPEG preview of that size (stored unrotated, like the mosaic) follows the raw directory."""
    from pidng.core import RAW2DNG, Tag
    from pidng.dng import DNG, dngIFD, dngTag

    mosaic = bayer_mosaic(rgb)
    tags = _raw_tags(*mosaic.shape, orientation, when)
    if preview_longest is None:
        writer = RAW2DNG()
        writer.options(tags, path="", compress=False)
        return bytes(writer.convert(mosaic))
    im = Image.fromarray(rgb)
    im.thumbnail((preview_longest, preview_longest))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    raw_ifd, preview_ifd = dngIFD(), dngIFD()
    raw_ifd.tags += [dngTag(Tag.NewSubfileType, [0]), dngTag(Tag.Compression, [1]), *tags.list()]
    tile_offsets = dngTag(Tag.TileOffsets, [0])
    raw_ifd.tags += [tile_offsets, dngTag(Tag.TileByteCounts, [mosaic.nbytes])]
    strip_offsets = dngTag(Tag.StripOffsets, [0])
    preview_ifd.tags += [
        dngTag(Tag.NewSubfileType, [1]), dngTag(Tag.ImageWidth, [im.width]), dngTag(Tag.ImageLength, [im.height]),
        dngTag(Tag.BitsPerSample, [8, 8, 8]), dngTag(Tag.Compression, [7]),
        dngTag(Tag.PhotometricInterpretation, [6]), dngTag(Tag.SamplesPerPixel, [3]),
        dngTag(Tag.RowsPerStrip, [im.height]), dngTag(Tag.StripByteCounts, [len(jpeg)]), strip_offsets,
    ]
    doc = DNG()
    doc.IFDs += [raw_ifd, preview_ifd]
    doc.ImageDataStrips += [mosaic.tobytes(), jpeg]
    out = bytearray(doc.dataLen())  # lays out the strips, so their offsets are known from here on
    tile_offsets.setValue([doc.StripOffsets[0]])
    strip_offsets.setValue([doc.StripOffsets[1]])
    doc.setBuffer(out)
    raw_ifd.NextIFDOffset = preview_ifd.offset
    doc.write()
    return bytes(out)


def write_dng(path: Path, rgb: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dng_bytes(rgb, **kw))
    return path


def test_the_writer_makes_dngs_that_libraw_reads(tmp_path: Path) -> None:
    import rawpy

    rgb = sample_rgb()
    with rawpy.imread(str(write_dng(tmp_path / "p.dng", rgb, preview_longest=300, orientation=6))) as raw:
        assert (raw.sizes.raw_height, raw.sizes.raw_width) == rgb.shape[:2]
        assert raw.sizes.flip == 6
        assert raw.extract_thumb().format == rawpy.ThumbFormat.JPEG
    with rawpy.imread(str(write_dng(tmp_path / "n.dng", rgb))) as raw, pytest.raises(rawpy.LibRawNoThumbnailError):
        raw.extract_thumb()
