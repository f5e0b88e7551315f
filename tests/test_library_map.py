"""A library's map: fitted once and stored, new photos placed without moving the old, refit when most are new."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.models import DinoVisionTransformer
from engine.store import Library
from engine.store.indexer import index_library
from engine.viz.library_map import load_map, update_map
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _photos(folder: Path, skimage_data_dir: Path, n: int, offset: int = 0) -> None:
    """Small real-photo crops: different windows of scikit-image's photos."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]
    for i in range(offset, offset + n):
        img = Image.open(skimage_data_dir / names[i % len(names)]).convert("RGB")
        w, h = img.size
        x, y = (i * 37) % (w // 3), (i * 23) % (h // 3)
        img.crop((x, y, x + 2 * w // 3, y + 2 * h // 3)).resize((160, 120)).save(folder / f"p{i:03d}.jpg")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return DinoVisionTransformer(tiny_config())


def test_map_is_stored_and_new_photos_are_placed(tmp_path: Path, skimage_data_dir: Path, model) -> None:
    photos = tmp_path / "photos"
    _photos(photos, skimage_data_dir, 40)
    with Library.open("m") as lib:
        rep = index_library(lib, model, folders=[str(photos)], device="cpu", precision="fp32")
        first = update_map(lib, rep.model_id)
        assert first.refitted and len(first.ids) == 40 and np.isfinite(first.coords).all()
        assert (first.clusters >= 0).all() and len(set(first.clusters.tolist())) >= 2
        again = update_map(lib, rep.model_id)  # nothing new: the stored map, untouched
        assert not again.refitted and np.array_equal(again.coords, load_map(lib, rep.model_id).coords)
        _photos(photos, skimage_data_dir, 4, offset=40)  # 10% new: placed, old points stay put
        index_library(lib, model, folders=[str(photos)], device="cpu", precision="fp32")
        placed = update_map(lib, rep.model_id)
        assert placed.placed == 4 and not placed.refitted and len(placed.ids) == 44
        old = np.isin(placed.ids, first.ids)
        assert np.allclose(placed.coords[old], first.coords[np.argsort(first.ids)], atol=1e-6)
        _photos(photos, skimage_data_dir, 30, offset=44)  # 40% new: the map is fitted again
        index_library(lib, model, folders=[str(photos)], device="cpu", precision="fp32")
        assert update_map(lib, rep.model_id).refitted


def test_map_command_writes_a_picture(tmp_path: Path, skimage_data_dir: Path, model, dinoscope_home: Path) -> None:
    photos = tmp_path / "photos"
    _photos(photos, skimage_data_dir, 12)
    with Library.open("cli") as lib:
        index_library(lib, model, folders=[str(photos)], device="cpu", precision="fp32")
    env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home))
    out = tmp_path / "map.png"
    r = subprocess.run([sys.executable, "-m", "app", "map", "--library", "cli", "--out", str(out), "--size",
                        "640x480"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "12 photos" in r.stdout
    img = np.asarray(Image.open(out))
    assert img.shape == (480, 640, 3) and len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # thumbnails drawn
    r = subprocess.run([sys.executable, "-m", "app", "map", "--library", "nope", "--out", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope" in r.stderr


def test_one_dot_per_stack() -> None:
    from engine.viz.library_map import LibraryMap, one_per_stack

    m = LibraryMap(np.array([1, 2, 3, 4, 5]), np.arange(10, dtype=np.float32).reshape(5, 2),
                   np.array([0, 0, 1, 1, 2]))
    kept = one_per_stack(m, {2: [2, 4, 5], 1: [1]})  # the cover (first) stays; a lone photo is no stack
    assert kept.ids.tolist() == [1, 2, 3] and kept.coords.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert kept.clusters.tolist() == [0, 0, 1]
    assert one_per_stack(m, {}) is m
