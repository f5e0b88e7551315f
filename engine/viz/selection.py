"""Picking points on a 2-D map: lasso and box selection, nearest point under the cursor. Vectorised for 100k+."""

from __future__ import annotations

import numpy as np


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Boolean mask of the (N, 2) points inside the closed (M, 2) polygon (even-odd rule, ray casting).

    O(N·M) in numpy: 100k points against a 200-vertex lasso is a few tens of milliseconds.
    """
    points = np.asarray(points, dtype=np.float64)
    poly = np.asarray(polygon, dtype=np.float64)
    if len(poly) < 3 or len(points) == 0:
        return np.zeros(len(points), dtype=bool)
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), dtype=bool)
    xj, yj = poly[-1]
    for xi, yi in poly:
        crosses = (yi > y) != (yj > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (xj - xi) * (y - yi) / (yj - yi) + xi
        inside ^= crosses & (x < x_at)
        xj, yj = xi, yi
    return inside


def points_in_box(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    xa, xb = sorted((x0, x1))
    ya, yb = sorted((y0, y1))
    p = np.asarray(points)
    return (p[:, 0] >= xa) & (p[:, 0] <= xb) & (p[:, 1] >= ya) & (p[:, 1] <= yb)


class PointLocator:
    """Nearest map point to a position, through a k-d tree built once per layout (hover at 100k points)."""

    def __init__(self, points: np.ndarray) -> None:
        from scipy.spatial import cKDTree

        self.points = np.asarray(points, dtype=np.float64)
        self.tree = cKDTree(self.points) if len(self.points) else None

    def nearest(self, x: float, y: float, max_distance: float) -> int | None:
        """Index of the closest point within max_distance (map units), or None."""
        if self.tree is None:
            return None
        d, i = self.tree.query([x, y], k=1, distance_upper_bound=max_distance)
        return None if not np.isfinite(d) else int(i)

    def count_in_view(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return np.flatnonzero(points_in_box(self.points, x0, y0, x1, y1))
