"""The bundled sample library (assets/sample): listed, licensed, decodable, small, and EXIF-correct."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.imageio import load_rgb, read_info

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample"
LICENSES = SAMPLE / "LICENSES.md"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
MAX_SIDE = 1600
MAX_TOTAL_BYTES = 8_000_000

_ROW = re.compile(r"^\| `([^`]+)` \|(.*)\|\s*$")


def _listed_rows() -> dict[str, list[str]]:
    """file -> [source, credit, licence, modifications] for every table row of LICENSES.md."""
    rows: dict[str, list[str]] = {}
    for line in LICENSES.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match and "/" in match.group(1):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", match.group(2))]
            assert match.group(1) not in rows, f"{match.group(1)} is listed twice"
            rows[match.group(1)] = cells
    return rows


def _images_on_disk() -> set[str]:
    return {
        p.relative_to(SAMPLE).as_posix()
        for p in SAMPLE.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


LISTED = _listed_rows()
ON_DISK = sorted(_images_on_disk())


def test_every_listed_file_exists_and_every_image_is_listed():
    assert set(LISTED) == set(ON_DISK), {
        "listed but missing": sorted(set(LISTED) - set(ON_DISK)),
        "on disk but not listed": sorted(set(ON_DISK) - set(LISTED)),
    }


def test_every_row_names_source_credit_licence_and_modifications():
    for name, cells in LISTED.items():
        assert len(cells) == 4, f"{name}: expected 5 columns, got {len(cells) + 1}"
        source, credit, licence, modifications = cells
        assert source and credit and licence and modifications, f"{name}: empty cell in {cells}"


def test_count_themes_and_clipart_share():
    assert len(ON_DISK) >= 30
    themes = {name.split("/")[0] for name in ON_DISK}
    assert {"nature", "animals", "objects", "space-and-science", "clipart"} <= themes
    assert sum(name.startswith("clipart/") for name in ON_DISK) <= 8


def test_total_size_is_small():
    total = sum((SAMPLE / name).stat().st_size for name in ON_DISK)
    assert total < MAX_TOTAL_BYTES, f"sample library is {total / 1e6:.2f} MB"


def test_formats_vary():
    suffixes = {Path(name).suffix.lower() for name in ON_DISK}
    assert {".jpg", ".png", ".webp"} <= suffixes


@pytest.mark.parametrize("name", ON_DISK)
def test_decodes_upright_within_size_limit(name: str):
    path = SAMPLE / name
    rgb = load_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.c_contiguous
    info = read_info(path)
    assert (info.height, info.width) == rgb.shape[:2]
    assert max(rgb.shape[:2]) <= MAX_SIDE
    assert rgb.std() > 5, f"{name} decodes to a nearly flat image"
    if name.endswith(".jpg"):
        with Image.open(path) as im:
            assert not im.info.get("progressive"), f"{name} should be baseline JPEG"


def test_clipart_keeps_its_alpha_channel():
    for name in ON_DISK:
        if name.startswith("clipart/"):
            with Image.open(SAMPLE / name) as im:
                assert im.format == "PNG" and "A" in im.mode, f"{name}: {im.format} {im.mode}"


def _stored_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _small(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX), dtype=np.float32)


def test_forest_path_is_stored_sideways_and_displays_upright():
    path = SAMPLE / "nature" / "forest-path.jpg"
    info = read_info(path)
    assert info.orientation == 8
    assert _stored_size(path) == (1000, 1600)  # stored portrait...
    rgb = load_rgb(path)
    assert rgb.shape[:2] == (1000, 1600)  # ...displayed landscape
    # Upright means it matches the wallpaper's own (unrotated) preview; a wrong rotation cannot.
    preview = load_rgb(SAMPLE / "nature" / "forest-path-screenshot.jpg")
    assert preview.shape[:2] == (250, 400)
    upright_error = np.abs(_small(rgb, (400, 250)) - preview.astype(np.float32)).mean()
    flipped_error = np.abs(_small(rgb[::-1, ::-1].copy(), (400, 250)) - preview.astype(np.float32)).mean()
    assert upright_error < 12 < flipped_error, (upright_error, flipped_error)
    # The camera's own capture time survives the re-encode.
    assert info.captured_at == datetime(2015, 9, 6, 18, 46, 57)


def test_rocket_is_stored_sideways_and_displays_upright(skimage_data_dir: Path):
    path = SAMPLE / "objects" / "rocket-launch.jpg"
    info = read_info(path)
    assert info.orientation == 6
    assert _stored_size(path) == (427, 640)  # stored portrait...
    rgb = load_rgb(path)
    assert rgb.shape[:2] == (427, 640)  # ...displayed landscape, like the original
    assert info.captured_at == datetime(2015, 2, 11, 18, 3, 42, tzinfo=timezone(timedelta(hours=-5)))
    original = skimage_data_dir / "rocket.jpg"
    if not original.is_file():
        pytest.skip("scikit-image's rocket.jpg is not installed")
    reference = load_rgb(original).astype(np.float32)
    assert np.abs(rgb.astype(np.float32) - reference).mean() < 6


def test_near_duplicates_keep_different_sizes():
    same_framing = [
        ("animals/elephants-1600.jpg", "animals/elephants-960.jpg"),
        ("nature/boats-evening-glow.jpg", "nature/boats-evening-glow-screenshot.jpg"),
        ("nature/forest-path.jpg", "nature/forest-path-screenshot.jpg"),
    ]
    # One drawing, but Tux Paint's copy is cropped tighter: only the sizes are compared.
    other_framing = [("clipart/ladybug-openclipart.png", "clipart/ladybug-tuxpaint.png")]
    for big, small in same_framing + other_framing:
        assert read_info(SAMPLE / big).width > read_info(SAMPLE / small).width, (big, small)
    for big, small in same_framing:
        # Same picture: the big one shrunk to the small one's size looks alike.
        small_info = read_info(SAMPLE / small)
        a = _small(load_rgb(SAMPLE / big), (small_info.width, small_info.height))
        b = load_rgb(SAMPLE / small).astype(np.float32)
        assert np.abs(a - b).mean() < 25, (big, small)
