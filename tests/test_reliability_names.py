"""File names that are not valid UTF-8 (legal on Linux) are indexed, stored and shown losslessly (issue 15.2), and
names with control characters are printed escaped (15.8)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.display import shown
from engine.models import save_backbone
from engine.store import Library, index_library
from tests.test_indexer import load_small_photos, model, run_cli, write_photos

LATIN1_NAME = b"caf\xe9 \xe0 la plage.jpg"  # what a Latin-1 system or an old camera card writes


@pytest.fixture(scope="module")
def small_photos(skimage_data_dir: Path) -> dict[str, Image.Image]:
    return load_small_photos(skimage_data_dir)


def latin1_photo(folder: Path, image: Image.Image) -> str:
    path = os.path.join(os.fsencode(folder), LATIN1_NAME)
    with open(path, "wb") as f:
        image.save(f, format="JPEG", quality=90)
    return os.fsdecode(path)


def test_a_non_utf8_name_is_indexed_with_the_others_and_kept_exactly(tmp_path: Path, small_photos) -> None:
    src = tmp_path / "photos"
    files = write_photos(src, small_photos)
    odd = latin1_photo(src, small_photos["coffee"])
    (Path(src) / os.fsdecode(b"broken \xff.jpg")).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with Library.open("names") as lib:
        report = index_library(lib, model(), folders=[src], precision="fp32")
        assert report.new == len(files) + 2 and report.failed == 1
        rec = lib.image_by_path(odd)
        assert rec is not None and rec.status == "ok"
        assert os.fsencode(rec.path).endswith(LATIN1_NAME)  # the very bytes on disk: the file can be opened
        assert Path(rec.path).read_bytes() == Path(odd).read_bytes()
        (bad_path, reason), = lib.errors()
        assert os.fsencode(bad_path).endswith(b"broken \xff.jpg") and "truncated" in reason
        assert odd in [p for _, p in lib.image_paths()]
        again = index_library(lib, model(), folders=[src], precision="fp32")  # found again by its exact name
        assert (again.new, again.changed, again.deleted, again.unchanged) == (0, 0, 0, len(files) + 2)


def test_the_cli_indexes_embeds_and_searches_beside_a_non_utf8_name(tmp_path: Path, small_photos,
                                                                     dinoscope_home: Path) -> None:
    src = tmp_path / "photos"
    write_photos(src, small_photos)
    odd = latin1_photo(src, small_photos["coffee"])
    weights = tmp_path / "tiny.pt"
    save_backbone(model(), weights)

    r = run_cli("index", str(src), "--library", "L", "--model", str(weights), home=dinoscope_home)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr

    out = tmp_path / "feats.npy"
    r = run_cli("embed", odd, str(src / "coffee_q95.jpg"), "--model", str(weights), "--out", str(out),
                home=dinoscope_home)
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape[0] == 2
    listing = (tmp_path / "feats.paths.txt").read_bytes().splitlines()
    assert listing[0] == os.fsencode(odd)  # exact bytes, as `find` would print them

    r = run_cli("search", str(src / "coffee_q95.jpg"), "--library", "L", "--k", "1", home=dinoscope_home)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "la plage.jpg" in r.stdout  # its nearest photo is the same coffee under the Latin-1 name


def test_names_are_shown_on_one_line_with_replacement_characters() -> None:
    assert shown(os.fsdecode(b"/p/caf\xe9.jpg")) == "/p/caf\ufffd.jpg"
    assert shown("/p/two\nlines.jpg") == "/p/two\\nlines.jpg"
    assert shown("/p/\x1b[2Jclear.jpg") == "/p/\\x1b[2Jclear.jpg"
    assert shown("/p/tab\there\\x.jpg") == "/p/tab\\there\\\\x.jpg"  # backslashes doubled once escaping starts
    assert shown("C:\\photos\\été.jpg") == "C:\\photos\\été.jpg"  # printable names print unchanged
