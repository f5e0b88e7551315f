"""Per-model vector file and FAISS index, derived from the database and rebuilt from it whenever they disagree.

Files in `<library>/vectors/`:
  model_<id>.f32    float32 (N, D), rows in ascending image id; memory-mapped by `.vectors()` (numpy users: dedup,
                    clusters, maps) without loading FAISS
  model_<id>.faiss  IndexIDMap2 keyed by image id around IndexFlatIP (exact), or IVF (fp16 lists) / HNSW-Flat past
                    the library's `ann_threshold` (default 1,000,000 vectors)
  model_<id>.json   the stamp: count, ids checksum, database revision, kind, file sizes, and what the vectors belong
                    to: the library's id (written in its database when it was created) and the model's weights
                    hash. Revision, count and ids repeat themselves in a rebuilt database or another library, so
                    without the last two another model's or another library's files would pass as current.
                    Written last: it is the commit point, so a crash anywhere before it leaves a stamp that no
                    longer matches the database.

All three are written to temporary names, fsynced, and only then renamed over the old ones, so a full disk or a kill
leaves the previous files intact. Only the process holding the library lock writes; a reader that finds the files
stale while an indexer runs builds its index in memory.

Approximate index choice (ENVIRONMENT.md §4, 2 cores): IVF is the default (its lists store fp16 codes, which keeps
1M x 384 under 1 GB; the figures below are IVF-Flat's, and bench/index.py measures both). At 1M x 384 it trains and
fills in ~5.5 s with recall@10 0.998 at nprobe 8 (1.0 at 32) and 0.5-1.7 ms per query, while HNSW (M=32) needs an
estimated 1-4 min to build and 4 bytes x 2M of links per vector on top. The index is rebuilt from the database after
every indexing run that changed the model, so build time dominates; IVF's slightly slower queries are still far
under a millisecond-scale budget. HNSW stays available (`ann_kind = "hnsw"`) for libraries that change rarely.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
from sqlalchemy import select

from engine.atomic import atomic_write_group
from engine.faiss_runtime import configure_faiss
from engine.store import index_cache
from engine.store.schema import LibraryBusyError, LibraryReadOnlyError, Model, StoreError

if TYPE_CHECKING:
    from engine.store.library import Library

configure_faiss()

log = logging.getLogger("dinoscope.store")

STAMP_FORMAT = 2  # 2: binds the files to the library id and the weights hash
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


@dataclass
class Snapshot:
    """One model's vectors as the database holds them at `revision`."""

    model_id: int
    revision: int
    dim: int
    ids: np.ndarray  # (n,) int64 ascending
    matrix: np.ndarray | None  # (n, D) float32, None when only the ids were read
    owner: dict[str, str | None]  # {"library_id", "checkpoint_hash"}: whose vectors these are


def owner(cur, model_id: int) -> dict[str, str | None]:
    """The library id and the weights hash a derived file must carry to be this library's and this model's (for any
    file built from the database: vectors here, region indexes in engine.store.region_index). `cur`: a DB-API
    cursor."""
    row = cur.execute("SELECT value FROM meta WHERE key = 'library_id'").fetchone()
    weights = cur.execute("SELECT checkpoint_hash FROM models WHERE id = ?", (model_id,)).fetchone()
    return {"library_id": row[0] if row else None, "checkpoint_hash": weights[0] if weights else None}


def ids_checksum(ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype="<i8").tobytes(), digest_size=16).hexdigest()


def file_paths(lib: Library, model_id: int) -> dict[str, Path]:
    base = lib.vectors_dir / f"model_{model_id}"
    return {"f32": base.with_suffix(".f32"), "faiss": base.with_suffix(".faiss"), "stamp": base.with_suffix(".json")}


def read_snapshot(lib: Library, model_id: int, with_vectors: bool = True) -> Snapshot:
    """All of a model's vectors in one pass over the BLOBs, inside one read transaction (a consistent snapshot of
    revision, ids and vectors even while an indexer commits). 100k x 384 reads in well under a second."""
    with lib.engine.begin() as conn:  # BEGIN: every statement below sees the same database state
        cur = conn.connection.dbapi_connection.cursor()
        try:
            row = cur.execute("SELECT revision, dim FROM models WHERE id = ?", (model_id,)).fetchone()
            if row is None:
                raise StoreError(f"library '{lib.name}' has no model with id {model_id}")
            revision, dim = row
            whose = owner(cur, model_id)
            if not with_vectors:
                # One aggregated row, not one step per id: sqlite3 gives up the GIL on every step, and at start-up
                # (torch importing in a worker) 100k steps waited for it several times longer than they ran.
                text = cur.execute("SELECT json_group_array(image_id) FROM embeddings WHERE model_id = ?",
                                   (model_id,)).fetchone()[0]
                ids = np.sort(np.asarray(json.loads(text or "[]"), dtype=np.int64))
                return Snapshot(model_id, revision, dim, ids, None, whose)
            n = cur.execute("SELECT count(*) FROM embeddings WHERE model_id = ?", (model_id,)).fetchone()[0]
            ids = np.empty(n, np.int64)
            matrix = np.empty((n, dim), np.float32) if with_vectors else None
            column = "image_id, vector" if with_vectors else "image_id"
            cur.execute(f"SELECT {column} FROM embeddings WHERE model_id = ? ORDER BY image_id", (model_id,))
            i = 0
            while rows := cur.fetchmany(4096):
                for row in rows:
                    ids[i] = row[0]
                    if matrix is not None:
                        matrix[i] = np.frombuffer(row[1], np.float32)
                    i += 1
        finally:
            cur.close()
    return Snapshot(model_id, revision, dim, ids, matrix, whose)


# A few queries against a flat index: one BLAS matrix-vector product over the vectors already in memory, on every
# core. FAISS's flat search scans with one thread per query: at 100k x 2048 (dino.txt) 58 ms against numpy's 33 ms
# on the 2-core build machine, and the same exact scores.
EXACT_BLAS_MAX_QUERIES = 16


def _exact_search(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, best first, ties in row order (as FAISS's flat index gives them)."""
    scores = q @ np.asarray(vectors).T  # (nq, n)
    n = scores.shape[1]
    kk = min(k, n)
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    for r, row in enumerate(scores):
        top = np.argpartition(-row, kk - 1)[:kk] if kk < n else np.arange(n)
        top = top[np.lexsort((top, -row[top]))]
        out_s[r, :kk] = row[top]
        out_i[r, :kk] = ids[top]
    return out_s, out_i


def desired_kind(lib: Library, count: int) -> str:
    return "flat" if count < lib.setting("ann_threshold") else lib.setting("ann_kind")


def build_faiss(matrix: np.ndarray, ids: np.ndarray, kind: str) -> faiss.Index:
    """An id-keyed inner-product index over L2-normalised rows (inner product = cosine)."""
    n, dim = matrix.shape
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        # sqrt(n) lists (1M -> 1000, the measured sweet spot), each trained on at least 39 points as faiss asks
        nlist = max(1, min(65536, int(math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(dim)
        # lists hold fp16 codes: half IVF-Flat's memory (1M x 384: 749 MB instead of 1482) at the same recall@10
        # (0.997 against 0.998, nprobe 16, bench/index.py), and faster to scan
        inner = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)
        sample = matrix
        if n > 64 * nlist:
            sample = matrix[np.sort(np.random.default_rng(0).choice(n, 64 * nlist, replace=False))]
        inner.train(np.ascontiguousarray(sample))
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index = faiss.IndexIDMap2(inner)  # faiss's Python wrappers keep `inner` (and the quantizer) alive
    if n:
        index.add_with_ids(np.ascontiguousarray(matrix), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def _configure(index: faiss.Index, kind: str, lib: Library) -> None:
    """Search-time knobs come from the library settings, not from the file, so changing them needs no rebuild."""
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = lib.setting("ivf_nprobe")
    elif kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = lib.setting("hnsw_ef_search")


class VectorIndex:
    """Nearest-neighbour search over one model's vectors, keyed by image id."""

    def __init__(
        self,
        model_id: int,
        revision: int,
        dim: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        index: faiss.Index,
        kind: str,
        rebuilt: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.revision = revision
        self.dim = dim
        self.kind = kind
        self.rebuilt = rebuilt  # why it was rebuilt from the database when opened, else None
        self._ids = ids
        self._vectors = vectors
        self._index = index

    @property
    def count(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return self._ids

    def vectors(self) -> np.ndarray:
        return self._vectors

    def __repr__(self) -> str:
        return f"VectorIndex(model {self.model_id}, {self.count} x {self.dim}, {self.kind})"

    # ----------------------------------------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised (n, D) queries -> (scores (n, k) float32, image ids (n, k) int64), best first.

        Where fewer than k vectors exist the rest is padded with id -1 and score -inf.
        """
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got {q.shape}")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if self.count == 0 or len(q) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if self.kind == "flat" and len(q) <= EXACT_BLAS_MAX_QUERIES:
            return _exact_search(self._vectors, self._ids, q, k)
        scores, ids = self._index.search(q, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    # ------------------------------------------------------------------------------------------------- open
    @classmethod
    def open(cls, lib: Library, model_id: int) -> VectorIndex:
        """Load the files if their stamp matches the database; otherwise rebuild them (and say why in the log)."""
        state = read_snapshot(lib, model_id, with_vectors=False)
        files = file_paths(lib, model_id)
        _remove_stale_temps(lib.vectors_dir, dead_writers_only=True)
        try:
            loaded = cls._load(lib, state, files)
        except _Stale as stale:
            log.info("rebuilding the vector index of model %s in %s: %s", model_id, lib.root, stale)
            return cls.build(lib, model_id, reason=str(stale))
        return loaded

    @classmethod
    def _load(cls, lib: Library, state: Snapshot, files: dict[str, Path]) -> VectorIndex:
        if not files["stamp"].exists():
            raise _Stale("no index files yet")
        try:
            stamp = json.loads(files["stamp"].read_text())
            if stamp.get("format") != STAMP_FORMAT:
                raise _Stale(f"stamp format {stamp.get('format')} is not {STAMP_FORMAT}")
        except (OSError, ValueError) as exc:
            raise _Stale(f"the stamp cannot be read ({exc})") from None
        if state.owner["library_id"] is None:
            raise _Stale("the library has no id yet (a read-only library made by an older version)")
        count = len(state.ids)
        checks = [
            ("library_id", state.owner["library_id"]),  # first: another library's files differ in everything
            ("checkpoint_hash", state.owner["checkpoint_hash"]),
            ("revision", state.revision),
            ("count", count),
            ("dim", state.dim),
            ("ids_checksum", ids_checksum(state.ids)),
            ("kind", desired_kind(lib, count)),
        ]
        for key, expected in checks:
            if stamp.get(key) != expected:
                raise _Stale(f"{key} is {stamp.get(key)!r} in the stamp but {expected!r} in the database")
        for name in ("f32", "faiss"):
            try:
                size = files[name].stat().st_size
            except OSError:
                raise _Stale(f"{files[name].name} is missing") from None
            if size != stamp.get(f"{name}_bytes"):
                raise _Stale(f"{files[name].name} has {size} bytes, the stamp says {stamp.get(f'{name}_bytes')}")
        try:
            index = faiss.read_index(str(files["faiss"]))
        except RuntimeError as exc:
            raise _Stale(f"{files['faiss'].name} cannot be read ({str(exc).strip().splitlines()[-1]})") from None
        index_ids = faiss.vector_to_array(index.id_map) if hasattr(index, "id_map") else None
        if index.ntotal != count or index_ids is None or ids_checksum(index_ids) != stamp["ids_checksum"]:
            raise _Stale(f"{files['faiss'].name} does not hold the ids its stamp promises")
        if count:
            vectors = np.memmap(files["f32"], dtype=np.float32, mode="r", shape=(count, state.dim))
        else:
            vectors = np.zeros((0, state.dim), np.float32)
        _configure(index, stamp["kind"], lib)
        return cls(state.model_id, state.revision, state.dim, state.ids, vectors, index, stamp["kind"])

    # ------------------------------------------------------------------------------------------------ build
    @classmethod
    def build(cls, lib: Library, model_id: int, reason: str | None = None) -> VectorIndex:
        """Rebuild from the database. Files are written when this thread holds, or can take, the library lock;
        otherwise (an indexer is running elsewhere) the index lives in memory only. Full disk: StoreError."""
        try:
            with lib.lock("rebuild vectors"):
                return cls._build(lib, model_id, reason, write=True)
        except (LibraryBusyError, LibraryReadOnlyError):
            return cls._build(lib, model_id, reason, write=False)

    @classmethod
    def _build(cls, lib: Library, model_id: int, reason: str | None, write: bool) -> VectorIndex:
        t0 = time.perf_counter()
        snap = read_snapshot(lib, model_id)
        assert snap.matrix is not None
        kind = desired_kind(lib, len(snap.ids))
        index = build_faiss(snap.matrix, snap.ids, kind)
        if write:
            write_files(lib, snap, index, kind)
        _configure(index, kind, lib)
        log.info("built %s index of model %s: %d vectors in %.2f s%s", kind, model_id, len(snap.ids),
                 time.perf_counter() - t0, "" if write else " (in memory: the library is locked elsewhere)")
        return cls(model_id, snap.revision, snap.dim, snap.ids, snap.matrix, index, kind, rebuilt=reason)


class _Stale(Exception):
    """Why the files on disk cannot be used as they are."""


# ------------------------------------------------------------------------------------------------ atomic write


def write_files(lib: Library, snap: Snapshot, index: faiss.Index, kind: str) -> None:
    """Write all three files to temporary names first, then rename them into place, stamp last.

    A failure while writing (a full disk above all) removes the temporary files and leaves the previous index
    files exactly as they were; the database is never touched here.
    """
    assert snap.matrix is not None
    files = file_paths(lib, snap.model_id)
    _remove_stale_temps(lib.vectors_dir)  # left by a killed writer; the caller holds the lock
    matrix = np.ascontiguousarray(snap.matrix).reshape(-1).view(np.uint8)
    write_index = FaissWriter(index)

    def write_stamp(f) -> None:
        stamp = {
            "format": STAMP_FORMAT,
            "model_id": snap.model_id,
            "revision": snap.revision,
            "count": len(snap.ids),
            "dim": snap.dim,
            "max_image_id": int(snap.ids[-1]) if len(snap.ids) else 0,
            "ids_checksum": ids_checksum(snap.ids),
            **snap.owner,
            "kind": kind,
            "f32_bytes": int(matrix.nbytes),
            "faiss_bytes": write_index.written,
        }
        f.write(json.dumps(stamp, indent=1).encode())

    try:
        atomic_write_group([  # the stamp last: it is the commit point
            (files["f32"], lambda f: f.write(matrix)),
            (files["faiss"], write_index),
            (files["stamp"], write_stamp),
        ])
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise StoreError(
                f"disk full while writing the vector index of library '{lib.name}' ({exc.strerror}); the database "
                "and the previous index files are intact. Free some space and run the indexer again to rebuild it."
            ) from exc
        raise StoreError(f"cannot write the vector index in {lib.vectors_dir}: {exc}") from exc


class FaissWriter:
    """Streams a FAISS index into a file (a 1M x 384 index is 1.5 GB: no copy in memory) and counts its bytes for
    the stamp written after it."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.written = 0

    def __call__(self, f) -> None:
        def chunk(data: bytes) -> None:
            self.written += len(data)
            f.write(data)

        faiss.write_index(self.index, faiss.PyCallbackIOWriter(chunk))


def vector_index(lib: Library, model_id: int) -> VectorIndex:
    """The search index for a model, checked against the database and rebuilt from it when stale; kept in memory
    (engine.store.index_cache) while the database revision stays the same."""
    with lib.session() as s:
        revision = s.scalar(select(Model.revision).where(Model.id == model_id))
    if revision is None:
        raise StoreError(f"library '{lib.name}' has no model with id {model_id}")
    return index_cache.cached_index(lib.root, lib.db_path, "vectors", model_id, revision,
                                    lambda: VectorIndex.open(lib, model_id))


def library_vectors(lib: Library, model_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(image ids ascending (n,) int64, L2-normalised vectors (n, D) float32), row for row."""
    index = vector_index(lib, model_id)
    return index.ids(), index.vectors()


def _remove_stale_temps(folder: Path, dead_writers_only: bool = False) -> None:
    """Temporary files left by a killed writer (a 1M-vector library leaves ~1.5 GB). Under the library lock every
    one is stale; without it (opening a library to search) only those whose writing process has ended, whose pid
    is in the name. Unreadable or read-only folders are left as they are."""
    try:
        temps = list(folder.glob(".model_*.tmp"))
    except OSError:
        return
    for tmp in temps:
        if dead_writers_only and _writer_alive(tmp.name):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _writer_alive(name: str) -> bool:
    """Whether the process named in ".model_1.f32.<pid>.tmp" still runs (unknown counts as alive)."""
    try:
        pid = int(name.rsplit(".", 2)[-2])
    except (ValueError, IndexError):
        return True
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would terminate the process: never probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process; anything else: leave the file
        return True
    return True
