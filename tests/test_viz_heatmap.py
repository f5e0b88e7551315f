"""Patch-similarity heatmaps: the arithmetic on planted tokens, then real photos through a tiny backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.imageio import load_rgb
from engine.viz.heatmap import patch_similarity, render_heatmap
from engine.viz.patches import PatchTokens, patch_at, patch_center, patch_tokens
from tests.helpers import tiny_backbone


def random_tokens(seed: int, grid: tuple[int, int], dim: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(grid[0] * grid[1], dim)).astype(np.float32)


def test_pixel_and_patch_geometry_round_trip() -> None:
    grid, size = (6, 8), (300, 400)  # 50 px patches
    assert patch_at((0, 0), grid, size) == (0, 0)
    assert patch_at((399.9, 299.9), grid, size) == (5, 7)
    assert patch_at((-10, 1e6), grid, size) == (5, 0)  # clamped
    for rc in [(0, 0), (2, 5), (5, 7)]:
        assert patch_at(patch_center(rc, grid, size), grid, size) == rc
    assert patch_center((1, 2), grid, size) == (125.0, 75.0)


def test_self_similarity_is_the_maximum_at_the_clicked_patch() -> None:
    grid, size = (7, 9), (140, 180)
    tokens = random_tokens(0, grid)
    (hm,) = patch_similarity(tokens, grid, (95.0, 61.0), size)
    row, col = patch_at((95.0, 61.0), grid, size)
    assert hm.sim.shape == grid and hm.sim.dtype == np.float32
    assert hm.sim[row, col] == 1.0 == hm.sim.max()
    assert hm.best_xy == patch_center((row, col), grid, size) and hm.best_score == 1.0
    assert hm.sim.min() >= -1.0
    expected = tokens @ tokens[row * grid[1] + col]
    expected /= np.linalg.norm(tokens, axis=1) * np.linalg.norm(tokens[row * grid[1] + col])
    assert np.allclose(hm.sim.ravel(), expected, atol=1e-5)


def test_best_match_in_other_images_is_the_planted_patch() -> None:
    q_grid, q_size = (5, 5), (100, 100)
    query = random_tokens(1, q_grid)
    target = query[2 * 5 + 3]  # clicked patch (row 2, col 3)
    others = []
    plants = [((6, 9), (4, 7), (60, 140)), ((1, 1), (0, 0), (10, 10)), ((8, 2), (5, 1), (800, 200))]
    for k, (grid, rc, size) in enumerate(plants):
        tokens = random_tokens(10 + k, grid)
        tokens[rc[0] * grid[1] + rc[1]] = target * (2.5 + k)  # same direction, other length: cosine 1
        others.append(PatchTokens(tokens, grid, size) if k % 2 else (tokens, grid, size))
    maps = patch_similarity(query, q_grid, (70, 50), q_size, others=others, upsample="nearest")
    assert len(maps) == 4
    for hm, (grid, rc, size) in zip(maps[1:], plants, strict=True):
        assert hm.grid == grid and hm.size == size
        assert hm.best_xy == patch_center(rc, grid, size)
        assert hm.best_score == pytest.approx(1.0, abs=1e-5)
        assert hm.upsampled.shape == size and hm.upsampled.dtype == np.float32
        assert hm.upsampled.min() >= -1.0 and hm.upsampled.max() <= 1.0
        assert hm.upsampled[int(hm.best_xy[1]), int(hm.best_xy[0])] == pytest.approx(hm.best_score, abs=1e-6)


def test_zero_tokens_give_zero_similarity_not_nan() -> None:
    grid = (4, 4)
    tokens = random_tokens(2, grid)
    tokens[5] = 0.0
    maps = patch_similarity(tokens, grid, (1, 1), (40, 40), others=[(np.zeros((16, 32), np.float32), grid, (40, 40))])
    assert maps[0].sim.ravel()[5] == 0.0
    assert not maps[1].sim.any() and np.isfinite(maps[1].upsampled).all()
    clicked_zero = patch_similarity(tokens, grid, (15, 15), (40, 40))[0]  # patch (1, 1) is index 5
    assert not clicked_zero.sim.any()


def test_bad_inputs_are_refused_clearly() -> None:
    grid = (3, 3)
    tokens = random_tokens(3, grid)
    with pytest.raises(ValueError, match="grid"):
        patch_similarity(tokens, (4, 4), (0, 0), (10, 10))
    with pytest.raises(ValueError, match="-d"):
        patch_similarity(tokens, grid, (0, 0), (10, 10), others=[(np.zeros((9, 8), np.float32), grid, (9, 9))])
    with pytest.raises(ValueError, match="upsampl"):
        patch_similarity(tokens, grid, (0, 0), (10, 10), upsample="area")


def test_render_heatmap_on_photo(skimage_data_dir: Path) -> None:
    photo = load_rgb(skimage_data_dir / "coffee.png")
    grid = (8, 12)
    (hm,) = patch_similarity(random_tokens(4, grid), grid, (300, 200), photo.shape[:2])
    out = render_heatmap(photo, hm, alpha=0.5)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert not np.array_equal(out, photo)
    plain = render_heatmap(photo, hm, alpha=0.0, mark_best=False)
    assert np.array_equal(plain, photo)
    fixed = render_heatmap(photo, hm, value_range=(0.0, 1.0))
    assert fixed.shape == photo.shape
    with pytest.raises(ValueError, match="made for"):
        render_heatmap(photo[:100], hm)


def test_heatmaps_from_real_photos_through_a_backbone(skimage_data_dir: Path) -> None:
    model = tiny_backbone()
    photos = [load_rgb(skimage_data_dir / n) for n in ("chelsea.png", "astronaut.png", "rocket.jpg")]
    feats = patch_tokens(model, photos, resolution=112, precision="fp32")
    q = feats[0]
    maps = patch_similarity(q.tokens, q.grid, (225, 150), q.size, others=feats[1:])
    assert [m.size for m in maps] == [p.shape[:2] for p in photos]
    for m, photo in zip(maps, photos, strict=True):
        assert np.isfinite(m.sim).all() and -1.0 <= m.sim.min() <= m.sim.max() <= 1.0
        x, y = m.best_xy
        assert 0 <= x < photo.shape[1] and 0 <= y < photo.shape[0]
        assert m.sim.max() == pytest.approx(m.best_score)
        assert render_heatmap(photo, m).shape == photo.shape
    assert maps[0].best_score == 1.0
