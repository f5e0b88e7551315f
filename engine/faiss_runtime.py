"""FAISS runtime settings: how many threads and which distance path suit a given search.

On this project's shared 2-core machines FAISS's spinning OpenMP workers make batched searches 5-10x slower with 2
threads than with 1 (100 queries over 100k x 384 with torch loaded: 0.8-1.6 s against 0.10-0.15 s), a single query
gains nothing from a second thread, and a single query must not take faiss's BLAS path (3-5x slower).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

log = logging.getLogger("dinoscope.faiss")

SMALL_BATCH = 20  # faiss switches to BLAS at 20 queries (the threshold set below)
SEQUENTIAL = 1 << 30  # a BLAS threshold no query batch reaches: FAISS's own SIMD scan
BATCHED = 20  # the BLAS threshold for batched flat search


def configure_faiss() -> None:
    """Process-wide default: faiss 1.15 defaults to 128000, which keeps batched flat search on the slow non-BLAS
    path (1M x 384, 100 queries: 2.7 s -> 0.45 s with 20; ENVIRONMENT.md §4). Single queries are unaffected."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BATCHED


def batch_threads() -> int:
    """FAISS threads for batched work (dedup, k-means, many queries).

    DINOSCOPE_FAISS_THREADS wins when set. Otherwise one thread on machines with two cores or fewer, where a
    second OpenMP worker only spins against the model, the GUI and the decoders (measured in the module doc),
    and FAISS's own default (OMP_NUM_THREADS or all cores) elsewhere.
    """
    import faiss

    env = os.environ.get("DINOSCOPE_FAISS_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("DINOSCOPE_FAISS_THREADS=%r is not a number; ignored", env)
    if (os.cpu_count() or 1) <= 2:
        return 1
    return max(1, faiss.omp_get_max_threads())


@contextlib.contextmanager
def faiss_settings(n_queries: int | None = None, threads: int | None = None) -> Iterator[int]:
    """Run FAISS with the threads and distance path that suit `n_queries` (None: batched work); yields the
    thread count and restores both settings afterwards. `threads` overrides the thread count (a worker that has
    the machine to itself, such as a map fit, takes every core).

    Threads: fewer than 20 queries take one thread, since FAISS splits a scan by query and a lone query has
    nothing to give a second thread but the cost of waking it (libgomp keeps this per calling thread).
    Distance path: batched search uses a BLAS threshold of 20, but with it faiss 1.15 also runs a single query
    through BLAS, 3-5x slower than its SIMD scan (one thread, 100k x 384: 29 ms against 7 ms; 1M: 398 ms against
    85 ms). From 2 queries on, BLAS wins (4 queries over 100k: 28 against 42 ms). The threshold is process-wide,
    so a search running meanwhile in another thread may take the other path: slower for its duration, never wrong.
    """
    import faiss

    if threads is None:
        threads = 1 if n_queries is not None and n_queries < SMALL_BATCH else batch_threads()
    threshold = SEQUENTIAL if n_queries == 1 else BATCHED
    before = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold
    faiss.omp_set_num_threads(threads)
    faiss.cvar.distance_compute_blas_threshold = threshold
    try:
        yield threads
    finally:
        faiss.omp_set_num_threads(before[0])
        faiss.cvar.distance_compute_blas_threshold = before[1]


__all__ = ["BATCHED", "SEQUENTIAL", "SMALL_BATCH", "batch_threads", "configure_faiss", "faiss_settings"]
