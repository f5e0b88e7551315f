"""Lasso, box and hover picking on map coordinates, checked against hand-worked shapes."""

from __future__ import annotations

import numpy as np

from engine.viz.selection import PointLocator, points_in_box, points_in_polygon


def test_square_and_concave_lasso() -> None:
    pts = np.array([[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [2.5, 2.5], [-1, 0]])
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]])
    assert points_in_polygon(pts, square).tolist() == [True, True, True, False, False]
    # An L shape: the notch at (1.5, 1.5) is outside.
    ell = np.array([[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2]])
    assert points_in_polygon(np.array([[0.5, 1.5], [1.5, 0.5], [1.5, 1.5]]), ell).tolist() == [True, True, False]


def test_degenerate_lasso_selects_nothing() -> None:
    pts = np.random.default_rng(0).random((10, 2))
    assert not points_in_polygon(pts, np.array([[0, 0], [1, 1]])).any()


def test_lasso_agrees_with_box_for_a_rectangle_on_many_points() -> None:
    pts = np.random.default_rng(1).uniform(-5, 5, (100_000, 2))
    rect = np.array([[-1, -2], [3, -2], [3, 4], [-1, 4]])
    assert np.array_equal(points_in_polygon(pts, rect), points_in_box(pts, 3, 4, -1, -2))


def test_nearest_point_respects_the_radius() -> None:
    loc = PointLocator(np.array([[0.0, 0.0], [10.0, 0.0]]))
    assert loc.nearest(9.0, 0.5, max_distance=2.0) == 1
    assert loc.nearest(5.0, 0.0, max_distance=2.0) is None
    assert PointLocator(np.zeros((0, 2))).nearest(0, 0, 1) is None
