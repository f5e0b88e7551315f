"""k-means clusters of a library's photos, stored in the library so the GUI can colour and filter by them.

Spherical k-means (FAISS) on the L2-normalised vectors: centroids are renormalised after each step, so a photo
joins the centroid of highest cosine, the similarity everything else in Dinoscope uses. FAISS seeds with k random
photos, which often puts two seeds in one obvious group and leaves another group split (5 well separated groups
of 30 were found in 5 runs out of 20); seeding with greedy k-means++ and keeping the best of 3 restarts found
them in 20 out of 20, and 20 groups in 20 out of 20. Clusters are numbered by
decreasing size (0 is the largest), which keeps colours stable-ish across runs and puts the big groups first.
One labelling is kept per (model, k); computing it again replaces it in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, select

from engine.store.schema import Cluster, Embedding, StoreError
from engine.store.vectors import vector_index

if TYPE_CHECKING:
    from engine.store.library import Library

MAX_POINTS_PER_CENTROID = 512  # k-means trains on at most k x this many photos (a random sample), then assigns all
RESTARTS = 3  # independent seedings; the one with the best objective is kept


@dataclass(frozen=True)
class Clustering:
    """One model's photos split into k clusters; arrays are row for row with `image_ids` (ascending)."""

    model_id: int
    k: int
    image_ids: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) int64 in 0..k-1, 0 = largest cluster
    sizes: np.ndarray  # (k,) photos per cluster, non-increasing
    representatives: np.ndarray  # (k,) image id closest to each centroid; -1 for an empty cluster
    centroids: np.ndarray  # (k, D) float32, L2-normalised

    def as_dict(self) -> dict[int, int]:
        return dict(zip(self.image_ids.tolist(), self.labels.tolist(), strict=True))


def cluster_library(lib: Library, model_id: int, k: int, niter: int = 20, seed: int = 0) -> Clustering:
    """Cluster the photos that have a vector under `model_id` into k groups and store the labels.

    k must be between 1 and the number of photos. The result is deterministic for a given seed and library.
    """
    k, niter = int(k), int(niter)
    if niter < 1:
        raise ValueError(f"niter must be at least 1, got {niter}")
    index = vector_index(lib, model_id)
    ids = np.asarray(index.ids(), np.int64)
    n = len(ids)
    if n == 0:
        raise StoreError(f"library '{lib.name}' has no photos with vectors from model {model_id} to cluster")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of photos ({n}), got {k}")
    x = np.ascontiguousarray(index.vectors(), dtype=np.float32)
    assigned, centroids = spherical_kmeans(x, k, niter=niter, seed=seed, restarts=RESTARTS)
    labels, centroids = _by_size(assigned, centroids, k)
    result = _summarise(model_id, k, ids, labels, x, centroids)
    _store(lib, result)
    return result


def spherical_kmeans(x: np.ndarray, k: int, niter: int = 20, seed: int = 0,
                     restarts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each row (n,) int64, centroids (k, d) float32) of unit vectors, by cosine.

    FAISS iterates from greedy k-means++ seeds (its own random seeds split well-separated groups), each run on at
    most k x MAX_POINTS_PER_CENTROID rows, and the best of ``restarts`` runs by FAISS's objective is kept.
    Deterministic for a given seed. ``1 <= k <= n`` is the caller's to check.
    """
    import faiss

    from engine.faiss_runtime import faiss_settings

    n = len(x)
    rng = np.random.default_rng(seed)
    best = None
    with faiss_settings(None):
        for restart in range(restarts if k > 1 else 1):
            train = x if n <= k * MAX_POINTS_PER_CENTROID else x[np.sort(rng.choice(n, k * MAX_POINTS_PER_CENTROID,
                                                                                      replace=False))]
            km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed * restarts + restart, spherical=True,
                              verbose=False, min_points_per_centroid=1, max_points_per_centroid=n + 1)
            km.train(train, init_centroids=kmeans_pp(train, k, rng))
            if best is None or km.obj[-1] > best.obj[-1]:  # inner-product objective: higher is better
                best = km
        assert best is not None
        _, assigned = best.index.search(x, 1)
    return assigned[:, 0].astype(np.int64), np.asarray(best.centroids, np.float32)


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, sample: int = 50_000) -> np.ndarray:
    """Greedy k-means++ seeds (k, D) for unit vectors: each next seed is the best of 2 + log k candidates drawn
    in proportion to their squared distance (2 - 2 cos) to the nearest seed so far. Draws from at most `sample`
    rows, which bounds the cost at k x candidates x sample x D."""
    if len(x) > sample:
        x = x[np.sort(rng.choice(len(x), sample, replace=False))]
    n = len(x)
    trials = 2 + int(np.log(k))
    seeds = np.empty((k, x.shape[1]), np.float32)
    seeds[0] = x[rng.integers(n)]
    dist = np.maximum(2.0 - 2.0 * (x @ seeds[0]), 0.0)
    for i in range(1, k):
        total = float(dist.sum())
        cand = rng.choice(n, trials, p=dist / total) if total > 0 else rng.integers(0, n, trials)
        after = np.minimum(dist[None, :], np.maximum(2.0 - 2.0 * (x[cand] @ x.T), 0.0))
        best = int(np.argmin(after.sum(axis=1)))
        seeds[i] = x[cand[best]]
        dist = after[best]
    return seeds


def _by_size(labels: np.ndarray, centroids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber clusters by decreasing size (ties: FAISS's order)."""
    order = np.lexsort((np.arange(k), -np.bincount(labels, minlength=k)))  # new cluster i is old order[i]
    rename = np.empty(k, np.int64)
    rename[order] = np.arange(k)
    return rename[labels], centroids[order]


def _summarise(model_id: int, k: int, ids: np.ndarray, labels: np.ndarray, x: np.ndarray,
               centroids: np.ndarray) -> Clustering:
    """Sizes, unit centroids, and each cluster's representative: its member of highest cosine to the centroid."""
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    unit = (centroids / np.maximum(norms, 1e-12)).astype(np.float32)
    closeness = np.einsum("nd,nd->n", x, unit[labels])
    best_first = np.lexsort((ids, -closeness, labels))  # by cluster, then closest first
    first = best_first[np.flatnonzero(np.r_[True, labels[best_first][1:] != labels[best_first][:-1]])]
    representatives = np.full(k, -1, np.int64)
    representatives[labels[first]] = ids[first]
    return Clustering(model_id, k, ids, labels, np.bincount(labels, minlength=k), representatives, unit)


def _store(lib: Library, result: Clustering) -> None:
    """Replace the (model, k) labelling in one transaction; photos deleted meanwhile are skipped."""
    with lib.write_session.begin() as s:
        present = set(s.scalars(select(Embedding.image_id).where(Embedding.model_id == result.model_id)))
        s.execute(delete(Cluster).where(Cluster.model_id == result.model_id, Cluster.k == result.k))
        rows = [{"model_id": result.model_id, "k": result.k, "image_id": i, "cluster": c}
                for i, c in zip(result.image_ids.tolist(), result.labels.tolist(), strict=True) if i in present]
        if rows:
            s.execute(Cluster.__table__.insert(), rows)


def clusters(lib: Library, model_id: int, k: int) -> dict[int, int]:
    """The stored labelling for (model, k): image id -> cluster; empty when it was never computed."""
    with lib.session() as s:
        rows = s.execute(select(Cluster.image_id, Cluster.cluster).where(
            Cluster.model_id == model_id, Cluster.k == int(k)))
        return dict(rows.all())


def stored_ks(lib: Library, model_id: int) -> list[int]:
    """The k values with a stored labelling for this model."""
    with lib.session() as s:
        return sorted(s.scalars(select(Cluster.k).where(Cluster.model_id == model_id).distinct()))


def load_clustering(lib: Library, model_id: int, k: int) -> Clustering | None:
    """A stored labelling with sizes, centroids (normalised member means) and representatives; None if absent.

    Photos indexed after the clustering have no label and are left out.
    """
    stored = clusters(lib, model_id, k)
    if not stored:
        return None
    index = vector_index(lib, model_id)
    all_ids = np.asarray(index.ids(), np.int64)
    rows = np.flatnonzero(np.isin(all_ids, np.fromiter(stored, np.int64)))
    ids = all_ids[rows]
    x = np.asarray(index.vectors()[rows], np.float32)
    labels = np.array([stored[i] for i in ids.tolist()], np.int64)
    k = int(k)
    if labels.size and labels.max() >= k:
        raise StoreError(f"the stored clusters of model {model_id} for k={k} are damaged (label {labels.max()})")
    centroids = np.zeros((k, x.shape[1]), np.float32)
    np.add.at(centroids, labels, x)  # a spherical centroid is the normalised mean of its members
    return _summarise(model_id, k, ids, labels, x, centroids)


__all__ = ["Clustering", "cluster_library", "clusters", "kmeans_pp", "load_clustering", "stored_ks"]
