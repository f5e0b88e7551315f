"""iBOT block masking and the mask collate (DINOV2_SPEC.md §4.6)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainer.masking import MaskingGenerator, collate_masks


def test_generator_never_exceeds_the_target_and_usually_hits_it():
    rng = random.Random(0)
    gen = MaskingGenerator(16, max_num_patches=0.5 * 16 * 16, rng=rng)
    hits, n = 0, 1000
    for _ in range(n):
        target = int(256 * rng.uniform(0.1, 0.5))  # the ratios the collate asks for
        mask = gen(target)
        assert mask.shape == (16, 16) and mask.dtype == np.bool_
        count = int(mask.sum())
        assert 0 < count <= target
        hits += count == target
    assert 0.88 <= hits / n <= 0.98  # upstream: about 93%


def test_generator_edge_cases():
    gen = MaskingGenerator((4, 6), rng=random.Random(1))
    assert gen.shape == (4, 6) and gen.num_patches == 24 and gen.max_num_patches == 12
    assert not gen(0).any()
    # asked for 12 of 24 cells: never more, always some, mostly all 12; sides stay below the grid's
    counts = []
    for _ in range(50):
        m = gen(12)
        rows, cols = np.nonzero(m)
        assert 0 < m.sum() <= 12 and rows.max() - rows.min() < 4 and cols.max() - cols.min() < 6
        counts.append(int(m.sum()))
    assert counts.count(12) >= 25


def test_single_block_is_a_rectangle():
    rng = random.Random(3)
    gen = MaskingGenerator(16, max_num_patches=128, rng=rng)
    shapes = set()
    for _ in range(100):
        m = np.zeros((16, 16), dtype=bool)
        added = gen._add_block(m, 40)
        assert added > 0  # on an empty 16x16 grid a block of 4..40 cells always fits within 10 tries
        rows, cols = np.nonzero(m)
        box = m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and added == m.sum() <= 40
        h, w = box.shape
        assert 0.3 * 0.5 <= h / w <= (1 / 0.3) * 2  # aspect drawn in [0.3, 1/0.3], then sides rounded
        shapes.add((h, w))
    assert len(shapes) >= 10  # random rectangles, not one fixed block


def test_collate_masks_counts_and_weights():
    rng = random.Random(0)
    gen = MaskingGenerator(16, max_num_patches=128, rng=rng)
    b2 = 8  # 2 global crops x B = 4
    out = collate_masks(b2, gen, ratio=(0.1, 0.5), sample_probability=0.5, rng=rng)
    masks = out["collated_masks"]
    assert masks.shape == (8, 256) and masks.dtype == torch.bool
    per_image = masks.sum(1)
    assert int((per_image > 0).sum()) == int(0.5 * b2) == 4  # masked images = int(0.5 · 2B)
    # weights: 1 / (that image's masked count) per masked token, so they sum to the number of masked images
    assert float(out["masks_weight"].sum()) == pytest.approx(4.0, abs=1e-5)
    n = int(out["n_masked_patches"])
    assert n == int(masks.sum()) == out["mask_indices_list"].numel() == out["masks_weight"].numel()
    torch.testing.assert_close(out["mask_indices_list"], masks.flatten().nonzero().flatten())
    image_of_token = out["mask_indices_list"] // 256
    torch.testing.assert_close(out["masks_weight"], 1.0 / per_image[image_of_token].float())
    # probs = linspace(0.1, 0.5, 5) -> upperbound = int(256·0.2) + int(256·0.3) + int(256·0.4) + int(256·0.5)
    assert out["upperbound"] == 51 + 76 + 102 + 128
    assert n <= out["upperbound"]


def test_collate_masks_stratifies_the_ratios():
    """Masked image i draws from [probs[i], probs[i+1]): sorted counts fall in successive strata."""
    rng = random.Random(5)
    gen = MaskingGenerator(16, max_num_patches=128, rng=rng)
    for _ in range(20):
        out = collate_masks(8, gen, (0.1, 0.5), 0.5, rng=rng)
        counts = sorted(int(c) for c in out["collated_masks"].sum(1) if c > 0)
        assert len(counts) == 4  # int(0.5 · 8) images masked, every one with at least one patch
        bounds = [0.1, 0.2, 0.3, 0.4, 0.5]
        for i, c in enumerate(counts):
            assert c <= int(256 * bounds[i + 1])  # never above its stratum's top


def test_collate_masks_shuffles_which_images_are_masked():
    rng = random.Random(7)
    gen = MaskingGenerator(8, max_num_patches=32, rng=rng)
    masked_positions = set()
    for _ in range(30):
        out = collate_masks(6, gen, (0.1, 0.5), 0.5, rng=rng)
        masked_positions |= {i for i, c in enumerate(out["collated_masks"].sum(1)) if c > 0}
    assert masked_positions == set(range(6))


def test_collate_masks_without_masking():
    gen = MaskingGenerator(8, rng=random.Random(0))
    out = collate_masks(6, gen, (0.1, 0.5), sample_probability=0.0, rng=random.Random(0))
    assert not out["collated_masks"].any()
    assert out["mask_indices_list"].numel() == 0 and out["upperbound"] == 0
    assert int(out["n_masked_patches"]) == 0
