"""A 475-byte PNG that decodes to a 1 x 100,000 strip is refused from its header with a clear message on every path
(index, embed, search, pca) instead of growing to ~24 GB in the resize (issue 15.3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.imageio import ImageDecodeError, load_rgb, load_thumbnail, read_info
from engine.models import save_backbone
from engine.store import Library, index_library
from tests.test_indexer import ROOT, load_small_photos, model, write_photos

MEMORY_LIMIT = 3_000_000_000  # bytes of address space for the CLI runs: the unfixed code needs ~24 GB


@pytest.fixture(scope="module")
def small_photos(skimage_data_dir: Path) -> dict[str, Image.Image]:
    return load_small_photos(skimage_data_dir)


def strip_png(path: Path) -> Path:
    Image.new("RGB", (1, 100_000)).save(path)
    assert path.stat().st_size < 1000
    return path


def run_limited(*args: str, home: Path) -> subprocess.CompletedProcess:
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = dict(os.environ, DINOSCOPE_HOME=str(home), TORCH_HOME=str(home / "torch"))
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)


def test_a_strip_is_refused_from_its_header(tmp_path: Path) -> None:
    png = strip_png(tmp_path / "strip.png")
    for read in (lambda: read_info(png), lambda: load_rgb(png, min_side=256), lambda: load_thumbnail(png)):
        with pytest.raises(ImageDecodeError, match=r"strip\.png: its 1 x 100000 pixels are not a photo's shape"):
            read()
    wide = tmp_path / "panorama.png"  # a wide stitched panorama (30:1) is still a photo
    Image.new("RGB", (3000, 100)).save(wide)
    assert load_rgb(wide).shape == (100, 3000, 3)


def test_index_records_the_strip_and_indexes_the_rest(tmp_path: Path, small_photos) -> None:
    src = tmp_path / "photos"
    files = write_photos(src, small_photos)
    strip_png(src / "strip.png")
    with Library.open("strips") as lib:
        report = index_library(lib, model(), folders=[src], precision="fp32")
        assert report.failed == 1 and lib.counts()["ok"] == len(files)
        (path, reason), = lib.errors()
        assert path.endswith("strip.png") and "not a photo's shape" in reason


def test_embed_search_and_pca_say_which_file_under_a_memory_limit(tmp_path: Path, small_photos,
                                                                   dinoscope_home: Path) -> None:
    src = tmp_path / "photos"
    write_photos(src, small_photos)
    weights = tmp_path / "tiny.pt"
    save_backbone(model(), weights)
    strip = strip_png(tmp_path / "strip.png")
    r = run_limited("index", str(src), "--library", "L", "--model", str(weights), home=dinoscope_home)
    assert r.returncode == 0, r.stderr

    r = run_limited("embed", str(strip), str(src / "coffee_q95.jpg"), "--model", str(weights),
                    "--out", str(tmp_path / "f.npy"), home=dinoscope_home)
    assert r.returncode == 1 and "strip.png: its 1 x 100000 pixels are not a photo's shape" in r.stderr
    assert "Traceback" not in r.stderr

    r = run_limited("search", str(strip), "--library", "L", home=dinoscope_home)
    assert r.returncode == 2 and "strip.png" in r.stderr and "not a photo's shape" in r.stderr
    assert "Traceback" not in r.stderr

    r = run_limited("pca", str(strip), "--model", str(weights), "--out", str(tmp_path / "pca"),
                    home=dinoscope_home)
    assert r.returncode == 2 and "strip.png" in r.stderr and "Traceback" not in r.stderr
