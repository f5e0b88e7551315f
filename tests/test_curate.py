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
from trainer.curate import balance_by_cluster, curate, retrieve_for_seeds, write_list

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


def _brute_force_top(pool: np.ndarray, seeds: np.ndarray, k: int) -> set[int]:
    """Rows of `pool` among the k highest cosines of any seed, computed the slow obvious way."""
    pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    seeds = seeds / np.linalg.norm(seeds, axis=1, keepdims=True)
    cos = seeds @ pool.T
    top = set()
    for row in cos:
        order = np.argsort(-row, kind="stable")
        assert row[order[k - 1]] > row[order[k]], "a tie at rank k would make the expected set ambiguous"
        top |= set(order[:k].tolist())
    return top


def test_retrieval_is_the_exact_cosine_top_k() -> None:
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(200, 24)) * rng.uniform(0.2, 5.0, size=(200, 1))  # norms vary: cosine, not dot
    seeds = rng.normal(size=(3, 24)) * np.array([[0.1], [1.0], [30.0]])
    for k in (1, 5, 17):
        assert set(retrieve_for_seeds(pool, seeds, k).tolist()) == _brute_force_top(pool, seeds, k)


def test_seeds_keep_exactly_their_nearest_library_photos(library) -> None:
    lib, model_id = library
    threshold = 0.9999  # byte-identical copies collapse (some re-encodings too on this random model)
    pool_paths = curate(lib, model_id, threshold=threshold).paths
    assert len(pool_paths) >= 6
    vectors = dict(zip(*library_vectors(lib, model_id), strict=True))
    by_path = {r.path: np.asarray(vectors[r.id]) for r in lib.images(status="ok")}
    pool = np.stack([by_path[p] for p in pool_paths])
    rng = np.random.default_rng(0)
    seeds = pool[[2, 7]] + 0.3 * rng.normal(size=(2, pool.shape[1])) * np.abs(pool[[2, 7]]).mean()
    report = curate(lib, model_id, threshold=threshold, seed_vectors=seeds, per_seed=3)
    expected = {pool_paths[i] for i in _brute_force_top(pool, seeds, 3)}
    assert set(report.paths) == expected and pool_paths[2] in expected and pool_paths[7] in expected
    assert report.stages[-1] == ("after retrieval (2 seeds x 3 nearest)", len(expected))


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


def test_curate_command_with_seed_photos(tmp_path: Path, skimage_data_dir: Path, dinoscope_home: Path) -> None:
    """`curate --seeds FOLDER` keeps exactly the library photos nearest (cosine) to the seed photos."""
    from engine.extract import Extractor
    from engine.models import load_backbone, save_backbone
    from trainer.data import read_file_list

    photos, seeds = tmp_path / "photos", tmp_path / "seeds"
    photos.mkdir()
    seeds.mkdir()
    for name in NAMES:
        img = Image.open(skimage_data_dir / name).convert("RGB")
        img.thumbnail((300, 300))
        img.save(photos / f"{Path(name).stem}.jpg", quality=92)
        img.crop((0, 0, img.width * 9 // 10, img.height)).save(photos / f"{Path(name).stem}_crop.jpg", quality=90)
    for name in ("chelsea.png", "rocket.jpg"):  # the seeds: other crops of two library photos
        img = Image.open(skimage_data_dir / name).convert("RGB")
        img.crop((img.width // 10, 0, img.width, img.height)).resize((240, 200)).save(seeds / f"{name}.png")
    torch.manual_seed(0)
    model_file = save_backbone(DinoVisionTransformer(tiny_config()), tmp_path / "tiny.pth")
    with Library.open("seeded") as lib:
        model_id = index_library(lib, str(model_file), folders=[str(photos)], device="cpu").model_id
        pool_paths = curate(lib, model_id, threshold=0.95).paths
        vectors = dict(zip(*library_vectors(lib, model_id), strict=True))
        by_path = {r.path: np.asarray(vectors[r.id]) for r in lib.images(status="ok")}
    pool = np.stack([by_path[p] for p in pool_paths])
    ex = Extractor(load_backbone(str(model_file)), device="cpu")
    seed_vectors = np.concatenate([b.cls for b in ex.iter_files(sorted(seeds.iterdir()))])
    expected = {pool_paths[i] for i in _brute_force_top(pool, seed_vectors, 2)}

    out = tmp_path / "seeded.txt"
    env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home))
    r = subprocess.run([sys.executable, "-m", "app", "curate", "--library", "seeded", "--seeds", str(seeds),
                        "--per-seed", "2", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "after retrieval (2 seeds x 2 nearest)" in r.stdout
    listed = {str(p) for p in read_file_list(out)}
    assert listed == expected
    assert {Path(p).stem.split("_")[0] for p in listed} >= {"chelsea", "rocket"}
