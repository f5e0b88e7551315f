"""Near-duplicate groups in three tiers: exact copies, near-identical versions, shots of the same scene.

* exact: the same bytes (content hash), whatever the vectors say.
* near-identical: cosine >= `near` (default 0.95), linked transitively: re-encodes, resizes, slight crops.
* same scene: cosine >= `scene` (default 0.80): the next frame of a burst, a stereo pair, a heavier crop.

Tiers nest. A near-identical group is reported only when it joins at least two different files (otherwise it is an
exact group again), and a same-scene group only when it joins at least two near-identical groups (or single
photos); each group lists all of its photos, so a same-scene group shows the copies inside it too.

Pairs come from FAISS range search (blocks of the lower triangle, never an N x N matrix in memory) over the
exact vectors, or, where the library has an approximate index, from a 32-nearest-neighbour graph. Connected
components come from a union-find kept as a parent array, so memory is O(N + pairs in one block).

Default thresholds, from the measurements in tests/test_dedup.py (random weights, 224 px eval transform):
re-encoding (JPEG q95 -> q60 / q30) and resizing (80 %, 50 %) give cosine >= 0.998 with a random ViT-S/14 and
>= 0.999 with the tiny test model; a 3 % border crop 0.94-0.9996 (ViT-S) / 0.98-0.9997 (tiny); a stereo pair or a
15 % shifted crop 0.82-0.99; unrelated colour photos at most 0.91 (ViT-S) / 0.95 (tiny: rocket vs Hubble field),
and featureless greyscale textures up to 0.96. Random weights know no semantics and are not crop-invariant;
trained DINOv2 weights map crops and re-encodes closer together and unrelated photos further apart, so real
models may shift these numbers. Both thresholds are parameters (CLI: --near, --scene).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from engine.progress import Cancelled, ProgressFn, Stopwatch
from engine.store.schema import Image
from engine.store.vectors import vector_index

if TYPE_CHECKING:
    from engine.store.library import Library

NEAR = 0.95
SCENE = 0.80
TIERS = ("exact", "near", "scene")
TIER_NAMES = {"exact": "exact copies", "near": "near-identical", "scene": "same scene"}
KNN = 32  # neighbours per photo when pairs come from an approximate index
DB_BLOCK = 16384  # database rows per flat index block (25 MB at D = 384)
QUERY_BLOCK = 1024  # query rows per range search: bounds one block's result even if everything matches




@dataclass(frozen=True)
class DuplicateGroup:
    """One group: the keeper first, then the others by decreasing cosine to the keeper."""

    tier: str  # 'exact' | 'near' | 'scene'
    image_ids: list[int]
    keeper_id: int
    scores: list[float]  # cosine of each photo (same order as image_ids) to the keeper; 1.0 for the keeper


# ------------------------------------------------------------------------------------------------ union-find


class Components:
    """Union-find over 0..n-1 as a parent array; roots are the smallest index of their component."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def _roots(self, x: np.ndarray) -> np.ndarray:
        """Roots of the nodes x (vectorised), which are then pointed straight at their roots."""
        parent = self.parent
        root = parent[x]
        while True:
            up = parent[root]
            if np.array_equal(up, root):
                break
            root = up
        parent[x] = root
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join a[i] with b[i] for every i; only the distinct root pairs are handled one by one."""
        if len(a) == 0:
            return
        ra, rb = self._roots(np.asarray(a, np.int64)), self._roots(np.asarray(b, np.int64))
        differ = ra != rb
        if not differ.any():
            return
        lo, hi = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
        parent = self.parent
        for x, y in np.unique(np.stack([lo, hi], 1), axis=0).tolist():
            while parent[x] != x:
                x = int(parent[x])
            while parent[y] != y:
                y = int(parent[y])
            if x != y:
                parent[max(x, y)] = min(x, y)

    def labels(self) -> np.ndarray:
        """Each node's root."""
        return self._roots(np.arange(len(self.parent), dtype=np.int64)).copy()


def _groups(labels: np.ndarray, min_size: int) -> list[np.ndarray]:
    """Members (row indices) of each component with at least min_size members, ordered by first member."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ends = np.r_[starts[1:], len(order)]
    return [order[s:e] for s, e in zip(starts, ends, strict=True) if e - s >= min_size]


# ------------------------------------------------------------------------------------------------------ pairs


def range_pairs(vectors: np.ndarray, radius: float, progress: ProgressFn | None = None,
                cancel: Callable[[], bool] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(a, b, cosine) arrays with a < b and cosine >= radius, block by block, by exact FAISS range search.

    The database side is indexed DB_BLOCK rows at a time and queried by the rows before its end, so each pair is
    computed once and memory stays at one block of vectors plus one block of results.
    """
    import faiss

    from engine.faiss_runtime import faiss_settings

    n, dim = vectors.shape
    # FAISS keeps results strictly above the radius; step one float32 down so that a pair at the threshold counts.
    below = float(np.nextafter(np.float32(radius), np.float32(-np.inf)))
    blocks = [(d0, min(n, d0 + DB_BLOCK)) for d0 in range(0, n, DB_BLOCK)]
    total = sum(-(-d1 // QUERY_BLOCK) for _, d1 in blocks)
    clock = Stopwatch()
    done = 0
    with faiss_settings(None):
        for d0, d1 in blocks:
            index = faiss.IndexFlatIP(dim)
            index.add(np.ascontiguousarray(vectors[d0:d1], dtype=np.float32))
            for q0 in range(0, d1, QUERY_BLOCK):
                if cancel is not None and cancel():
                    raise Cancelled()
                q1 = min(d1, q0 + QUERY_BLOCK)
                lims, scores, ids = index.range_search(np.ascontiguousarray(vectors[q0:q1], dtype=np.float32), below)
                a = np.repeat(np.arange(q0, q1, dtype=np.int64), np.diff(lims).astype(np.int64))
                b = ids.astype(np.int64) + d0
                keep = a < b
                yield a[keep], b[keep], scores[keep]
                done += 1
                if progress is not None:
                    progress(clock(done, total, phase="comparing photos"))


def knn_pairs(lib: Library, model_id: int, ids: np.ndarray, vectors: np.ndarray, radius: float,
              progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None,
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pairs from the library's approximate index: each photo's KNN nearest neighbours at cosine >= radius."""
    from engine.faiss_runtime import faiss_settings

    index = vector_index(lib, model_id)
    n = len(ids)
    total = -(-n // QUERY_BLOCK)
    clock = Stopwatch()
    for done, q0 in enumerate(range(0, n, QUERY_BLOCK), 1):
        if cancel is not None and cancel():
            raise Cancelled()
        q1 = min(n, q0 + QUERY_BLOCK)
        with faiss_settings(q1 - q0):
            scores, found = index.search(np.ascontiguousarray(vectors[q0:q1], dtype=np.float32), KNN + 1)
        a = np.repeat(np.arange(q0, q1, dtype=np.int64), found.shape[1])
        found, scores = found.reshape(-1), scores.reshape(-1)
        pos = np.searchsorted(ids, found)
        valid = (found >= 0) & (pos < n) & (ids[np.minimum(pos, n - 1)] == found) & (scores >= radius)
        a, b, s = a[valid], pos[valid], scores[valid]
        keep = a != b
        yield np.minimum(a, b)[keep], np.maximum(a, b)[keep], s[keep]
        if progress is not None:
            progress(clock(done, total, phase="comparing photos"))


# ----------------------------------------------------------------------------------------------------- groups


def _keeper_order(rows: list[tuple]) -> list[int]:
    """Image ids best keeper first: most pixels, then oldest capture time, then oldest file date, then lowest id.

    Capture times are compared as wall-clock times (an EXIF offset, when present, is dropped), since most
    cameras write none and the photos of one group come from one place."""

    def key(row: tuple) -> tuple:
        image_id, width, height, captured_at, mtime_ns = row
        pixels = (width or 0) * (height or 0)
        when = captured_at.replace(tzinfo=None).isoformat() if captured_at is not None else None
        return (-pixels, when is None, when or "", mtime_ns if mtime_ns is not None else 0, image_id)

    return [row[0] for row in sorted(rows, key=key)]


def find_duplicates(
    lib: Library,
    model_id: int,
    near: float = NEAR,
    scene: float = SCENE,
    min_size: int = 2,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[DuplicateGroup]:
    """Groups of duplicates among the photos that have a vector under `model_id`, exact tier first.

    Within a tier, bigger groups come first. `progress` follows the pair search; `cancel()` returning
    True raises Cancelled.
    """
    if not (-1.0 <= scene <= near <= 1.0):
        raise ValueError(f"thresholds must satisfy -1 <= scene <= near <= 1, got scene={scene}, near={near}")
    if min_size < 2:
        raise ValueError(f"min_size must be at least 2, got {min_size}")
    index = vector_index(lib, model_id)
    ids, vectors = index.ids(), index.vectors()
    n = len(ids)
    if n == 0:
        return []
    info = _image_rows(lib, ids)
    hashes = np.array([info[i][5] if i in info else None for i in ids.tolist()], dtype=object)

    exact, near_cc, scene_cc = Components(n), Components(n), Components(n)
    same = _same_hash_pairs(hashes)
    for comp in (exact, near_cc, scene_cc):
        comp.union(*same)

    pairs = (range_pairs(vectors, scene, progress, cancel) if index.kind == "flat"
             else knn_pairs(lib, model_id, ids, vectors, scene, progress, cancel))
    for a, b, s in pairs:
        near_cc.union(a[s >= near], b[s >= near])
        scene_cc.union(a, b)

    exact_labels, near_labels, scene_labels = exact.labels(), near_cc.labels(), scene_cc.labels()
    found: list[tuple[str, np.ndarray]] = []
    found += [("exact", g) for g in _groups(exact_labels, min_size)]
    found += [("near", g) for g in _groups(near_labels, min_size) if len(np.unique(exact_labels[g])) > 1]
    found += [("scene", g) for g in _groups(scene_labels, min_size) if len(np.unique(near_labels[g])) > 1]

    groups = []
    for tier, members in found:
        member_ids = ids[members].tolist()
        keeper = _keeper_order([(i, *info.get(i, (None, None, None, None))[:4]) for i in member_ids])[0]
        keeper_row = int(members[member_ids.index(keeper)])
        sims = np.asarray(vectors[members], np.float32) @ np.asarray(vectors[keeper_row], np.float32)
        score = dict(zip(member_ids, np.clip(sims, -1.0, 1.0).tolist(), strict=True))
        score[keeper] = 1.0
        rest = sorted((i for i in member_ids if i != keeper), key=lambda i: (-score[i], i))
        ordered = [keeper, *rest]
        groups.append(DuplicateGroup(tier, ordered, keeper, [float(score[i]) for i in ordered]))
    groups.sort(key=lambda g: (TIERS.index(g.tier), -len(g.image_ids), g.keeper_id))
    return groups


def _same_hash_pairs(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) row pairs that chain together every set of rows sharing a content hash."""
    first: dict[str, int] = {}
    a, b = [], []
    for row, h in enumerate(hashes.tolist()):
        if h is None:
            continue
        if h in first:
            a.append(first[h])
            b.append(row)
        else:
            first[h] = row
    return np.array(a, np.int64), np.array(b, np.int64)


def _image_rows(lib: Library, ids: np.ndarray) -> dict[int, tuple]:
    """image id -> (width, height, captured_at, mtime_ns, path, content_hash) of ok images."""
    out: dict[int, tuple] = {}
    id_list = ids.tolist()
    with lib.session() as s:
        for start in range(0, len(id_list), 500):
            chunk = id_list[start : start + 500]
            q = select(Image.id, Image.width, Image.height, Image.captured_at, Image.mtime_ns, Image.path,
                       Image.content_hash).where(Image.id.in_(chunk), Image.status == "ok")
            out.update((row[0], tuple(row[1:])) for row in s.execute(q))
    return out


def savings(groups: list[DuplicateGroup], tier: str) -> int:
    """Photos that keeping only each group's keeper would remove, for one tier."""
    return sum(len(g.image_ids) - 1 for g in groups if g.tier == tier)


__all__ = [
    "NEAR",
    "SCENE",
    "TIERS",
    "TIER_NAMES",
    "Cancelled",
    "Components",
    "DuplicateGroup",
    "find_duplicates",
    "knn_pairs",
    "range_pairs",
    "savings",
]
