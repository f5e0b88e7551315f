"""Near-duplicates on real files: JPEG re-encodes, resizes, slight and heavier crops and a byte copy made from
scikit-image's photos, indexed by the real indexer; the pair search against brute force; the union-find.

The measurement test below is the evidence behind engine.dedup's default thresholds; run it with -s to see the
cosines of each kind of copy for the tiny test model and for a random-weight ViT-S/14.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import dedup
from engine.extract import Extractor
from engine.imageio import load_rgb
from engine.models import DinoVisionTransformer, build_backbone
from engine.store import Library, index_library
from engine.store.vectors import vector_index
from engine.transforms import eval_transform
from tests.helpers import tiny_config

SIDE = 320  # photos are shrunk to this longest side so that tests stay fast


def photo(data_dir: Path, name: str) -> Image.Image:
    im = Image.open(data_dir / name).convert("RGB")
    im.thumbnail((SIDE, SIDE))
    return im


def jpeg(im: Image.Image, quality: int, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def crop(im: Image.Image, fraction: float) -> Image.Image:
    dx, dy = round(fraction * im.width), round(fraction * im.height)
    return im.crop((dx, dy, im.width - dx, im.height - dy))


def dated(when: str) -> Image.Exif:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when  # DateTimeOriginal
    return exif


def variants(data_dir: Path) -> dict[str, bytes]:
    """The kinds of copies a photo library collects, as encoded files."""
    base = jpeg(photo(data_dir, "rocket.jpg"), 95)
    decoded = Image.open(io.BytesIO(base)).convert("RGB")
    w, h = decoded.size
    moto = photo(data_dir, "motorcycle_right.png")
    return {
        "original": base,
        "q60": jpeg(decoded, 60),
        "q30": jpeg(decoded, 30),
        "resize80": jpeg(decoded.resize((round(w * 0.8), round(h * 0.8)), Image.Resampling.LANCZOS), 90),
        "resize50": jpeg(decoded.resize((round(w * 0.5), round(h * 0.5)), Image.Resampling.LANCZOS), 90),
        "crop3": jpeg(crop(decoded, 0.03), 90),
        "scene": jpeg(moto, 92),  # the "same scene" pair: a photo and a 12 % tighter framing of it
        "scene_crop12": jpeg(crop(moto, 0.12), 92),
        "unrelated_ihc": jpeg(photo(data_dir, "ihc.png"), 92),
        "unrelated_horse": jpeg(photo(data_dir, "horse.png"), 92),
        "unrelated_chelsea": jpeg(photo(data_dir, "chelsea.png"), 92),
    }


def cosines(model: torch.nn.Module, files: dict[str, bytes]) -> dict[tuple[str, str], float]:
    """Pairwise cosines of the files' vectors, computed as the indexer computes them."""
    ex = Extractor(model, precision="fp32")
    keys = list(files)
    x = torch.stack([eval_transform(load_rgb(files[k], min_side=256)) for k in keys])
    v = ex.embed_tensor(x).cls
    sims = v @ v.T
    return {(a, b): float(sims[i, j]) for i, a in enumerate(keys) for j, b in enumerate(keys)}


@pytest.mark.parametrize("which", ["tiny", pytest.param("vits14", marks=pytest.mark.slow)])
def test_measured_cosines_support_the_default_thresholds(which: str, skimage_data_dir: Path) -> None:
    torch.manual_seed(0)
    model = DinoVisionTransformer(tiny_config()) if which == "tiny" else build_backbone("dinov2_vits14")
    files = variants(skimage_data_dir)
    cos = cosines(model.eval(), files)
    copies = {k: cos["original", k] for k in ("q60", "q30", "resize80", "resize50", "crop3")}
    scene = cos["scene", "scene_crop12"]
    photos = ["original", "scene", "unrelated_ihc", "unrelated_horse", "unrelated_chelsea"]
    unrelated = max(cos[a, b] for i, a in enumerate(photos) for b in photos[i + 1 :])
    print(f"\n{which}: " + ", ".join(f"{k} {v:.4f}" for k, v in copies.items())
          + f"; scene pair {scene:.4f}; unrelated max {unrelated:.4f}")
    # Re-encodes and resizes sit far above the near threshold, even with random weights.
    assert min(copies[k] for k in ("q60", "q30", "resize80", "resize50")) >= 0.995
    assert copies["crop3"] >= dedup.NEAR + 0.02
    assert dedup.SCENE + 0.02 <= scene <= dedup.NEAR - 0.03
    assert unrelated <= dedup.SCENE - 0.1


@pytest.fixture(scope="module")
def duplicates_library(tmp_path_factory: pytest.TempPathFactory, skimage_data_dir: Path):
    """The variants as files, some dated by EXIF and by file time, indexed with the tiny model (once per module;
    tests that change the library work on a copy)."""
    tmp_path = tmp_path_factory.mktemp("dedup")
    folder = tmp_path / "photos"
    folder.mkdir()
    files = variants(skimage_data_dir)
    decoded = Image.open(io.BytesIO(files["original"])).convert("RGB")
    # The original says 2022; the q60 re-encode, same size, says 2019: among equally large photos the oldest wins.
    files["original"] = jpeg(decoded, 95, dated("2022:05:01 10:00:00"))
    files["q60"] = jpeg(decoded, 60, dated("2019:01:01 08:00:00"))
    paths = {}
    for key in ("original", "q60", "resize80", "crop3", "scene", "scene_crop12", "unrelated_ihc",
                "unrelated_horse", "unrelated_chelsea"):
        paths[key] = folder / f"{key}.jpg"
        paths[key].write_bytes(files[key])
    paths["copy"] = folder / "copy of original.jpg"
    shutil.copyfile(paths["original"], paths["copy"])
    os.utime(paths["original"], ns=(1_600_000_000 * 10**9,) * 2)  # the copy is newer: the original is kept
    os.utime(paths["copy"], ns=(1_700_000_000 * 10**9,) * 2)
    torch.manual_seed(0)
    model = DinoVisionTransformer(tiny_config()).eval()
    lib = Library.open(tmp_path / "lib")
    report = index_library(lib, model, folders=[folder], precision="fp32")
    assert report.failed == 0
    yield lib, report.model_id, {k: lib.image_by_path(p).id for k, p in paths.items()}
    lib.close()


def test_tiers_on_real_copies(duplicates_library) -> None:
    lib, model_id, ids = duplicates_library
    groups = dedup.find_duplicates(lib, model_id)
    by_tier = {t: [g for g in groups if g.tier == t] for t in dedup.TIERS}
    assert [len(by_tier[t]) for t in dedup.TIERS] == [1, 1, 1]

    exact = by_tier["exact"][0]
    assert exact.image_ids == [ids["original"], ids["copy"]] and exact.keeper_id == ids["original"]
    assert exact.scores == [1.0, pytest.approx(1.0, abs=1e-6)]

    near = by_tier["near"][0]
    family = {ids[k] for k in ("original", "copy", "q60", "resize80", "crop3")}
    assert set(near.image_ids) == family
    assert near.keeper_id == ids["q60"]  # as many pixels as the original, and older
    assert near.image_ids[0] == near.keeper_id and near.scores[0] == 1.0
    assert near.scores == sorted(near.scores, reverse=True) and min(near.scores) >= dedup.NEAR

    scene = by_tier["scene"][0]
    assert set(scene.image_ids) == {ids["scene"], ids["scene_crop12"]}
    assert scene.keeper_id == ids["scene"]  # the uncropped one is larger
    assert dedup.SCENE <= scene.scores[1] < dedup.NEAR

    grouped = {i for g in groups for i in g.image_ids}
    assert not grouped & {ids["unrelated_ihc"], ids["unrelated_horse"], ids["unrelated_chelsea"]}
    assert dedup.savings(groups, "near") == 4


def test_thresholds_move_photos_between_tiers(duplicates_library) -> None:
    lib, model_id, ids = duplicates_library
    strict = dedup.find_duplicates(lib, model_id, near=0.99999, scene=0.99)
    near = [g for g in strict if g.tier == "near"]
    assert all(ids["crop3"] not in g.image_ids for g in near)  # a crop is not pixel-identical
    scene = [g for g in strict if g.tier == "scene"]
    assert any(ids["crop3"] in g.image_ids for g in scene)
    assert not any(ids["scene"] in g.image_ids for g in strict)
    loose = dedup.find_duplicates(lib, model_id, near=0.8, scene=0.5)
    assert any({ids["scene"], ids["scene_crop12"]} <= set(g.image_ids) for g in loose if g.tier == "near")
    big = dedup.find_duplicates(lib, model_id, min_size=6)
    assert [g.tier for g in big] == []  # no group reaches 6 photos
    with pytest.raises(ValueError, match="scene <= near"):
        dedup.find_duplicates(lib, model_id, near=0.8, scene=0.9)


def test_an_approximate_index_finds_the_same_groups(duplicates_library, tmp_path: Path) -> None:
    """Past ann_threshold pairs come from the 32-nearest-neighbour graph of the library's IVF index."""
    lib, model_id, _ = duplicates_library
    flat = dedup.find_duplicates(lib, model_id)
    shutil.copytree(lib.root, tmp_path / "lib")
    with Library.open(tmp_path / "lib", create=False) as copy:
        copy.set_setting("ann_threshold", 2)
    with Library.open(tmp_path / "lib", create=False) as fresh:
        assert vector_index(fresh, model_id).kind == "ivf"
        approx = dedup.find_duplicates(fresh, model_id)
    assert [(g.tier, g.image_ids, g.keeper_id) for g in approx] == [(g.tier, g.image_ids, g.keeper_id) for g in flat]


def test_range_pairs_match_brute_force_across_blocks(monkeypatch) -> None:
    """Small blocks force many database and query blocks; every pair at or above the radius is found once."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((12, 24))
    x = centres[rng.integers(0, 12, 700)] + 0.35 * rng.standard_normal((700, 24))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    monkeypatch.setattr(dedup, "DB_BLOCK", 128)
    monkeypatch.setattr(dedup, "QUERY_BLOCK", 50)
    radius = 0.9
    steps = []
    found = [np.stack([a, b], 1) for a, b, _ in dedup.range_pairs(x, radius, progress=lambda p: steps.append(
        (p.done, p.total)))]
    got = np.concatenate(found)
    sims = x @ x.T
    want = np.argwhere(np.triu(sims >= radius, k=1))
    assert len(got) == len(want) > 100
    assert {tuple(p) for p in got.tolist()} == {tuple(p) for p in want.tolist()}
    assert steps[-1][0] == steps[-1][1] == len(steps)

    at_threshold = np.zeros((2, 24), np.float32)
    at_threshold[0, 0] = 1.0
    at_threshold[1, :2] = (0.5, np.sqrt(0.75))  # cosine exactly 0.5 in float32: ">= radius" keeps it
    assert sum(len(a) for a, _, _ in dedup.range_pairs(at_threshold, 0.5)) == 1

    with pytest.raises(dedup.Cancelled):
        list(dedup.range_pairs(x, radius, cancel=lambda: True))


def test_components_join_transitively_with_the_smallest_member_as_root() -> None:
    comp = dedup.Components(8)
    comp.union(np.array([5, 1]), np.array([6, 2]))
    comp.union(np.array([6]), np.array([2]))
    comp.union(np.array([7, 7]), np.array([7, 3]))  # a self-pair and a repeated root are harmless
    comp.union(np.array([], np.int64), np.array([], np.int64))
    assert comp.labels().tolist() == [0, 1, 1, 3, 4, 1, 1, 3]
    long_chain = dedup.Components(10_000)
    for i in range(0, 9_999, 100):  # many calls, each linking a run: the labels stay exact
        idx = np.arange(i, min(i + 100, 9_999))
        long_chain.union(idx, idx + 1)
    assert (long_chain.labels() == 0).all()


def test_an_empty_library_has_no_duplicates(tmp_path: Path) -> None:
    from engine.store.schema import Model

    with Library.open(tmp_path / "lib") as lib:
        with lib.session.begin() as s:
            s.add(Model(name="m", source="m", checkpoint_hash="h", dim=8, patch_size=14))
        assert dedup.find_duplicates(lib, 1) == []
