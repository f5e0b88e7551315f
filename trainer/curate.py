"""Curating a training set from a library, the way the paper built LVD-142M, in miniature (spec §7).

1. Self-deduplication: a k-NN graph of the library's embeddings, edges above a cosine threshold, connected
   components (union-find), one photo kept per component (the largest, then the oldest).
2. Retrieval, optional:
   - sample-based: the k nearest library photos of each seed image the user cares about;
   - cluster-based: k-means of the deduplicated pool, then at most N photos per cluster, so that no single
     kind of photo dominates.
3. A file list (one path per line) that `python -m app train --data LIST` reads.

Counts are reported at each stage, as the paper does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.progress import CancelFn, ProgressFn, Stopwatch, raise_if_cancelled
from engine.store.vectors import library_vectors


@dataclass
class CurationReport:
    stages: list[tuple[str, int]] = field(default_factory=list)  # (stage, photos after it)
    paths: list[str] = field(default_factory=list)

    def add(self, stage: str, n: int) -> None:
        self.stages.append((stage, n))

    def table(self) -> str:
        width = max(len(s) for s, _ in self.stages)
        return "\n".join(f"{s:<{width}}  {n:>8}" for s, n in self.stages)


def deduplicate(ids: np.ndarray, vectors: np.ndarray, threshold: float,
                keeper_key: Callable[[int], tuple]) -> np.ndarray:
    """Rows kept: one per connected component of the graph of pairs with cosine >= threshold."""
    from engine.dedup import Components, range_pairs

    comp = Components(len(ids))
    for a, b, _s in range_pairs(vectors, threshold):
        comp.union(a, b)
    labels = comp.labels()
    keep: dict[int, int] = {}
    for row, root in enumerate(labels.tolist()):
        best = keep.get(root)
        if best is None or keeper_key(int(ids[row])) < keeper_key(int(ids[best])):
            keep[root] = row
    return np.array(sorted(keep.values()), dtype=np.int64)


def retrieve_for_seeds(pool_vectors: np.ndarray, seed_vectors: np.ndarray, per_seed: int) -> np.ndarray:
    """Rows of the pool among the per_seed nearest neighbours of any seed (cosine), without repeats."""
    import faiss

    def unit(x: np.ndarray) -> np.ndarray:  # cosine whatever the norms (a library's vectors are unit already)
        x = np.asarray(x, dtype=np.float32)
        return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))

    index = faiss.IndexFlatIP(pool_vectors.shape[1])
    index.add(unit(pool_vectors))
    _, nn = index.search(unit(seed_vectors), min(per_seed, len(pool_vectors)))
    return np.unique(nn[nn >= 0])


def balance_by_cluster(vectors: np.ndarray, k: int, per_cluster: int, seed: int = 0) -> np.ndarray:
    """Rows kept: at most per_cluster per k-means cluster, the ones nearest their centroid first."""
    import faiss

    from engine.clusters import kmeans_pp

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    k = max(1, min(k, len(x)))
    rng = np.random.default_rng(seed)
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False,
                    min_points_per_centroid=1)  # small libraries: no FAISS warning
    km.train(x, init_centroids=kmeans_pp(x, k, rng) if k > 1 else None)
    sims, assign = km.index.search(x, 1)
    keep: list[int] = []
    for c in range(k):
        members = np.flatnonzero(assign[:, 0] == c)
        order = members[np.argsort(-sims[members, 0], kind="stable")]
        keep += order[:per_cluster].tolist()
    return np.array(sorted(keep), dtype=np.int64)


def curate(lib, model_id: int, *, threshold: float = 0.95, seed_vectors: np.ndarray | None = None,
           per_seed: int = 32, clusters: int | None = None, per_cluster: int | None = None,
           progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> CurationReport:
    """The whole pipeline over one library and model; returns the kept paths and the counts per stage.

    progress: told the stage before each one starts (its `phase`). cancel: engine.progress's callback, asked
    before each stage (raises `Cancelled`)."""
    clock = Stopwatch()

    def say(stage: str) -> None:
        raise_if_cancelled(cancel)
        if progress is not None:
            progress(clock(0, None, phase=stage))

    report = CurationReport()
    ids, vectors = library_vectors(lib, model_id)
    ids = np.asarray(ids, dtype=np.int64)
    vectors = np.asarray(vectors, dtype=np.float32)
    counts = lib.counts()
    report.add("photos in the library", counts.get("total", len(ids)))
    report.add("decoded and embedded", len(ids))
    if len(ids) == 0:
        return report
    records = {r.id: r for r in lib.images(status="ok")}

    def keeper_key(image_id: int) -> tuple:
        r = records.get(image_id)
        if r is None:
            return (1, 0, 0.0, image_id)
        pixels = (r.width or 0) * (r.height or 0)
        taken = r.captured_at.timestamp() if r.captured_at else float("inf")
        return (0, -pixels, taken, image_id)

    say(f"deduplicating {len(ids)} photos (cosine >= {threshold})…")
    rows = deduplicate(ids, vectors, threshold, keeper_key)
    report.add(f"after self-deduplication (cosine >= {threshold})", len(rows))
    if seed_vectors is not None and len(seed_vectors):
        say(f"retrieving the {per_seed} nearest photos of {len(seed_vectors)} seeds…")
        picked = retrieve_for_seeds(vectors[rows], seed_vectors, per_seed)
        rows = rows[picked]
        report.add(f"after retrieval ({len(seed_vectors)} seeds x {per_seed} nearest)", len(rows))
    if per_cluster:
        k = clusters or max(2, round(float(np.sqrt(len(rows) / 2))))
        say(f"clustering {len(rows)} photos into {k} clusters…")
        picked = balance_by_cluster(vectors[rows], k, per_cluster)
        rows = rows[picked]
        report.add(f"after cluster balancing ({k} clusters, <= {per_cluster} each)", len(rows))
    report.paths = [records[int(i)].path for i in ids[rows] if int(i) in records]
    return report


def write_list(paths: Sequence[str], out: str | os.PathLike) -> Path:
    """The file list `train --data` reads: one path per line, written atomically."""
    from engine.atomic import atomic_write_text

    return atomic_write_text(out, "".join(f"{p}\n" for p in paths))
