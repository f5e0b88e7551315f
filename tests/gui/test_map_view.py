"""The map: selection fills a list of ids, hover finds the photo under the cursor, zoom swaps dots for thumbnails."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from PySide6.QtCore import QPointF

from app.gui.thumbnails import ThumbnailCache
from app.gui.widgets.map_view import THUMBS_BELOW, MapView


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "JPEG")
    return buf.getvalue()


def _map(qtbot, n: int = 2000) -> tuple[MapView, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    groups = rng.integers(0, 4, n)
    coords = centres[groups] + rng.normal(0, 0.8, (n, 2)).astype(np.float32)
    ids = np.arange(100, 100 + n)
    cache = ThumbnailCache(lambda keys: {k: _jpeg((k % 255, 80, 160)) for k in keys})
    view = MapView(cache)
    qtbot.addWidget(view)
    view.resize(800, 600)
    view.show()
    view.set_points(ids, coords, groups)
    return view, ids, coords


def test_lasso_and_box_select_the_points_inside(qtbot) -> None:
    view, ids, coords = _map(qtbot)
    with qtbot.waitSignal(view.selection_changed) as sig:
        chosen = view.select_shape("lasso", np.array([[7, -3], [13, -3], [13, 3], [7, 3]]))
    inside = ids[(coords[:, 0] > 7) & (coords[:, 0] < 13) & (coords[:, 1] > -3) & (coords[:, 1] < 3)]
    assert sorted(sig.args[0]) == sorted(inside.tolist()) == sorted(chosen)
    assert 300 < len(chosen) < 700  # about one cluster of four
    box = view.select_shape("box", np.array([[-3, -3], [3, 3]]))
    assert set(box).isdisjoint(chosen)


def test_hover_finds_the_nearest_photo(qtbot) -> None:
    view, ids, coords = _map(qtbot)
    qtbot.wait(50)
    target = 17
    scene = view.getViewBox().mapViewToScene(QPointF(*map(float, coords[target])))
    assert view.point_at(scene) == ids[target]


def test_zooming_in_swaps_dots_for_thumbnails(qtbot) -> None:
    view, _ids, coords = _map(qtbot)
    assert view.thumbnails_shown == 0  # 2000 dots visible: no thumbnails
    x, y = map(float, coords[0])
    view.getViewBox().setRange(xRange=(x - 0.3, x + 0.3), yRange=(y - 0.3, y + 0.3), padding=0)
    visible = len(view.visible_indices())
    assert 0 < visible <= THUMBS_BELOW
    qtbot.waitUntil(lambda: view.thumbnails_shown == visible, timeout=5000)
    view.getViewBox().autoRange()
    qtbot.waitUntil(lambda: view.thumbnails_shown == 0, timeout=5000)


def test_highlight_rings_query_and_results(qtbot) -> None:
    view, ids, _ = _map(qtbot)
    view.set_highlight([int(ids[0])], [int(i) for i in ids[1:6]])
    assert len(view.highlight.data) == 6
