"""Curation over a real library: copies collapse to one, seeds retrieve their neighbours, clusters are capped."""

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
from engine.store.vectors import library_vectors
from tests.helpers import tiny_config
from trainer.curate import balance_by_cluster, curate, write_list

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "camera.png"]


@pytest.fixture
def library(tmp_path: Path, skimage_data_dir: Path):
    """Six distinct photos, each also saved as a smaller copy and as a byte-identical copy."""
    d = tmp_path / "photos"
    d.mkdir()
    for name in NAMES:
        img = Image.open(skimage_data_dir / name).convert("RGB")
        img.thumbnail((300, 300))
        stem = Path(name).stem
        img.save(d / f"{stem}.jpg", quality=92)
        img.resize((img.width * 4 // 5, img.height * 4 // 5)).save(d / f"{stem}_small.jpg", quality=85)
        (d / f"{stem}_copy.jpg").write_bytes((d / f"{stem}.jpg").read_bytes())
    torch.manual_seed(0)
    with Library.open("cur") as lib:
        rep = index_library(lib, DinoVisionTransformer(tiny_config()), folders=[str(d)], device="cpu",
                            precision="fp32")
        yield lib, rep.model_id


def _cosines(lib, model_id) -> np.ndarray:
    _, v = library_vectors(lib, model_id)
    return np.asarray(v) @ np.asarray(v).T


def test_self_dedup_keeps_one_photo_per_copy_group(library) -> None:
    lib, model_id = library
    # Threshold between "same photo" and "different photo" on this model, measured rather than assumed.
    ids, _ = library_vectors(lib, model_id)
    names = {r.id: Path(r.path).stem.split("_")[0] for r in lib.images(status="ok")}
    c = _cosines(lib, model_id)
    same = np.array([[names[int(a)] == names[int(b)] for b in ids] for a in ids])
    lo_same, hi_diff = c[same].min(), c[~same].max()
    assert lo_same > hi_diff, "re-encodings must sit closer than different photos for this test to mean anything"
    report = curate(lib, model_id, threshold=float((lo_same + hi_diff) / 2))
    assert report.stages[0][1] == 18 and report.stages[-1][1] == 6
    kept = sorted(Path(p).name for p in report.paths)
    assert len({n.split("_")[0].split(".")[0] for n in kept}) == 6  # one per photo
    assert not any("_small" in n for n in kept)  # the larger copy is the keeper


def test_seeds_retrieve_their_neighbours(library, tmp_path: Path) -> None:
    lib, model_id = library
    ids, vectors = library_vectors(lib, model_id)
    seed = np.asarray(vectors)[[0]]
    report = curate(lib, model_id, threshold=1.0, seed_vectors=seed, per_seed=4)
    assert report.stages[-1][1] == 4 and len(report.paths) == 4
    assert lib.image(int(ids[0])).path in report.paths


def test_cluster_balancing_caps_each_cluster() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    sizes = [50, 10, 5]
    x = np.concatenate([c + 0.05 * rng.normal(size=(n, 16)) for c, n in zip(centres, sizes, strict=True)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    kept = balance_by_cluster(x, 3, per_cluster=6)
    groups = np.repeat([0, 1, 2], sizes)[kept]
    assert sorted(np.bincount(groups).tolist()) == [5, 6, 6]


def test_curate_command_writes_a_list_the_trainer_reads(library, tmp_path: Path, dinoscope_home: Path) -> None:
    from trainer.data import read_file_list

    out = tmp_path / "train.txt"
    env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home))
    r = subprocess.run([sys.executable, "-m", "app", "curate", "--library", "cur", "--out", str(out),
                        "--per-cluster", "2", "--clusters", "3"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "after self-deduplication" in r.stdout and "after cluster balancing" in r.stdout
    listed = read_file_list(out)
    assert 0 < len(listed) <= 6 and all(p.exists() for p in listed)
    write_list([], tmp_path / "empty.txt")
    assert (tmp_path / "empty.txt").read_text() == ""
