"""Patch-similarity heatmaps: click a patch, see where the same thing is in this image and in others.

The cosine similarity of one patch token to every patch of its own image and of other images. Besides showing what
the model groups with a region, it answers "why did this match" for region search: the best-matching location in
each other image is the patch the region search lined up with the query.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.viz.patches import PatchTokens, patch_at, patch_center, upsample_grid

__all__ = ["Heatmap", "patch_similarity", "render_heatmap"]

Other = PatchTokens | tuple[np.ndarray, tuple[int, int], tuple[int, int]]


@dataclass(eq=False)
class Heatmap:
    """Similarity of one image's patches to the query patch."""

    sim: np.ndarray  # (gh, gw) float32 cosine similarity in [-1, 1]
    size: tuple[int, int]  # (H, W) of the image it belongs to
    best_xy: tuple[float, float]  # pixel (x, y) of the centre of the most similar patch
    best_score: float
    upsample: str = "bicubic"

    @functools.cached_property
    def upsampled(self) -> np.ndarray:
        """``sim`` at the image's pixel size, ``(H, W)`` float32 in [-1, 1].

        Computed on first access and kept: at 12 MP it is 48 MB, which a list of many heatmaps should not pay for
        unless someone looks at it.
        """
        return np.clip(upsample_grid(self.sim, self.size, self.upsample), -1.0, 1.0)

    @property
    def grid(self) -> tuple[int, int]:
        return self.sim.shape[0], self.sim.shape[1]


def patch_similarity(
    query_tokens: np.ndarray,
    query_grid: tuple[int, int],
    point_xy: tuple[float, float],
    image_size: tuple[int, int],
    others: Sequence[Other] = (),
    upsample: str = "bicubic",
) -> list[Heatmap]:
    """Heatmaps for the query image (first) and for each of ``others``, in order.

    ``query_tokens``: ``(gh*gw, D)`` or ``(gh, gw, D)`` patch tokens of the image clicked on; ``point_xy``: the pixel
    clicked, in that image's ``image_size`` (H, W) coordinates (clamped to the image). ``others``: ``PatchTokens``
    or ``(tokens, grid, size)`` tuples. The query patch's similarity to itself is 1, the maximum of its own map
    (a patch identical to it elsewhere ties). Tokens of zero length have similarity 0 to everything.
    """
    if upsample not in ("nearest", "bicubic"):
        raise ValueError(f"unknown upsampling {upsample!r}; choose nearest or bicubic")
    query = _unit_rows(query_tokens, query_grid, "query")
    row, col = patch_at(point_xy, query_grid, image_size)
    q = query[row * query_grid[1] + col]
    maps = [_heatmap(query, query_grid, image_size, q, upsample, anchor=(row, col))]
    for i, other in enumerate(others):
        tokens, grid, size = (other.tokens, other.grid, other.size) if isinstance(other, PatchTokens) else other
        unit = _unit_rows(tokens, tuple(grid), f"image {i}")
        if unit.shape[1] != query.shape[1]:
            raise ValueError(f"image {i}: tokens are {unit.shape[1]}-d, the query's are {query.shape[1]}-d")
        maps.append(_heatmap(unit, tuple(grid), tuple(size), q, upsample))
    return maps


def _unit_rows(tokens: np.ndarray, grid: tuple[int, int], name: str) -> np.ndarray:
    arr = np.asarray(tokens, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr.reshape(-1, arr.shape[2])
    if arr.ndim != 2 or arr.shape[0] != grid[0] * grid[1] or arr.shape[0] == 0:
        raise ValueError(f"{name}: tokens of shape {np.shape(tokens)} do not fill a {grid[0]}x{grid[1]} grid")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: tokens hold NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.divide(arr, norms, out=np.zeros_like(arr), where=norms > 0)


def _heatmap(
    unit: np.ndarray,
    grid: tuple[int, int],
    size: tuple[int, int],
    q: np.ndarray,
    upsample: str,
    anchor: tuple[int, int] | None = None,
) -> Heatmap:
    sim = np.clip(unit @ q, -1.0, 1.0).reshape(grid).astype(np.float32)
    if anchor is not None:
        # Rounding can leave another patch a hair above the query's own 0.99999994; the clicked patch is the answer.
        sim[anchor] = 1.0 if np.any(q) else 0.0
        best = anchor
    else:
        best = np.unravel_index(int(np.argmax(sim)), grid)
    best_rc = (int(best[0]), int(best[1]))
    return Heatmap(sim=sim, size=(int(size[0]), int(size[1])), best_xy=patch_center(best_rc, grid, size),
                   best_score=float(sim[best_rc]), upsample=upsample)


def render_heatmap(
    image: np.ndarray,
    heatmap: Heatmap,
    alpha: float = 0.5,
    value_range: tuple[float, float] | None = None,
    mark_best: bool = True,
) -> np.ndarray:
    """The heatmap in the turbo colormap laid over the photo (``uint8`` RGB, the photo's size).

    ``value_range`` maps similarities to the colormap's ends; by default the map's own min..max, so the hottest
    spot is always red. Pass a fixed range (e.g. ``(0, 1)``) to compare several images on one scale. A ring marks
    the best match unless ``mark_best`` is False.
    """
    import cv2

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
    if image.shape[:2] != heatmap.size:
        raise ValueError(f"the image is {image.shape[1]}x{image.shape[0]} but the heatmap was made for "
                         f"{heatmap.size[1]}x{heatmap.size[0]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie between 0 and 1, got {alpha}")
    low, high = value_range if value_range is not None else (float(heatmap.sim.min()), float(heatmap.sim.max()))
    span = high - low
    levels = np.clip((heatmap.sim - low) / span, 0.0, 1.0) if span > 1e-12 else np.full(heatmap.grid, 0.5)
    # Colour the small grid, then upsample the 8-bit levels: much cheaper than a float map at 12 MP.
    small = (levels * 255.0 + 0.5).astype(np.uint8)
    big = upsample_grid(small, heatmap.size, heatmap.upsample)
    colour = cv2.applyColorMap(big, cv2.COLORMAP_TURBO)[..., ::-1]  # BGR -> RGB
    out = cv2.addWeighted(np.ascontiguousarray(colour), alpha, image, 1.0 - alpha, 0.0)
    if mark_best:
        h, w = heatmap.size
        radius = max(3, round(0.5 * max(h / heatmap.grid[0], w / heatmap.grid[1])))
        centre = (round(heatmap.best_xy[0] - 0.5), round(heatmap.best_xy[1] - 0.5))
        thick = max(1, radius // 6)
        cv2.circle(out, centre, radius + thick, (0, 0, 0), thick, cv2.LINE_AA)
        cv2.circle(out, centre, radius, (255, 255, 255), thick, cv2.LINE_AA)
    return out
