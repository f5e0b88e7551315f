"""A picture of a library map: every photo as a dot coloured by cluster, and a spread-out sample of thumbnails
(the CLI's `map --out`, the README's map figure). The layout itself is `engine.viz.umap_layout`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# 20 well-separated colours (Tableau 20 order) for cluster labels on a dark background.
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150),
    (197, 176, 213), (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229), (127, 127, 127),
    (199, 199, 199),
], dtype=np.uint8)


def render_map(
    coords: np.ndarray,
    thumbnails: Sequence[np.ndarray | None] | Callable[[int], np.ndarray | None] | None = None,
    labels: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    size: tuple[int, int] = (1600, 1200),
    sample: int = 300,
    thumb: int = 48,
    seed: int = 0,
) -> np.ndarray:
    """A picture of the map, ``uint8`` RGB of ``size`` (width, height): every point as a dot, plus thumbnails.

    Dots take ``colors`` ((N, 3) uint8), else a palette colour per label, else light grey. Up to ``sample``
    thumbnails are drawn at their points, at most one per ``thumb``-sized cell of the canvas so they spread over the
    whole map instead of piling up in dense clusters. ``thumbnails`` is a list aligned with ``coords`` or a callable
    ``index -> RGB array``; it is asked only for the sampled points (so a caller can decode just those), and an
    entry of None is skipped.
    """
    import cv2

    width, height = size
    if width < 16 or height < 16:
        raise ValueError(f"the picture must be at least 16x16, got {width}x{height}")
    pts = np.asarray(coords, dtype=np.float64)
    if pts.ndim != 2 or (len(pts) and pts.shape[1] != 2):
        raise ValueError(f"expected (N, 2) coordinates, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("coordinates hold NaN or infinite values")
    n = len(pts)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = (24, 24, 28)
    if n == 0:
        return canvas
    dot_colours = _dot_colours(n, labels, colors)
    thumb = max(4, min(thumb, width // 2, height // 2))
    xy = _to_pixels(pts, width, height, margin=thumb // 2 + 4)

    radius = 2 if n < 20000 else 1
    for dy in range(-radius + 1, radius):
        for dx in range(-radius + 1, radius):
            ys = np.clip(xy[:, 1] + dy, 0, height - 1)
            xs = np.clip(xy[:, 0] + dx, 0, width - 1)
            canvas[ys, xs] = dot_colours

    if thumbnails is None or sample <= 0:
        return canvas
    get = thumbnails if callable(thumbnails) else (lambda i: thumbnails[i])
    if not callable(thumbnails) and len(thumbnails) != n:
        raise ValueError(f"{len(thumbnails)} thumbnails for {n} points")
    for i in _spread_sample(xy, thumb, sample, seed):
        img = get(int(i))
        if img is None:
            continue
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) == 0:
            raise ValueError(f"thumbnail {i} is not an HxWx3 uint8 RGB array")
        scale = (thumb - 2) / max(img.shape[:2])
        tw, th = max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))
        small = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        framed = np.empty((th + 2, tw + 2, 3), np.uint8)
        framed[:] = dot_colours[i]
        framed[1:-1, 1:-1] = small
        _paste(canvas, framed, int(xy[i, 0]), int(xy[i, 1]))
    return canvas


def _dot_colours(n: int, labels: np.ndarray | None, colors: np.ndarray | None) -> np.ndarray:
    if colors is not None:
        c = np.asarray(colors)
        if c.shape != (n, 3):
            raise ValueError(f"colors must be ({n}, 3), got {c.shape}")
        return c.astype(np.uint8)
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != (n,):
            raise ValueError(f"labels must be ({n},), got {lab.shape}")
        _, codes = np.unique(lab, return_inverse=True)
        return PALETTE[codes % len(PALETTE)]
    return np.full((n, 3), 200, np.uint8)


def _to_pixels(pts: np.ndarray, width: int, height: int, margin: int) -> np.ndarray:
    """Fit the points into the canvas with one scale for both axes (a map must not be stretched)."""
    low, high = pts.min(axis=0), pts.max(axis=0)
    span = high - low
    room = np.array([width - 1 - 2 * margin, height - 1 - 2 * margin], np.float64).clip(min=1)
    scale = float(np.min(room / np.where(span > 0, span, np.inf))) if (span > 0).any() else 0.0
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    xy = centre + (pts - (low + high) / 2) * scale
    xy[:, 1] = height - 1 - xy[:, 1]  # y grows upward on a map, downward in an image
    return np.rint(xy).astype(np.intp)


def _spread_sample(xy: np.ndarray, cell: int, sample: int, seed: int) -> np.ndarray:
    """At most one random point per ``cell``-sized square, then at most ``sample`` of those squares at random."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(xy))
    keys = (xy[order, 1] // cell) * (1 << 20) + xy[order, 0] // cell
    _, first = np.unique(keys, return_index=True)
    chosen = order[first]
    if len(chosen) > sample:
        chosen = rng.choice(chosen, size=sample, replace=False)
    return np.sort(chosen)


def _paste(canvas: np.ndarray, tile: np.ndarray, cx: int, cy: int) -> None:
    """Draw ``tile`` centred on (cx, cy), clipped at the canvas edges."""
    th, tw = tile.shape[:2]
    top, left = cy - th // 2, cx - tw // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + th, canvas.shape[0]), min(left + tw, canvas.shape[1])
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = tile[y0 - top : y1 - top, x0 - left : x1 - left]


__all__ = ["PALETTE", "render_map"]
