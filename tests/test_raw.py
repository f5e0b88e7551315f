"""Camera RAW through LibRaw, on DNGs written from real photos: the preview when it is big enough, else a half-size
demosaic, orientation and capture time, bytes without a name, a truncated file, RAW+JPEG pairs in a library."""

from __future__ import annotations

import io
import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio, raw
from engine.store import Library, index_library
from engine.store.scan import scan_folder
from tests.test_indexer import model
from tests.test_raw_dng import WHEN, dng_bytes, sample_rgb, write_dng


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images' grey levels at 64 x 64: 'the same picture' whatever the tone curve."""
    def grey(x: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(x).convert("L").resize((64, 64)), np.float64).ravel()

    return float(np.corrcoef(grey(a), grey(b))[0, 1])


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return sample_rgb()  # 640 x 400 ladybird


def test_raw_files_are_candidates_for_a_library_scan() -> None:
    for ext in (".CR2", ".cr3", ".NEF", ".arw", ".RAF", ".orf", ".RW2", ".pef", ".SRW", ".dng"):
        assert ext.lower() in imageio.SUPPORTED_EXTENSIONS


def test_the_preview_is_used_when_it_is_large_enough(tmp_path: Path, rgb: np.ndarray) -> None:
    path = write_dng(tmp_path / "p.dng", rgb, preview_longest=480, orientation=6)
    info = imageio.read_info(path)
    assert (info.width, info.height) == (rgb.shape[0], rgb.shape[1])  # upright: turned a quarter
    assert info.format == "RAW" and info.orientation == 6
    assert info.captured_at == datetime(2024, 5, 6, 7, 8, 9)
    out = imageio.load_rgb(path, min_side=224)
    assert out.shape == (480, 300, 3)  # the 480 x 300 preview, turned upright; the demosaic would be 320 x 200
    upright = np.rot90(rgb, k=-1)
    assert correlation(out, np.ascontiguousarray(upright)) > 0.95
    assert correlation(out, np.ascontiguousarray(rgb.transpose(1, 0, 2))) < 0.9  # not merely transposed


def test_a_preview_smaller_than_asked_falls_back_to_the_half_size_demosaic(tmp_path: Path, rgb: np.ndarray) -> None:
    path = write_dng(tmp_path / "small_preview.dng", rgb, preview_longest=160)
    out = imageio.load_rgb(path, min_side=180)
    assert out.shape == (200, 320, 3)
    assert correlation(out, rgb) > 0.95


def test_a_dng_without_a_preview_is_demosaiced_upright(tmp_path: Path, rgb: np.ndarray) -> None:
    path = write_dng(tmp_path / "n.dng", rgb, orientation=8)
    out = imageio.load_rgb(path, min_side=100)
    assert out.shape == (320, 200, 3)
    assert correlation(out, np.ascontiguousarray(np.rot90(rgb, k=1))) > 0.95
    thumb = imageio.load_thumbnail(path, size=64)
    assert max(thumb.shape[:2]) == 64 and thumb.shape[0] > thumb.shape[1]


def test_raw_bytes_without_a_name_are_recognised(tmp_path: Path, rgb: np.ndarray) -> None:
    data = dng_bytes(rgb, preview_longest=480, orientation=3)
    assert raw.looks_like_raw(data[:65536])
    out = imageio.load_rgb(data, min_side=224)
    assert out.shape == (300, 480, 3)
    assert correlation(out, np.ascontiguousarray(rgb[::-1, ::-1])) > 0.95
    assert imageio.read_info(data).format == "RAW"
    tiff = tmp_path / "plain.tif"
    Image.fromarray(rgb).save(tiff)
    assert not raw.looks_like_raw(tiff.read_bytes()[:65536])  # an ordinary TIFF photo stays with Pillow
    assert imageio.read_info(tiff.read_bytes()).format == "TIFF"


def test_a_truncated_raw_is_one_clear_error_naming_the_file(tmp_path: Path, rgb: np.ndarray) -> None:
    data = dng_bytes(rgb)
    path = tmp_path / "IMG_0042.dng"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(imageio.ImageDecodeError) as err:
        imageio.load_rgb(path, min_side=224)
    assert str(err.value).startswith("IMG_0042.dng: ")
    assert "truncated" in err.value.cause
    garbage = tmp_path / "not_raw.nef"
    garbage.write_bytes(b"this is not a camera file" * 100)
    with pytest.raises(imageio.ImageDecodeError, match=r"not_raw\.nef: LibRaw does not recognise"):
        imageio.read_info(garbage)


def test_raw_bomb_limit_is_checked_before_decoding(tmp_path: Path, rgb: np.ndarray) -> None:
    path = write_dng(tmp_path / "big.dng", rgb)
    with pytest.raises(imageio.ImageDecodeError, match="megapixels exceeds"):
        imageio.load_rgb(path, max_pixels=1000)


def test_a_raw_and_a_jpeg_with_one_stem_are_one_photo(tmp_path: Path, rgb: np.ndarray) -> None:
    photos = tmp_path / "photos"
    write_dng(photos / "IMG_0001.DNG", rgb, preview_longest=480)
    Image.fromarray(rgb).save(photos / "IMG_0001.JPG", quality=90)
    write_dng(photos / "IMG_0002.dng", sample_rgb("nature/fallen-leaf.jpg"), preview_longest=480, orientation=6)
    (photos / "IMG_0003.dng").write_bytes(dng_bytes(rgb)[:5000])
    assert [Path(f.path).name for f in scan_folder(str(photos)).files] == ["IMG_0001.JPG", "IMG_0002.dng",
                                                                           "IMG_0003.dng"]
    with Library.open(tmp_path / "lib") as lib:
        report = index_library(lib, model(), folders=[photos], device="cpu", workers=1)
        assert (report.new, report.failed) == (3, 1)
        rows = {Path(r.path).name: r for r in lib.images()}
        assert set(rows) == {"IMG_0001.JPG", "IMG_0002.dng", "IMG_0003.dng"}
        assert rows["IMG_0001.JPG"].raw_path == str(photos / "IMG_0001.DNG")
        assert rows["IMG_0001.JPG"].format == "JPEG"
        assert rows["IMG_0002.dng"].format == "RAW" and rows["IMG_0002.dng"].status == "ok"
        assert (rows["IMG_0002.dng"].width, rows["IMG_0002.dng"].height) == (400, 640)
        assert rows["IMG_0002.dng"].captured_at == datetime.strptime(WHEN, "%Y:%m:%d %H:%M:%S")
        assert rows["IMG_0003.dng"].status == "error" and "truncated" in rows["IMG_0003.dng"].error
        assert lib.counts()["per_model"][report.model_id] == 2  # one vector for the pair
        thumb = Image.open(io.BytesIO(lib.thumbnail(rows["IMG_0002.dng"].id)))
        assert thumb.height > thumb.width  # the RAW's orientation reached the thumbnail

        (photos / "IMG_0001.DNG").unlink()  # the RAW is gone: the JPEG stays, unpaired, nothing re-embedded
        report = index_library(lib, model(), device="cpu", workers=1)
        assert (report.new, report.changed, report.deleted) == (0, 0, 0)
        assert lib.image_by_path(photos / "IMG_0001.JPG").raw_path is None

        write_dng(photos / "IMG_0001.DNG", rgb, preview_longest=480)  # back again: paired again
        index_library(lib, model(), device="cpu", workers=1)
        assert lib.image_by_path(photos / "IMG_0001.JPG").raw_path == str(photos / "IMG_0001.DNG")
        (photos / "IMG_0001.JPG").unlink()  # the JPEG is gone: the RAW is a photo of its own
        report = index_library(lib, model(), device="cpu", workers=1)
        assert (report.new, report.deleted) == (1, 1)
        assert lib.image_by_path(photos / "IMG_0001.DNG").format == "RAW"


def test_a_schema_1_library_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(sample_rgb()).save(photos / "a.jpg")
    with Library.open(tmp_path / "lib") as lib:
        lib.add_folder(photos)
    con = sqlite3.connect(tmp_path / "lib" / "library.db")  # turn it back into what Dinoscope 1 wrote
    con.execute("DROP TABLE stack_members")
    con.execute("ALTER TABLE images DROP COLUMN raw_path")
    con.execute("INSERT INTO images (folder_id, path, size, mtime_ns, status) VALUES (1, '/x/a.jpg', 1, 1, 'ok')")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Library.open(tmp_path / "lib") as lib:
        assert [r.path for r in lib.images()] == ["/x/a.jpg"]
        assert lib.images()[0].raw_path is None
    con = sqlite3.connect(tmp_path / "lib" / "library.db")
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    assert "raw_path" in [r[1] for r in con.execute("PRAGMA table_info(images)")]
    assert con.execute("SELECT count(*) FROM stack_members").fetchone()[0] == 0
