"""One cache policy for the indexes derived from a library (global vectors, region vectors).

Indexes are kept in memory per library folder and model, so every `Library` handle on one folder shares them
(the GUI's panels, a search run in a worker), and a cached index is used only while the database revision it was
built from is current and the database file is the same one (a library deleted and created again at the same
path starts afresh). The cache is bounded: each entry may hold hundreds of MB at 100k photos.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CACHE_SIZE = 4  # indexes kept in memory across kinds, libraries and models, least recently used dropped first

_cache: OrderedDict[tuple[str, str, int], tuple[tuple, Any]] = OrderedDict()
_guard = threading.Lock()


def _db_identity(db_path: Path) -> tuple[int, int]:
    try:
        st = os.stat(db_path)
    except OSError:
        return (0, 0)
    return (st.st_dev, st.st_ino)


def cached_index(root: Path, db_path: Path, kind: str, model_id: int, revision: int,
                 load: Callable[[], T]) -> T:
    """The cached `kind` index of a model at `revision`, or `load()` stored in its place."""
    key = (str(root), kind, int(model_id))
    version = (int(revision), _db_identity(db_path))
    with _guard:
        hit = _cache.get(key)
        if hit is not None and hit[0] == version:
            _cache.move_to_end(key)
            return hit[1]
    value = load()
    with _guard:
        _cache[key] = ((int(getattr(value, "revision", revision)), version[1]), value)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def forget(root: Path) -> None:
    """Drop every index of the library at `root` (it was closed, removed or rebuilt)."""
    with _guard:
        for key in [k for k in _cache if k[0] == str(root)]:
            del _cache[key]


__all__ = ["CACHE_SIZE", "cached_index", "forget"]
