"""Region vectors: patch tokens pooled over a coarse grid, stored at indexing time for "find this part" searches.

A box drawn on a query image is matched against these cells instead of against every patch token of every
library image (256 x D per image would be ~13x the size of the vectors themselves). Each image keeps the means of
its patch tokens over a 2x2 grid and a 4x4 grid of the model input (the 224 px centre crop), 20 cells in total,
each L2-normalised so that an inner product is a cosine similarity.
"""

from __future__ import annotations

import numpy as np

GRIDS: tuple[int, ...] = (2, 4)
"""Grid sizes, coarse first; cells of one grid are stored row-major."""

N_REGIONS = sum(g * g for g in GRIDS)  # 20


def _bounds(n: int, parts: int) -> list[int]:
    """Split n patches into `parts` runs as evenly as possible (16 -> 0,8,16; 14 over 4 -> 0,3,7,10,14)."""
    return [round(i * n / parts) for i in range(parts + 1)]


def pool_regions(patch: np.ndarray, grid: tuple[int, int] | None = None) -> np.ndarray:
    """(n, H*W, D) patch tokens -> (n, 20, D) float16 cell vectors (2x2 cells, then 4x4 cells, row-major).

    `grid` is the (H, W) patch layout; a square one is assumed when it is omitted. Means are taken in float32 and
    each cell is L2-normalised (an all-zero cell stays zero rather than becoming NaN).
    """
    patch = np.asarray(patch)
    if patch.ndim != 3:
        raise ValueError(f"expected (n, H*W, D) patch tokens, got shape {patch.shape}")
    n, tokens, dim = patch.shape
    if grid is None:
        side = round(tokens**0.5)
        grid = (side, side)
    rows, cols = grid
    if rows * cols != tokens:
        raise ValueError(f"a {rows}x{cols} patch grid has {rows * cols} tokens, got {tokens}")
    if rows < max(GRIDS) or cols < max(GRIDS):
        raise ValueError(f"a {rows}x{cols} patch grid is too small for a {max(GRIDS)}x{max(GRIDS)} region grid")
    tokens_2d = patch.reshape(n, rows, cols, dim).astype(np.float32, copy=False)
    cells = []
    for g in GRIDS:
        rb, cb = _bounds(rows, g), _bounds(cols, g)
        for i in range(g):
            for j in range(g):
                cells.append(tokens_2d[:, rb[i] : rb[i + 1], cb[j] : cb[j + 1]].mean(axis=(1, 2)))
    out = np.stack(cells, axis=1)  # (n, 20, D)
    norms = np.linalg.norm(out, axis=-1, keepdims=True)
    out = out / np.maximum(norms, 1e-12)
    return out.astype(np.float16)


def region_boxes() -> np.ndarray:
    """(20, 4) boxes (x0, y0, x1, y1) of the cells, as fractions of the model's square input crop."""
    boxes = []
    for g in GRIDS:
        for i in range(g):
            for j in range(g):
                boxes.append((j / g, i / g, (j + 1) / g, (i + 1) / g))
    return np.asarray(boxes, dtype=np.float32)
