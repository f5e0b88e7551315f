"""A library's map: UMAP coordinates and k-means clusters per model, stored in the library.

The first map of a model is a full fit; after an indexing run, new photos are placed on the existing map with
the fitted layout (the old points stay where the user learnt them) unless they are more than `refit_share` of the
library, when the map is fitted again. Coordinates live in the `map_coords` table (the GUI reads them, never
recomputes); the fitted layout is a cache under the library folder (plain arrays, no pickle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select

from engine.progress import ProgressFn, Stopwatch
from engine.store.schema import MapCoord
from engine.store.vectors import library_vectors
from engine.viz import map_render, umap_layout


@dataclass
class LibraryMap:
    ids: np.ndarray  # (N,) image ids
    coords: np.ndarray  # (N, 2) float32
    clusters: np.ndarray  # (N,) int64, -1 = none
    refitted: bool = False
    placed: int = 0  # photos placed on an existing map in this call


def one_per_stack(m: LibraryMap, stacks: dict[int, list[int]]) -> LibraryMap:
    """The map with one dot per stack of copies and bursts (engine.stacks): its cover stays, the others go."""
    hidden = np.fromiter((i for members in stacks.values() for i in members[1:]), np.int64)
    if not len(hidden):
        return m
    keep = ~np.isin(m.ids, hidden)
    return LibraryMap(m.ids[keep], m.coords[keep], m.clusters[keep], m.refitted, m.placed)


def default_k(n: int) -> int:
    """Enough colours to tell regions apart, few enough to read: about sqrt(N/4), between 2 and 40."""
    return int(min(40, max(2, round(math.sqrt(max(n, 1) / 4)))))


def layout_folder(lib, model_id: int) -> Path:
    return Path(lib.root) / "maps" / f"model_{model_id}"


def load_map(lib, model_id: int) -> LibraryMap:
    """The stored map (photos without coordinates yet are not in it)."""
    with lib.session() as s:
        rows = s.execute(select(MapCoord.image_id, MapCoord.x, MapCoord.y, MapCoord.cluster)
                         .where(MapCoord.model_id == model_id).order_by(MapCoord.image_id)).all()
    if not rows:
        return LibraryMap(np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    arr = np.array([(r[0], r[1], r[2], -1 if r[3] is None else r[3]) for r in rows], dtype=np.float64)
    return LibraryMap(arr[:, 0].astype(np.int64), arr[:, 1:3].astype(np.float32), arr[:, 3].astype(np.int64))


def update_map(lib, model_id: int, *, refit: bool = False, refit_share: float = 0.2, k: int | None = None,
               progress: ProgressFn | None = None) -> LibraryMap:
    """Bring the stored map up to date with the library's vectors for this model; returns the whole map."""
    clock = Stopwatch()
    say = (lambda stage: progress(clock(0, None, phase=stage))) if progress else (lambda _stage: None)
    ids, vectors = library_vectors(lib, model_id)
    ids = np.asarray(ids, dtype=np.int64)
    vectors = np.asarray(vectors, dtype=np.float32)
    stored = load_map(lib, model_id)
    new = ~np.isin(ids, stored.ids)
    if not new.any() and not refit:
        return stored
    folder = layout_folder(lib, model_id)
    layout = None
    full = refit or stored.ids.size == 0 or umap_layout.should_refit(int((~new).sum()), int(new.sum()), refit_share)
    if not full:
        try:
            layout = umap_layout.load_layout(folder)
        except (umap_layout.LayoutCacheError, OSError, ValueError):
            full = True  # the fitted layout is gone or unreadable: fit again
    k = k or default_k(len(ids))
    if full:
        say(f"Fitting the map of {len(ids)} photos (UMAP)…")
        layout = umap_layout.fit_layout(vectors)
        umap_layout.save_layout(layout, folder)
        coords = layout.coords
        say("Clustering…")
        clusters = umap_layout.kmeans_clusters(vectors, k)
        _store(lib, model_id, ids, coords, clusters, replace=True)
        return LibraryMap(ids, coords.astype(np.float32), clusters, refitted=True, placed=0)
    say(f"Placing {int(new.sum())} new photos on the map…")
    placed = umap_layout.place_new(layout, vectors[new])
    old = ~new
    clusters_new = _nearest_cluster(vectors[new], vectors[old], _clusters_for(stored, ids[old]))
    _store(lib, model_id, ids[new], placed, clusters_new, replace=False)
    result = load_map(lib, model_id)  # read back: the table is the one source of truth
    result.placed = int(new.sum())
    return result


def _clusters_for(stored: LibraryMap, ids: np.ndarray) -> np.ndarray:
    order = {int(i): n for n, i in enumerate(stored.ids)}
    return np.array([stored.clusters[order[int(i)]] for i in ids], dtype=np.int64)


def _nearest_cluster(new_vectors: np.ndarray, old_vectors: np.ndarray, old_clusters: np.ndarray) -> np.ndarray:
    """A new photo joins the cluster of its most similar mapped photo (no re-clustering of the whole library)."""
    import faiss

    if len(old_vectors) == 0:
        return np.full(len(new_vectors), -1, np.int64)
    index = faiss.IndexFlatIP(old_vectors.shape[1])
    index.add(np.ascontiguousarray(old_vectors))
    _, nn = index.search(np.ascontiguousarray(new_vectors), 1)
    return old_clusters[nn[:, 0]]


def _store(lib, model_id: int, ids: np.ndarray, coords: np.ndarray, clusters: np.ndarray, replace: bool) -> None:
    """One transaction: a crash leaves the previous map, never half of a new one."""
    with lib.write_session.begin() as s:
        if replace:
            s.execute(delete(MapCoord).where(MapCoord.model_id == model_id))
        else:
            s.execute(delete(MapCoord).where(MapCoord.model_id == model_id, MapCoord.image_id.in_(ids.tolist())))
        s.add_all(MapCoord(model_id=model_id, image_id=int(i), x=float(c[0]), y=float(c[1]), cluster=int(g))
                  for i, c, g in zip(ids, coords, clusters, strict=True))


def render_library_map(lib, model_id: int, size: tuple[int, int] = (1600, 1200), sample: int = 300) -> np.ndarray:
    """The stored map as a picture: dots coloured by cluster, thumbnails of a spread-out sample."""
    from engine.imageio import ImageDecodeError, load_rgb

    m = load_map(lib, model_id)

    def thumb(i: int) -> np.ndarray | None:
        data = lib.thumbnail(int(m.ids[i]))
        if not data:
            return None
        try:
            return load_rgb(data)
        except ImageDecodeError:
            return None

    return map_render.render_map(m.coords, thumbnails=thumb, labels=m.clusters, size=size, sample=sample)


def quick_layout(lib, model_id: int) -> LibraryMap:
    """A PCA projection of the vectors: instant, shown while UMAP (seconds to a minute) computes. Not stored."""
    from engine.viz.pca import fit_pca

    ids, vectors = library_vectors(lib, model_id)
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return LibraryMap(ids, np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    x = np.asarray(vectors, dtype=np.float32)
    coords = fit_pca(x, 2).project(x).astype(np.float32)
    return LibraryMap(ids, coords, np.full(len(ids), -1, np.int64))
