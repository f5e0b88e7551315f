"""The PCA part-overlay recipe: mechanics on tokens with known structure, then real photos through a tiny backbone.

Random weights carry no semantics, so the backbone tests check shapes, sizes, ranges and robustness only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.imageio import load_rgb
from engine.viz.patches import patch_tokens, upsample_grid
from engine.viz.pca import DIM, fit_parts, fit_pca, render_overlay
from tests.helpers import tiny_backbone

D = 64
GRID = 16


def scene(seed: int, top: int, left: int, order=(0, 1, 2), side: int = 6, noise: float = 0.15):
    """A 16x16 grid of tokens: background cluster B, and a side x side object of cluster A at (top, left).

    The object has three parts (column bands), each A plus its own offset; ``order`` decides which part sits where,
    so two scenes can hold the same parts at different places. Returns (tokens (16,16,D), part label grid, -1 = bg).
    """
    rng = np.random.default_rng(seed)
    bg, obj = np.zeros(D), np.zeros(D)
    bg[0], obj[1] = 3.0, 3.0
    offsets = np.eye(D)[2:5] * 1.5
    tokens = bg + rng.normal(0, noise, (GRID, GRID, D))
    labels = np.full((GRID, GRID), -1)
    for r in range(side):
        for c in range(side):
            part = order[min(c * 3 // side, 2)]
            tokens[top + r, left + c] = obj + offsets[part] + rng.normal(0, noise, D)
            labels[top + r, left + c] = part
    return tokens.astype(np.float32), labels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ------------------------------------------------------------------------------------------------------ fit_pca
def test_fit_pca_matches_svd_in_both_shapes() -> None:
    rng = np.random.default_rng(0)
    for n, d in [(300, 20), (12, 40)]:  # covariance path and Gram path
        x = (rng.normal(size=(n, d)) * np.linspace(3, 0.1, d)).astype(np.float32)
        basis = fit_pca(x, 3)
        xc = x - x.mean(0)
        _, s, vt = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
        assert np.allclose(basis.variance, s[:3] ** 2 / n, rtol=1e-3)
        for i in range(3):
            assert abs(abs(float(basis.axes[i] @ vt[i])) - 1.0) < 1e-3
        assert np.allclose(basis.axes @ basis.axes.T, np.eye(3), atol=1e-4)


def test_fit_pca_is_deterministic_and_pads_missing_directions() -> None:
    x = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    a, b = fit_pca(x, 3), fit_pca(x.copy(), 3)
    assert np.array_equal(a.axes, b.axes)
    two = fit_pca(x[:2], 3)  # two points span one direction
    assert np.count_nonzero(np.linalg.norm(two.axes, axis=1)) == 1
    flat = fit_pca(np.ones((10, 8), np.float32), 2)
    assert not flat.axes.any() and not flat.variance.any()
    with pytest.raises(ValueError, match="NaN"):
        fit_pca(np.full((3, 3), np.nan, np.float32), 1)


# ------------------------------------------------------------------------------------------ recipe on known data
@pytest.mark.parametrize("joint", [False, True])
def test_foreground_mask_matches_the_object(joint: bool) -> None:
    (t1, l1), (t2, l2) = scene(0, 5, 5), scene(1, 1, 9, order=(2, 0, 1))
    results = fit_parts([t1, t2], joint=joint)
    for r, labels in zip(results, [l1, l2], strict=True):
        assert r.has_foreground and r.note == ""
        assert iou(r.foreground, labels >= 0) > 0.9
        assert r.separation > 0.9
        assert r.fg_score.min() >= 0 and r.fg_score.max() <= 1
        assert r.fg_score[labels >= 0].mean() > r.fg_score[labels < 0].mean()  # high score = foreground
        assert not r.rgb[~r.foreground].any()  # background carries no colour
        assert r.rgb.min() >= 0 and r.rgb.max() <= 1 and r.components.shape == (GRID, GRID, 3)


def test_sign_rule_does_not_depend_on_the_arbitrary_pca_sign() -> None:
    tokens, labels = scene(2, 4, 6)
    obj = labels >= 0
    # Negated tokens flip the first component's scores; the mirrored scene moves the object off-centre sideways.
    for t, expect in [(tokens, obj), (-tokens, obj), (tokens[:, ::-1].copy(), obj[:, ::-1])]:
        (r,) = fit_parts([t])
        assert iou(r.foreground, expect) > 0.9


def test_a_large_central_object_touching_no_border_is_still_the_foreground() -> None:
    # 10x10 of 16x16 = 39% of the area: smaller than the background but not by far; the border decides.
    tokens, labels = scene(3, 3, 3, side=10)
    (r,) = fit_parts([tokens])
    assert iou(r.foreground, labels >= 0) > 0.9


def test_a_close_up_bigger_than_the_background_is_the_foreground_when_it_touches_one_edge_only() -> None:
    # 12x12 of 16x16 = 56% of the area, standing on the bottom edge: the smaller-region rule alone would pick the
    # background; the background's contact with three borders outweighs it.
    tokens, labels = scene(12, 4, 2, side=12)
    (r,) = fit_parts([tokens])
    assert iou(r.foreground, labels >= 0) > 0.9


def test_joint_gives_the_same_part_the_same_colour_in_every_image() -> None:
    (t1, l1), (t2, l2), (t3, l3) = scene(4, 5, 5), scene(5, 9, 1, order=(1, 2, 0)), scene(6, 0, 10, order=(2, 0, 1))
    results = fit_parts([t1, t2, t3], joint=True)
    means = [np.array([r.rgb[lab == p].mean(0) for p in range(3)]) for r, lab in zip(results, [l1, l2, l3],
                                                                                      strict=True)]
    for other in means[1:]:
        dist = np.linalg.norm(means[0][:, None] - other[None], axis=2)  # part i of image 0 vs part j of the other
        assert (dist.argmin(axis=1) == np.arange(3)).all()
        assert np.diag(dist).max() < 0.3 < np.min(dist + np.eye(3) * 9)
    assert results[0].basis is results[1].basis is results[2].basis


def test_one_image_joint_equals_per_image() -> None:
    tokens, _ = scene(7, 2, 8)
    (a,), (b,) = fit_parts([tokens], joint=True), fit_parts([tokens], joint=False)
    assert np.array_equal(a.foreground, b.foreground)
    assert np.allclose(a.rgb, b.rgb) and np.allclose(a.components, b.components)


def test_threshold_is_monotone_and_validated() -> None:
    tokens, _ = scene(8, 5, 5, noise=0.6)
    low, high = fit_parts([tokens], threshold=0.3)[0], fit_parts([tokens], threshold=0.7)[0]
    assert high.foreground.sum() <= low.foreground.sum()
    assert not (high.foreground & ~low.foreground).any()
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            fit_parts([tokens], threshold=bad)


def test_uniform_tokens_have_no_foreground_and_no_nan() -> None:
    (r,) = fit_parts([np.ones((8, 8, 16), np.float32)])
    assert not r.has_foreground and not r.foreground.any() and "alike" in r.note
    assert np.isfinite(r.rgb).all() and np.isfinite(r.fg_score).all()
    assert r.coloured.all()  # no foreground: the whole image is coloured (flat, as there is nothing to show)
    picture = render_overlay(np.zeros((40, 40, 3), np.uint8), r)
    assert picture.shape == (40, 40, 3)


def test_a_blank_image_in_a_joint_set_does_not_change_the_others_colours() -> None:
    tokens, _ = scene(9, 5, 5)
    alone = fit_parts([tokens], joint=True)[0]
    blank, with_blank = fit_parts([np.zeros((10, 12, D), np.float32), tokens], joint=True)
    assert not blank.has_foreground and blank.grid == (10, 12)
    assert np.allclose(with_blank.rgb, alone.rgb)
    assert np.isfinite(blank.rgb).all()


def test_fewer_than_three_foreground_patches_pad_the_components() -> None:
    rng = np.random.default_rng(10)
    tokens = rng.normal(0, 0.05, (GRID, GRID, D)).astype(np.float32)
    tokens[7, 7, 1] += 5.0
    tokens[7, 8, 1] += 5.0
    (r,) = fit_parts([tokens], min_separation=0.0)
    assert r.foreground.sum() == 2 and r.foreground[7, 7] and r.foreground[7, 8]
    assert np.isfinite(r.rgb).all() and np.isfinite(r.components).all()
    assert r.rgb.min() >= 0 and r.rgb.max() <= 1


def test_bad_token_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="grid"):
        fit_parts([np.zeros((10, 8), np.float32)], grids=[(3, 3)])
    with pytest.raises(ValueError, match="NaN"):
        fit_parts([np.full((4, 4, 8), np.nan, np.float32)])
    with pytest.raises(ValueError, match="-d"):
        fit_parts([np.zeros((4, 4, 8), np.float32), np.zeros((4, 4, 9), np.float32)])
    assert fit_parts([]) == []


# ------------------------------------------------------------------------------------------------------- rendering
def test_render_modes_sizes_and_backgrounds() -> None:
    tokens, _ = scene(11, 5, 5)
    (r,) = fit_parts([tokens])
    photo = np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8)  # not a multiple of 16
    bg = ~upsample_grid(r.coloured.astype(np.uint8), (97, 131), "nearest").astype(bool)
    assert bg.any() and (~bg).any()

    parts = render_overlay(photo, r, mode="parts", background="dark")
    assert parts.shape == photo.shape and parts.dtype == np.uint8
    assert not parts[bg].any()
    dimmed = render_overlay(photo, r, mode="parts", background="dimmed")
    assert np.abs(dimmed[bg].astype(int) - photo[bg] * DIM).max() <= 1
    see_through = render_overlay(photo, r, mode="blend", alpha=0.0)
    assert np.array_equal(see_through[~bg], photo[~bg])
    side = render_overlay(photo, r, mode="side", upsample="bicubic", background="dimmed")
    assert side.shape == (97, 262, 3) and np.array_equal(side[:, :131], photo)
    with pytest.raises(ValueError, match="mode"):
        render_overlay(photo, r, mode="sketch")
    with pytest.raises(ValueError, match="upsampl"):
        render_overlay(photo, r, upsample="lanczos")


# ------------------------------------------------------------------------------------- real photos, tiny backbone
@pytest.fixture(scope="module")
def model():
    return tiny_backbone(registers=4)


def test_patch_tokens_on_real_and_awkward_images(model, skimage_data_dir: Path, tmp_path: Path) -> None:
    astronaut = load_rgb(skimage_data_dir / "astronaut.png")
    coffee = load_rgb(skimage_data_dir / "coffee.png")
    jpg = tmp_path / "chelsea.jpg"
    Image.open(skimage_data_dir / "chelsea.png").convert("RGB").save(jpg, quality=90)
    images = [
        astronaut,
        coffee,
        np.zeros((120, 90, 3), np.uint8),  # all black
        np.full((64, 64, 3), 128, np.uint8),  # flat grey
        np.tile(coffee[:20, :20], (1, 20, 1)),  # a 20:1 panorama, 20x400
        astronaut[:5, :5].copy(),  # smaller than one patch
        jpg,  # a path: decoded at reduced size, reported at full size
        load_rgb(skimage_data_dir / "rocket.jpg")[:400, :600],  # same grid as coffee: batched with it
    ]
    feats = patch_tokens(model, images, resolution=112, precision="fp32", batch_size=4)
    assert len(feats) == len(images)
    for f, img in zip(feats, images, strict=True):
        size = (300, 451) if isinstance(img, Path) else img.shape[:2]
        assert f.size == size
        assert f.tokens.shape == (f.grid[0] * f.grid[1], model.embed_dim) and f.tokens.dtype == np.float32
        assert np.isfinite(f.tokens).all()
    assert feats[0].grid == (8, 8) and feats[1].grid == (8, 12) and feats[7].grid == (8, 12)
    assert feats[4].grid[1] > 10 * feats[4].grid[0]  # the panorama keeps its shape

    # Batching must not change the numbers: same-grid images alone vs together.
    alone = patch_tokens(model, [coffee], resolution=112, precision="fp32")[0]
    assert np.allclose(alone.tokens, feats[1].tokens, atol=1e-4)

    results = fit_parts([f.tokens for f in feats], [f.grid for f in feats], joint=True)
    photos = [load_rgb(img) if isinstance(img, Path) else img for img in images]
    for r, photo in zip(results, photos, strict=True):
        assert np.isfinite(r.rgb).all() and np.isfinite(r.fg_score).all()
        for upsample in ("nearest", "bicubic"):
            out = render_overlay(photo, r, mode="blend", upsample=upsample, background="dimmed")
            assert out.shape == photo.shape and out.dtype == np.uint8


def test_patch_tokens_default_precision_runs(model, skimage_data_dir: Path) -> None:
    img = load_rgb(skimage_data_dir / "chelsea.png")
    (f,) = patch_tokens(model, [img], resolution=56)  # "auto": bf16 autocast on CPUs fast at it
    assert f.grid == (4, 6) and np.isfinite(f.tokens).all()
    with pytest.raises(ValueError):
        patch_tokens(model, [img], resolution=0)
