"""UMAP maps of a library: 2-D coordinates where similar photos sit together, k-means clusters, and a picture.

Layout choices (measured in bench/maps.py and shared/ENVIRONMENT.md §5):

* Vectors are L2-normalised first, so distances mean cosine similarity whatever the caller passes.
* ``pca_dims`` (default 50) pre-reduces them with an exact PCA before UMAP. PCA centres the data, after which
  cosine is no longer the right measure, so the reduced vectors use the Euclidean metric; for unit vectors that is
  the chordal distance ``sqrt(2 - 2 cos)``, which the projection preserves up to the discarded variance. Without
  pre-reduction UMAP runs with ``metric="cosine"`` on the vectors themselves.
* ``init="pca"``: faster than the spectral default and stable on large inputs.
* ``random_state=None`` by default: a fixed seed makes umap-learn single-threaded (about 1.4x slower here).
* **Neighbours from faiss.** Past 4096 points umap-learn finds the k-NN graph with pynndescent, whose numba
  code compiles for about 28 s in every new process (it is not cached) before 2 s of real work at 100k points.
  :func:`graph_neighbours` finds the graph with faiss instead (exact up to :data:`EXACT_GRAPH_MAX` points, an
  inverted-file index beyond, recall@15 about 0.96 on bench/maps.py's data, on a par with NN-descent) and hands it
  to umap-learn as ``precomputed_knn``: a fresh 100k map went from 52-65 s to 21-23 s. Up to 4096 points
  umap-learn's own exact search runs, which compiles nothing heavy. On vectors of more than
  :data:`GRAPH_MAX_DIM` dimensions (``pca_dims=None`` on 384-d features) NN-descent stays: there faiss's
  inverted-file search cost 5x more than warm NN-descent (about 22 s against 4 s at 100k).
* ``n_epochs``: umap-learn's default (500 up to 10k points, 200 beyond) until 50k points, then fewer, down to 100
  from 100k: each epoch costs about 0.1 s per 100k points, and the 10-NN agreement of the map on labelled data
  stayed at 0.977-0.979 from 200 down to 100 epochs at 100k (bench/maps.py).
* The first fit in a process still compiles umap-learn's own numba code (about 5 s); run it in a worker.
* Fewer than :data:`MIN_UMAP_POINTS` points cannot form a UMAP graph; they get a plain 2-D PCA layout.

**Placing new points.** :func:`place_new` does what ``UMAP.transform`` does after its neighbour search (fuzzy
membership of each new point to its neighbours, start at their weighted mean, a short optimisation against the
fixed map, with umap-learn's own functions and defaults), but finds the neighbours by an exact brute-force search
(faiss) among the fitted vectors instead of umap-learn's NN-descent index. That index can only be stored as a
pickle (about 4 KB per point), and umap-learn's ``transform`` was the slower of the two in bench/maps.py: 1.8-2.5 s
for 1k new points against 0.5-1.2 s here, on maps of 10k-100k points (a busy 2-core machine). So a
:class:`Layout` is plain arrays, and :func:`save_layout` writes an ``.npz`` read back with ``allow_pickle=False``:
a cached map can be loaded from anywhere safely. The first placement in a process compiles umap-learn's numba
functions (about 7 s); a process that has fitted a map has compiled them already.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write
from engine.viz.pca import PcaBasis, fit_pca

__all__ = [
    "MIN_UMAP_POINTS",
    "Layout",
    "LayoutCacheError",
    "fit_layout",
    "graph_neighbours",
    "kmeans_clusters",
    "knn_agreement",
    "load_layout",
    "place_new",
    "save_layout",
    "should_refit",
]

MIN_UMAP_POINTS = 4
UMAP_EXACT_KNN_MAX = 4096  # umap-learn searches exhaustively up to here, with no NN-descent to compile
EXACT_GRAPH_MAX = 20000  # past this, graph_neighbours uses an inverted-file index instead of a flat scan
GRAPH_MAX_DIM = 64  # graph_neighbours only for vectors this small (PCA-reduced); NN-descent beyond
CACHE_NAME = "layout.npz"
_CACHE_FORMAT = 1

class LayoutCacheError(RuntimeError):
    """A cached layout is missing, unreadable or written by an incompatible version; fit a new one."""


@dataclass
class Layout:
    """A fitted map: the coordinates of the fitted points and what places new points on the same map."""

    coords: np.ndarray  # (N, 2) float32
    reference: np.ndarray  # (N, d) float32: the fitted vectors as UMAP saw them (unit length, PCA-reduced if pca)
    pca: PcaBasis | None  # the pre-reduction; for method "pca", the 2-D layout itself
    metric: str  # "euclidean" (after PCA) or "cosine"
    method: str = "umap"  # "umap", or "pca" for inputs too small for UMAP
    params: dict = field(default_factory=dict)  # fit settings and the UMAP constants placement needs
    reducer: object | None = field(default=None, repr=False, compare=False)  # see fit_layout(keep_reducer=True)

    @property
    def n_fit(self) -> int:
        return len(self.coords)


def _prepare(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"expected an (N, D) array of vectors, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"vectors are {x.shape[1]}-d but the map was fitted on {dim}-d vectors")
    if not np.isfinite(x).all():
        raise ValueError("vectors hold NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(np.divide(x, norms, out=np.zeros_like(x), where=norms > 0))


def fit_layout(
    vectors: np.ndarray,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    pca_dims: int | None = 50,
    random_state: int | None = None,
    n_epochs: int | None = None,
    keep_reducer: bool = False,
) -> Layout:
    """2-D coordinates for ``vectors`` (N, D); see the module notes for the choices made.

    ``keep_reducer`` keeps the fitted ``umap.UMAP`` on the layout (for comparisons with its own ``transform``); it
    holds the NN-descent index, hundreds of MB at 100k points, so it is off by default and never saved. It also
    makes umap-learn find the neighbours itself (NN-descent, compiled on first use), since its ``transform`` needs
    that index.
    """
    x = _prepare(vectors)
    n, d = x.shape
    params = {"n_neighbors": n_neighbors, "min_dist": min_dist, "pca_dims": pca_dims, "random_state": random_state,
              "n_epochs": n_epochs, "dim": d}
    if n < MIN_UMAP_POINTS:
        basis = fit_pca(x, 2) if n else None
        coords = basis.project(x) if basis is not None else np.zeros((0, 2), np.float32)
        return Layout(coords.astype(np.float32), np.zeros((0, d), np.float32), basis, "euclidean", "pca", params)
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be at least 2, got {n_neighbors}")

    import umap

    pca = None
    if pca_dims is not None and d > pca_dims:
        pca = fit_pca(x, pca_dims)
        x = np.ascontiguousarray(pca.project(x))
    metric = "euclidean" if pca is not None else "cosine"
    k = min(n_neighbors, n - 1)
    knn = None
    if n > UMAP_EXACT_KNN_MAX and x.shape[1] <= GRAPH_MAX_DIM and not keep_reducer:  # (see the module notes)
        knn = graph_neighbours(x, k, metric)
    epochs = n_epochs if n_epochs is not None else default_epochs(n)
    reducer = umap.UMAP(n_neighbors=k, min_dist=min_dist, metric=metric, init="pca", random_state=random_state,
                        n_epochs=epochs, precomputed_knn=knn if knn is not None else (None, None, None))
    with _quiet():
        coords = np.asarray(reducer.fit_transform(x), np.float32)
    params.update(k=int(reducer._n_neighbors), a=float(reducer._a), b=float(reducer._b),
                  local_connectivity=float(reducer.local_connectivity),
                  repulsion_strength=float(reducer.repulsion_strength),
                  learning_rate=float(reducer.learning_rate),
                  negative_sample_rate=float(reducer.negative_sample_rate),
                  transform_seed=int(reducer.transform_seed))
    return Layout(coords, x, pca, metric, "umap", params, reducer=reducer if keep_reducer else None)


def default_epochs(n: int) -> int | None:
    """Optimisation epochs for ``n`` points: None (umap-learn's default) up to 50k, then down to 100 at 100k."""
    if n <= 50000:
        return None
    return max(100, round(200 * 50000 / n))


def graph_neighbours(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest rows of ``x`` itself (the row first), as umap-learn's ``precomputed_knn`` wants.

    Exact up to :data:`EXACT_GRAPH_MAX` rows; beyond, an inverted-file index with 2*sqrt(N) lists of which 12 are
    probed: at 100k x 50 (bench/maps.py's data) recall@15 0.964 in 2.0 s on all cores of this machine (2), where
    4*sqrt(N)/16 took 5.4 s for 0.925 and sqrt(N)/8 4.1 s for 0.975 on one core. A map is fitted in a worker of
    its own, so the search takes every core. Rows left short of ``k`` neighbours get an exact search.
    """
    import faiss

    from engine.faiss_runtime import faiss_settings

    n, d = x.shape
    ip = metric == "cosine"
    flat = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
    if n <= EXACT_GRAPH_MAX:
        index = flat
    else:
        index = faiss.IndexIVFFlat(flat, d, int(2 * np.sqrt(n)),
                                   faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2)
        index.cp.seed = 1234  # the same graph, so the same map, for the same vectors
        index.nprobe = 12
    with faiss_settings(None, threads=os.cpu_count() or 1):
        if not index.is_trained:
            index.train(x)
        index.add(x)
        scores, indices = index.search(x, k)
        short = np.flatnonzero((indices < 0).any(axis=1))
        if len(short):
            exact = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
            exact.add(x)
            scores[short], indices[short] = exact.search(x[short], k)
    dists = 1.0 - scores if ip else np.sqrt(np.maximum(scores, 0.0))
    return indices.astype(np.int32), np.maximum(dists, 0.0).astype(np.float32)


def place_new(layout: Layout, vectors: np.ndarray) -> np.ndarray:
    """Coordinates of new points on an existing map, without moving the fitted ones (see the module notes)."""
    x = _prepare(vectors, layout.params.get("dim"))
    if len(x) == 0:
        return np.zeros((0, 2), np.float32)
    if layout.method == "pca":
        if layout.pca is None:
            raise ValueError("this map has no points; fit a new one")
        return layout.pca.project(x).astype(np.float32)
    if layout.pca is not None:
        x = np.ascontiguousarray(layout.pca.project(x))
    p = layout.params
    k = min(int(p["k"]), len(layout.reference))
    indices, dists = _exact_neighbours(layout.reference, x, k, layout.metric)
    return _embed_new(layout.coords, indices, dists, p, disconnect=2.0 if layout.metric == "cosine" else np.inf)


def _exact_neighbours(reference: np.ndarray, queries: np.ndarray, k: int, metric: str):
    """(indices int32, distances float32) of the k nearest reference rows, in umap-learn's distance units."""
    import faiss

    from engine.faiss_runtime import faiss_settings

    index = faiss.IndexFlatIP(reference.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)
    with faiss_settings(len(queries), threads=os.cpu_count() or 1):
        scores, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    dists = 1.0 - scores if metric == "cosine" else np.sqrt(np.maximum(scores, 0.0))
    return indices.astype(np.int32), np.maximum(dists, 0.0).astype(np.float32)


def _embed_new(coords: np.ndarray, indices: np.ndarray, dists: np.ndarray, p: dict, disconnect: float):
    """UMAP.transform's steps after the neighbour search (umap-learn 0.5), with its own numba functions.

    The optimisation runs single-threaded, as umap-learn's does under a fixed seed: placements are reproducible,
    and 1k points are too little work per epoch for threads to pay off (on a busy 2-core machine they cost 2x).
    """
    import scipy.sparse
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import (
        compute_membership_strengths,
        init_graph_transform,
        make_epochs_per_sample,
        smooth_knn_dist,
    )

    n_new, k = indices.shape
    nearest = indices[:, 0].copy()
    indices = indices.copy()
    indices[dists >= disconnect] = -1
    sigmas, rhos = smooth_knn_dist(dists, float(k), local_connectivity=max(0.0, p["local_connectivity"] - 1.0))
    rows, cols, vals, _ = compute_membership_strengths(indices, dists, sigmas, rhos, bipartite=True)
    graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(n_new, len(coords)))
    csr = graph.tocsr()
    csr.eliminate_zeros()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a point without neighbours becomes NaN; fixed below
        start = init_graph_transform(csr, coords)
    n_epochs = 100 if n_new <= 10000 else 30
    if p.get("n_epochs") is not None:
        n_epochs = max(1, int(p["n_epochs"] // 3))
    if graph.data.size:
        graph.data[graph.data < graph.data.max() / float(n_epochs)] = 0.0
        graph.eliminate_zeros()
    epochs_per_sample = make_epochs_per_sample(graph.data, n_epochs)
    rng_state = np.random.RandomState(p["transform_seed"]).randint(
        np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1, 3).astype(np.int64)
    lonely = ~np.isfinite(start).all(axis=1)  # no neighbour within reach: start on the nearest fitted point
    start[lonely] = coords[nearest[lonely]]
    placed = optimize_layout_euclidean(
        np.ascontiguousarray(start, np.float32), coords.astype(np.float32, copy=True), graph.row, graph.col,
        n_epochs, len(coords), epochs_per_sample, p["a"], p["b"], rng_state, p["repulsion_strength"],
        p["learning_rate"] / 4.0, p["negative_sample_rate"], False)
    return np.asarray(placed, np.float32)


def should_refit(n_old: int, n_new: int, share: float = 0.2) -> bool:
    """True when new points make up more than ``share`` of the library: placing them would bend the map too much."""
    if n_old < 0 or n_new < 0:
        raise ValueError("counts cannot be negative")
    if n_new == 0:
        return False
    return n_old < MIN_UMAP_POINTS or n_new / (n_old + n_new) > share


@contextlib.contextmanager
def _quiet():
    """Hide umap-learn's advice about n_jobs and disconnected vertices; we choose those settings on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        warnings.filterwarnings("ignore", message=".*disconnected.*")
        warnings.filterwarnings("ignore", message=".*n_neighbors is larger than the dataset.*")
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")  # we place new points ourselves
        yield


# ------------------------------------------------------------------------------------------------ quality, clusters
def knn_agreement(coords: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each point's ``k`` nearest 2-D neighbours that carry its label (1.0: clusters kept whole)."""
    from scipy.spatial import cKDTree

    pts = np.asarray(coords, dtype=np.float64)
    lab = np.asarray(labels)
    if pts.ndim != 2 or len(pts) != len(lab):
        raise ValueError(f"{len(pts)} coordinates but {len(lab)} labels")
    if len(pts) < 2:
        raise ValueError("k-NN agreement needs at least 2 points")
    k = min(k, len(pts) - 1)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    _, idx = cKDTree(pts).query(pts, k=k + 1)
    own = np.arange(len(pts))[:, None]
    # Drop each point itself (not simply the first column: duplicates of a point may come before it).
    not_self = idx != own
    first_k = np.cumsum(not_self, axis=1) <= k
    keep = not_self & first_k
    same = (lab[idx] == lab[:, None]) & keep
    return float(same.sum() / keep.sum())


def kmeans_clusters(vectors: np.ndarray, k: int, niter: int = 20, seed: int = 0) -> np.ndarray:
    """Spherical k-means (cosine) cluster of each vector, ``(N,)`` int64 in ``[0, k)``; k is capped at N.

    engine.clusters.spherical_kmeans on arrays (one run): the same k-means the ``cluster`` command uses.
    """
    from engine.clusters import spherical_kmeans

    x = _prepare(vectors)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(x) == 0:
        return np.zeros(0, np.int64)
    k = min(k, len(x))
    if k == 1:
        return np.zeros(len(x), np.int64)
    return spherical_kmeans(x, k, niter=niter, seed=seed)[0]


# ---------------------------------------------------------------------------------------------------- persistence
def save_layout(layout: Layout, folder: str | os.PathLike) -> Path:
    """Write the layout to ``folder/layout.npz`` atomically (temp file, fsync, rename); plain arrays, no pickle."""
    path = Path(folder) / CACHE_NAME
    meta = {"format": _CACHE_FORMAT, "metric": layout.metric, "method": layout.method, "params": layout.params}
    arrays = {"coords": layout.coords, "reference": layout.reference, "meta": np.array(json.dumps(meta))}
    if layout.pca is not None:
        arrays.update(pca_mean=layout.pca.mean, pca_axes=layout.pca.axes, pca_variance=layout.pca.variance)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_layout(folder: str | os.PathLike) -> Layout:
    """Read a layout written by :func:`save_layout`; :class:`LayoutCacheError` says why one cannot be used."""
    path = Path(folder) / CACHE_NAME
    if not path.is_file():
        raise LayoutCacheError(f"no cached map in {path.parent}")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            coords, reference = z["coords"], z["reference"]
            pca = PcaBasis(z["pca_mean"], z["pca_axes"], z["pca_variance"]) if "pca_axes" in z.files else None
    except Exception as e:  # truncated or foreign bytes: a cache is disposable, so say so and let the caller refit
        raise LayoutCacheError(f"the cached map {path} is unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != _CACHE_FORMAT:
        raise LayoutCacheError(f"the cached map {path} has an unknown format")
    if coords.ndim != 2 or coords.shape[1] != 2 or (meta["method"] == "umap" and len(reference) != len(coords)):
        raise LayoutCacheError(f"the cached map {path} is inconsistent")
    return Layout(coords.astype(np.float32), reference.astype(np.float32), pca, meta["metric"], meta["method"],
                  meta["params"])
