"""The photo library store: SQLite database (the source of truth), derived vector files, incremental indexing.

`Library`, the records and the errors import cheaply (SQLAlchemy only); `index_library` pulls in torch and
`VectorIndex` pulls in FAISS, so both are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.store.library import (
    FolderRecord,
    ImageRecord,
    Library,
    LibraryBusyError,
    ModelRecord,
)
from engine.store.schema import SCHEMA_VERSION, LibraryVersionError, StoreError

if TYPE_CHECKING:
    from engine.store.indexer import IndexReport, index_library
    from engine.store.vectors import VectorIndex

_LAZY = {
    "IndexReport": "engine.store.indexer",
    "index_library": "engine.store.indexer",
    "VectorIndex": "engine.store.vectors",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.store' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "SCHEMA_VERSION",
    "FolderRecord",
    "ImageRecord",
    "IndexReport",
    "Library",
    "LibraryBusyError",
    "LibraryVersionError",
    "ModelRecord",
    "StoreError",
    "VectorIndex",
    "index_library",
]
