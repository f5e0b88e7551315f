"""The region vectors of a model in one FAISS index: 21 per photo (the 2x2 and 4x4 cells of the 224 px eval crop,
and the whole crop), keyed image_id * 32 + region, for `engine.region_search`.

It is exact: a scalar-quantizer index in fp16 holds precisely the float16 values the database stores, at half the
memory of a float32 flat index, and its scan is ~1.7x faster (one thread, 2M x 384: 95 ms against 160 ms). The
price is memory: 21 x D x 2 bytes per photo, 16 KB at D = 384, so 1.6 GB for 100k photos. Past that size a
compressed (IVF-PQ) index with exact re-ranking would be the next step. The index is cached in the library's
vectors folder next to the global index (stamp written last, checked against the database revision like
`engine.store.vectors.VectorIndex`) and in memory through `engine.store.index_cache`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from engine.atomic import atomic_write_group, remove_stale_temps
from engine.faiss_runtime import faiss_settings
from engine.store import index_cache
from engine.store.regions import GRIDS, N_REGIONS
from engine.store.schema import LibraryBusyError, LibraryReadOnlyError, Model, StoreError
from engine.store.vectors import FaissWriter, ids_checksum, owner

if TYPE_CHECKING:
    import faiss

    from engine.store.library import Library

log = logging.getLogger("dinoscope.store")

WHOLE = N_REGIONS  # region number of the whole-crop vector (the mean of the four 2x2 cells)
REGIONS_PER_IMAGE = N_REGIONS + 1
REGION_ID_STRIDE = 32  # region index ids are image_id * 32 + region
REGION_STAMP_FORMAT = 2  # 2: bound to the library id and the model's weights (engine.store.vectors.owner)


def with_whole(regions: np.ndarray) -> np.ndarray:
    """(n, 20, D) stored regions -> (n, 21, D) float16 with the whole-crop vector appended.

    The four 2x2 cells hold equal numbers of patches, so the normalised sum of their (unit) means is the whole
    crop's mean direction up to the cells' norms, which differ little; good enough to rank, and free.
    """
    r = np.asarray(regions)
    first = GRIDS[0] * GRIDS[0]
    whole = r[:, :first].astype(np.float32).sum(axis=1)
    whole /= np.maximum(np.linalg.norm(whole, axis=-1, keepdims=True), 1e-12)
    return np.concatenate([r.astype(np.float16), whole[:, None].astype(np.float16)], axis=1)


def _region_files(lib: Library, model_id: int) -> dict[str, Path]:
    base = lib.vectors_dir / f"regions_{model_id}"
    return {"faiss": base.with_suffix(".faiss"), "stamp": base.with_suffix(".json")}


class RegionIndex:
    """Every region vector of one model (21 per photo), keyed image_id * 32 + region, exact inner product."""

    def __init__(self, model_id: int, revision: int, dim: int, image_ids: np.ndarray, index: faiss.Index) -> None:
        self.model_id = model_id
        self.revision = revision
        self.dim = dim
        self.image_ids = image_ids
        self._index = index

    @property
    def images(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"RegionIndex(model {self.model_id}, {self.images} photos x {REGIONS_PER_IMAGE} regions)"

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, image ids, regions) of the k best region vectors, best first."""
        if self._index.ntotal == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        k = min(int(k), int(self._index.ntotal))
        with faiss_settings(1):
            scores, keys = self._index.search(np.ascontiguousarray(query, np.float32).reshape(1, -1), k)
        scores, keys = scores[0], keys[0]
        keep = keys >= 0
        scores, keys = scores[keep], keys[keep]
        return scores, keys // REGION_ID_STRIDE, keys % REGION_ID_STRIDE

    def best_images(self, query: np.ndarray, k: int, exclude: set[int] = frozenset(),
                    allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The k photos with the best max-over-regions score: (scores, image ids, best region), best first.

        Hits come best first, so a photo's first hit is its best region, and the first k distinct photos are
        the answer; regions are fetched in growing batches until k photos are found or none are left.
        """
        total = int(self._index.ntotal)
        fetch = min(total, max(4 * k, 64))
        while True:
            scores, ids, regions = self.search(query, fetch)
            keep = np.ones(len(ids), bool)
            if exclude:
                keep &= ~np.isin(ids, np.fromiter(exclude, np.int64))
            if allowed is not None:
                keep &= np.isin(ids, allowed)
            scores, ids, regions = scores[keep], ids[keep], regions[keep]
            _, first = np.unique(ids, return_index=True)
            first.sort()
            if len(first) >= k or fetch >= total:
                first = first[:k]
                return scores[first], ids[first], regions[first]
            fetch = min(total, fetch * 4)

    # --------------------------------------------------------------------------------------------- open
    @classmethod
    def open(cls, lib: Library, model_id: int) -> RegionIndex:
        """Load the cached index if its stamp matches the database, else rebuild it (and cache it when the
        library lock is free; an indexer running elsewhere leaves it in memory only)."""
        import faiss

        revision, dim, image_ids, whose = _region_state(lib, model_id)
        files = _region_files(lib, model_id)
        try:
            stamp = json.loads(files["stamp"].read_text())
            expected = {"format": REGION_STAMP_FORMAT, "revision": revision, "dim": dim, "images": len(image_ids),
                        "ids_checksum": ids_checksum(image_ids), "faiss_bytes": files["faiss"].stat().st_size,
                        **whose}  # another library's or model's files with the same ids must not pass
            stale = [key for key, value in expected.items() if stamp.get(key) != value]
            if not stale:
                index = faiss.read_index(str(files["faiss"]))
                if index.ntotal == len(image_ids) * REGIONS_PER_IMAGE:
                    return cls(model_id, revision, dim, image_ids, index)
                stale = ["ntotal"]
            log.info("rebuilding the region index of model %s in %s (%s changed)", model_id, lib.root,
                     ", ".join(stale))
        except (OSError, ValueError, RuntimeError) as exc:
            log.info("building the region index of model %s in %s (%s)", model_id, lib.root, exc)
        return cls.build(lib, model_id)

    @classmethod
    def build(cls, lib: Library, model_id: int) -> RegionIndex:
        try:
            with lib.lock("rebuild regions"):
                return cls._build(lib, model_id, write=True)
        except (LibraryBusyError, LibraryReadOnlyError):
            return cls._build(lib, model_id, write=False)

    @classmethod
    def _build(cls, lib: Library, model_id: int, write: bool) -> RegionIndex:
        import faiss

        with lib.engine.begin() as conn:  # one read transaction: revision and rows agree
            cur = conn.connection.dbapi_connection.cursor()
            try:
                row = cur.execute("SELECT revision, dim FROM models WHERE id = ?", (model_id,)).fetchone()
                if row is None:
                    raise StoreError(f"library '{lib.name}' has no model with id {model_id}")
                revision, dim = row
                whose = owner(cur, model_id)
                inner = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
                index = faiss.IndexIDMap2(inner)
                ids: list[np.ndarray] = []
                cur.execute("SELECT image_id, data FROM regions WHERE model_id = ? ORDER BY image_id", (model_id,))
                offsets = np.arange(REGIONS_PER_IMAGE, dtype=np.int64)
                while rows := cur.fetchmany(2048):
                    chunk_ids = np.array([r[0] for r in rows], np.int64)
                    data = np.frombuffer(b"".join(r[1] for r in rows), np.float16).reshape(len(rows), N_REGIONS, dim)
                    vecs = with_whole(data).astype(np.float32).reshape(-1, dim)
                    keys = (chunk_ids[:, None] * REGION_ID_STRIDE + offsets[None, :]).reshape(-1)
                    index.add_with_ids(vecs, keys)
                    ids.append(chunk_ids)
            finally:
                cur.close()
        image_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        if write:
            _write_region_files(lib, model_id, index, revision, dim, image_ids, whose)
        return cls(model_id, revision, dim, image_ids, index)


def _region_state(lib: Library, model_id: int) -> tuple[int, int, np.ndarray, dict]:
    with lib.engine.begin() as conn:
        cur = conn.connection.dbapi_connection.cursor()
        try:
            row = cur.execute("SELECT revision, dim FROM models WHERE id = ?", (model_id,)).fetchone()
            if row is None:
                raise StoreError(f"library '{lib.name}' has no model with id {model_id}")
            ids = np.array([r[0] for r in cur.execute(
                "SELECT image_id FROM regions WHERE model_id = ? ORDER BY image_id", (model_id,))], np.int64)
            whose = owner(cur, model_id)
        finally:
            cur.close()
    return int(row[0]), int(row[1]), ids, whose


def _write_region_files(lib: Library, model_id: int, index: faiss.Index, revision: int, dim: int,
                        image_ids: np.ndarray, whose: dict) -> None:
    """Index, then stamp, through engine.atomic. A failure (a full disk) only costs the cache: logged, not raised."""

    files = _region_files(lib, model_id)
    write_index = FaissWriter(index)

    def write_stamp(f) -> None:
        stamp = {"format": REGION_STAMP_FORMAT, "model_id": model_id, "revision": revision, "dim": dim,
                 "images": len(image_ids), "ids_checksum": ids_checksum(image_ids),
                 "faiss_bytes": write_index.written, **whose}
        f.write(json.dumps(stamp, indent=1).encode())

    try:
        remove_stale_temps(lib.vectors_dir, ".regions_*.tmp")  # left by a killed writer; we hold the lock
        atomic_write_group([(files["faiss"], write_index), (files["stamp"], write_stamp)])
    except OSError as exc:
        log.warning("could not cache the region index in %s (%s); it will be rebuilt next time", lib.vectors_dir, exc)


def region_index(lib: Library, model_id: int) -> RegionIndex:
    """The region index of a model, shared by every `Library` handle on the folder (engine.store.index_cache) and
    reopened when the database revision moves."""
    with lib.session() as s:
        revision = s.scalar(select(Model.revision).where(Model.id == model_id))
    if revision is None:
        raise StoreError(f"library '{lib.name}' has no model with id {model_id}")
    return index_cache.cached_index(lib.root, lib.db_path, "regions", model_id, revision,
                                    lambda: RegionIndex.open(lib, model_id))


__all__ = ["REGIONS_PER_IMAGE", "REGION_ID_STRIDE", "WHOLE", "RegionIndex", "region_index", "with_whole"]
