"""UMAP layouts on arrays, placing new points, the layout cache, k-means clusters and the map picture.

umap-learn compiles its numba code on the first fit and the first transform of a process (several seconds each), so
this file does exactly one UMAP fit, shared by the tests that need it; everything else runs on plain arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import pairwise_distances

from engine.viz.map_render import PALETTE, render_map
from engine.viz.umap_layout import (
    Layout,
    LayoutCacheError,
    _embed_new,
    fit_layout,
    kmeans_clusters,
    knn_agreement,
    load_layout,
    place_new,
    save_layout,
    should_refit,
)

DIM = 64


def clustered(n_per: int, seed: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """k well-separated clusters of unit vectors (fixed centres, so two calls share them)."""
    centres = np.random.default_rng(123).normal(size=(k, DIM))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), n_per)
    x = centres[labels] + rng.normal(0, 0.25, (len(labels), DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def fitted() -> tuple[Layout, np.ndarray, np.ndarray]:
    x, labels = clustered(100, seed=0)
    # A seed makes umap-learn's own transform deterministic, so place_new can be compared with it exactly.
    return fit_layout(x, n_neighbors=10, pca_dims=16, random_state=0, keep_reducer=True), x, labels


def nearest_centroid(coords: np.ndarray, layout_coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
    centroids = np.array([layout_coords[labels == c].mean(0) for c in np.unique(labels)])
    return np.linalg.norm(coords[:, None] - centroids[None], axis=2).argmin(axis=1)


def test_layout_keeps_clusters_together_and_places_new_points(fitted, tmp_path: Path) -> None:
    layout, _, labels = fitted
    assert layout.coords.shape == (300, 2) and layout.coords.dtype == np.float32
    assert np.isfinite(layout.coords).all()
    assert layout.metric == "euclidean" and layout.pca is not None and layout.pca.axes.shape == (16, DIM)
    assert knn_agreement(layout.coords, labels, k=10) > 0.95

    new, new_labels = clustered(10, seed=1)
    placed = place_new(layout, new)
    assert placed.shape == (30, 2) and placed.dtype == np.float32
    assert (nearest_centroid(placed, layout.coords, labels) == new_labels).mean() > 0.9
    # umap-learn's own transform lands in the same places: identical given its exact float64 distances (below 4096
    # points it searches exhaustively too), close with faiss's float32 ones (SGD amplifies 1e-6 differences).
    reduced = layout.pca.project(new)
    theirs = layout.reducer.transform(reduced)
    span = float(np.ptp(layout.coords, axis=0).max())
    assert np.median(np.linalg.norm(placed - theirs, axis=1)) < 0.05 * span
    # The distances exactly as umap-learn computes them in transform (its own numba metric through sklearn).
    dmat = pairwise_distances(reduced, layout.reference, metric=layout.reducer._input_distance_func)
    k = layout.params["k"]
    idx = np.argsort(dmat, axis=1)[:, :k]
    same_input = _embed_new(layout.coords, idx.astype(np.int32), np.take_along_axis(dmat, idx, 1).astype(np.float32),
                            layout.params, np.inf)
    assert np.allclose(same_input, theirs, atol=1e-4)
    scaled = place_new(layout, new * 3.0)  # any length: vectors are normalised first
    assert np.median(np.linalg.norm(scaled - placed, axis=1)) < 0.05 * span

    path = save_layout(layout, tmp_path / "maps" / "model-a")
    assert path.name == "layout.npz" and not list(path.parent.glob(".*tmp"))
    again = load_layout(path.parent)
    assert again.reducer is None  # never saved: plain arrays only
    assert np.array_equal(again.coords, layout.coords) and again.params == layout.params
    assert np.array_equal(again.reference, layout.reference) and np.array_equal(again.pca.axes, layout.pca.axes)
    assert np.allclose(place_new(again, new), placed, atol=1e-5)

    with pytest.raises(ValueError, match="64-d"):
        place_new(layout, np.zeros((2, 10), np.float32))
    assert place_new(layout, np.zeros((0, DIM), np.float32)).shape == (0, 2)


def test_layout_cache_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(LayoutCacheError, match="no cached map"):
        load_layout(tmp_path)
    (tmp_path / "layout.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(LayoutCacheError, match="unreadable"):
        load_layout(tmp_path)


def test_tiny_inputs_get_a_pca_layout_without_umap() -> None:
    assert fit_layout(np.zeros((0, 8), np.float32)).coords.shape == (0, 2)
    for n in (1, 2, 3):
        x = np.random.default_rng(n).normal(size=(n, 8)).astype(np.float32)
        layout = fit_layout(x)
        assert layout.method == "pca" and layout.coords.shape == (n, 2) and np.isfinite(layout.coords).all()
        assert np.allclose(place_new(layout, x[:1]), layout.coords[:1], atol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        fit_layout(np.full((5, 8), np.nan, np.float32))


def test_should_refit() -> None:
    assert not should_refit(1000, 0)
    assert not should_refit(1000, 100)  # 9% new
    assert should_refit(1000, 300)  # 23% new
    assert should_refit(1000, 300, share=0.5) is False
    assert should_refit(0, 5)  # nothing fitted yet
    with pytest.raises(ValueError):
        should_refit(-1, 3)


def test_knn_agreement_on_known_layouts() -> None:
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(0, 1, (50, 2)), rng.normal(100, 1, (50, 2))])
    labels = np.repeat([0, 1], 50)
    assert knn_agreement(blobs, labels, k=10) == 1.0
    shuffled = rng.permutation(labels)
    assert 0.3 < knn_agreement(blobs, shuffled, k=10) < 0.7
    # Two points on one spot with different labels: each one's neighbour is the other, never itself.
    dupes = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 0.1]])
    assert knn_agreement(dupes, np.array([0, 1, 1, 1]), k=1) == 0.5
    with pytest.raises(ValueError):
        knn_agreement(blobs[:1], labels[:1])


def test_kmeans_recovers_separated_clusters() -> None:
    x, labels = clustered(80, seed=2, k=4)
    found = kmeans_clusters(x * 5.0, 4)
    assert found.shape == (320,) and found.dtype == np.int64
    # Each true cluster maps to exactly one found label and vice versa.
    pairs = {(int(a), int(b)) for a, b in zip(labels, found, strict=True)}
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    # 20 separated groups of 30: FAISS's own random seeding splits some and merges others; k-means++ seeds do not.
    rng = np.random.default_rng(5)
    many = np.repeat(np.arange(20), 30)
    y = rng.normal(size=(20, DIM))[many] + rng.normal(0, 0.2, (600, DIM))
    pairs = set(zip(many.tolist(), kmeans_clusters(y, 20, seed=3).tolist(), strict=True))
    assert len(pairs) == 20 and len({b for _, b in pairs}) == 20
    assert set(kmeans_clusters(x[:3], 10)) <= {0, 1, 2}  # k capped at N
    assert not kmeans_clusters(x[:5], 1).any()
    assert kmeans_clusters(np.zeros((0, DIM), np.float32), 3).shape == (0,)


def test_render_map_draws_dots_and_a_spread_sample_of_thumbnails() -> None:
    rng = np.random.default_rng(3)
    coords = np.concatenate([rng.normal(0, 1, (400, 2)), rng.normal(20, 1, (400, 2))])
    labels = np.repeat([0, 1], 400)
    asked: list[int] = []

    def thumb(i: int):
        asked.append(i)
        if i % 7 == 0:
            return None  # a missing thumbnail is skipped
        return np.full((30, 20, 3), (255, 0, 0) if labels[i] == 0 else (0, 0, 255), np.uint8)

    pic = render_map(coords, thumb, labels=labels, size=(640, 480), sample=25, thumb=32)
    assert pic.shape == (480, 640, 3) and pic.dtype == np.uint8
    assert 0 < len(asked) <= 25 and len(set(asked)) == len(asked)
    flat = pic.reshape(-1, 3)
    assert ((flat == (255, 0, 0)).all(axis=1)).any() and ((flat == (0, 0, 255)).all(axis=1)).any()
    assert ((flat == PALETTE[0]).all(axis=1)).any()  # the dots of cluster 0
    left, right = pic[:, :320], pic[:, 320:]  # one cluster per half: the aspect-kept scale puts them apart
    assert (left.reshape(-1, 3) == (255, 0, 0)).all(axis=1).any() != (right.reshape(-1, 3) == (255, 0, 0)).all(
        axis=1).any()

    listed = [None] * len(coords)
    plain = render_map(coords, listed, size=(200, 100))
    assert plain.shape == (100, 200, 3)
    assert render_map(np.zeros((0, 2)), size=(100, 100)).shape == (100, 100, 3)
    assert render_map(np.ones((5, 2)), size=(100, 100)).any()  # all on one spot: drawn in the centre
    with pytest.raises(ValueError, match="thumbnails"):
        render_map(coords, [None] * 3)


def test_graph_neighbours_match_an_exact_search() -> None:
    """The k-NN graph handed to umap-learn: exact when small, an inverted-file index (most neighbours right) past
    EXACT_GRAPH_MAX, in umap-learn's distance units, each row its own first neighbour."""
    from engine.viz import umap_layout

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 24))
    x = (centres[rng.integers(0, 40, 3000)] + rng.normal(0, 0.3, (3000, 24))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact_d = pairwise_distances(x, x)
    truth = np.argsort(exact_d, axis=1)[:, :10]
    idx, dist = umap_layout.graph_neighbours(x, 10, "euclidean")
    assert idx.shape == dist.shape == (3000, 10) and idx.dtype == np.int32 and dist.dtype == np.float32
    assert (idx[:, 0] == np.arange(3000)).all() and np.allclose(dist[:, 0], 0, atol=1e-3)
    assert np.allclose(dist, np.take_along_axis(exact_d, idx, 1), atol=1e-3)
    assert np.mean([len(set(a) & set(b)) for a, b in zip(idx, truth, strict=True)]) > 9.99  # float32 vs float64 ties
    cos_idx, cos_dist = umap_layout.graph_neighbours(x, 10, "cosine")
    assert np.allclose(cos_dist, np.take_along_axis(1 - x @ x.T, cos_idx, 1), atol=1e-4)

    old = umap_layout.EXACT_GRAPH_MAX
    umap_layout.EXACT_GRAPH_MAX = 1000  # force the inverted-file path on a small input
    try:
        ivf_idx, ivf_dist = umap_layout.graph_neighbours(x, 10, "euclidean")
    finally:
        umap_layout.EXACT_GRAPH_MAX = old
    assert (ivf_idx >= 0).all() and (ivf_idx[:, 0] == np.arange(3000)).all()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ivf_idx, truth, strict=True)])
    assert recall > 0.9
    assert np.allclose(ivf_dist, np.take_along_axis(exact_d, ivf_idx, 1), atol=1e-3)


def test_default_epochs_shrink_only_for_large_maps() -> None:
    from engine.viz.umap_layout import default_epochs

    assert default_epochs(5000) is None and default_epochs(50000) is None
    assert default_epochs(75000) == 133 and default_epochs(100000) == 100 and default_epochs(10**6) == 100
