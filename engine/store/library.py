"""A photo library: one folder holding library.db, derived vector files and a lock file.

Reading (browsing, search) needs no lock: SQLite's WAL mode lets readers run beside the single writer. Anything
that changes which images or folders exist (indexing, adding or removing folders) holds `library.lock`, so two
processes never index the same library at once; the second is told who holds it.

Why this file is long: `Library` is the store's whole read and bookkeeping API (folders, images, models, labels,
settings, the writer lock) over one session factory; splitting it would scatter what one transaction needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import sessionmaker

from engine import data_home
from engine.store import index_cache
from engine.store.database import open_engine
from engine.store.regions import N_REGIONS
from engine.store.schema import (
    Embedding,
    Folder,
    Image,
    LibraryBusyError,
    LibraryDamagedError,
    LibraryReadOnlyError,
    Meta,
    Model,
    Region,
    StoreError,
    Thumbnail,
)

DEFAULT_NAME = "default"
DB_NAME = "library.db"
LOCK_NAME = "library.lock"
VECTORS_DIR = "vectors"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")

SETTINGS: dict[str, tuple[type, object]] = {
    # Past this many vectors an approximate index replaces exact search (ENVIRONMENT.md §4: exact flat search
    # answers 100 queries over 1M x 384 in ~0.45 s; personal libraries rarely get there).
    "ann_threshold": (int, 1_000_000),
    "ann_kind": (str, "ivf"),  # "ivf" or "hnsw"; see engine.store.vectors for the choice
    "ivf_nprobe": (int, 16),
    "hnsw_ef_search": (int, 64),
}


# ---------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class FolderRecord:
    id: int
    path: str
    added_at: datetime
    images: int = 0


@dataclass(frozen=True)
class ImageRecord:
    id: int
    folder_id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    width: int | None
    height: int | None
    orientation: int | None
    captured_at: datetime | None
    format: str | None
    status: str
    error: str | None
    indexed_at: datetime | None
    raw_path: str | None = None  # the camera RAW shown through this JPEG (same stem, same folder)

    @classmethod
    def of(cls, row: Image) -> ImageRecord:
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ModelRecord:
    id: int
    name: str
    source: str
    checkpoint_hash: str
    dim: int
    patch_size: int
    created_at: datetime
    revision: int

    @classmethod
    def of(cls, row: Model) -> ModelRecord:
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})


# ------------------------------------------------------------------------------------------------------- lock


class _FileLock:
    """An exclusive, non-blocking lock on library.lock that dies with its process (flock; LockFileEx on Windows).

    Re-entrant for the thread that holds it, so an indexing run can call add_folder; any other thread or process
    gets LibraryBusyError. The holder's pid and command are written into the file for that message.
    """

    def __init__(self, path: Path, library_name: str) -> None:
        self.path = path
        self.library_name = library_name
        self._fd: int | None = None
        self._owner: int | None = None
        self._depth = 0
        self._guard = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None and self._owner == threading.get_ident()

    def acquire(self, command: str) -> None:
        with self._guard:
            if self._fd is not None:
                if self._owner == threading.get_ident():
                    self._depth += 1
                    return
                raise LibraryBusyError(
                    f"library '{self.library_name}' is busy: this process ({os.getpid()}) is indexing it",
                    os.getpid(),
                )
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # read-only disk or folder, chattr +i: the library can be read, not changed
                raise LibraryReadOnlyError(
                    f"library '{self.library_name}' is read-only ({exc.strerror}: {self.path.parent}); it can be "
                    "searched and browsed but not indexed or changed") from None
            try:
                _lock_fd(fd)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                pid = holder.get("pid")
                who = f"process {pid}" if pid else "another process"
                doing = holder.get("command") or "indexing"
                verb = "is indexing it" if doing == "index" else f"is using it ({doing})"
                raise LibraryBusyError(f"library '{self.library_name}' is busy: {who} {verb}", pid) from None
            except BaseException:
                os.close(fd)
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode() + b"\n", 0)
            self._fd, self._owner, self._depth = fd, threading.get_ident(), 1

    def release(self) -> None:
        with self._guard:
            if self._fd is None or self._owner != threading.get_ident():
                return
            self._depth -= 1
            if self._depth:
                return
            fd, self._fd, self._owner = self._fd, None, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            _unlock_fd(fd)
            os.close(fd)


try:
    import fcntl

    def _lock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError when held elsewhere

    def _unlock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # Windows
    import msvcrt

    _FAR = 1 << 30  # lock a byte past the text, so that a busy process can still read who holds the lock

    def _lock_fd(fd: int) -> None:
        os.lseek(fd, _FAR, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(str(exc)) from None

    def _unlock_fd(fd: int) -> None:
        os.lseek(fd, _FAR, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------------- library


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class Library:
    """Open with `Library.open(name_or_path)`; use as a context manager or call close()."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.db_path = root / DB_NAME
        self.vectors_dir = root / VECTORS_DIR
        self.engine = open_engine(self.db_path)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        # Write transactions start with BEGIN IMMEDIATE (see schema._on_begin).
        self.write_session = sessionmaker(self.engine.execution_options(sqlite_begin="IMMEDIATE"),
                                          expire_on_commit=False)
        self._lock = _FileLock(root / LOCK_NAME, name)

    # ------------------------------------------------------------------------------------ open / list / close
    @classmethod
    def open(cls, name_or_path: str | os.PathLike = DEFAULT_NAME, create: bool = True) -> Library:
        """A library by name (a folder under the user's libraries directory) or by folder path."""
        root, name = cls.resolve(name_or_path)
        if not (root / DB_NAME).exists():
            if not create:
                raise StoreError(f"there is no library '{name}' (looked in {root})")
            if root.exists() and not root.is_dir():
                raise StoreError(f"{root} is a file, not a library folder")
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the library folder {root} ({exc.strerror})") from None
        vectors = root / VECTORS_DIR
        if vectors.exists() and not vectors.is_dir():
            raise LibraryDamagedError(f"{vectors} is a file, but a library keeps its vector indexes in a folder of "
                                      "that name; move the file away (the indexes are rebuilt from library.db)")
        return cls(root, name)

    @staticmethod
    def resolve(name_or_path: str | os.PathLike) -> tuple[Path, str]:
        text = os.fspath(name_or_path)
        is_path = isinstance(name_or_path, os.PathLike) or os.sep in text or text.startswith(("~", "."))
        if is_path:
            root = Path(text).expanduser().resolve()
            return root, root.name
        if not _NAME_RE.match(text):
            raise StoreError(
                f"{text!r} is not a valid library name (letters, digits, space, '.', '_', '+', '-'; "
                "at most 64 characters) and not a path"
            )
        return data_home.libraries_dir() / text, text

    @staticmethod
    def list_names() -> list[str]:
        base = data_home.libraries_dir()
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / DB_NAME).is_file())

    def close(self) -> None:
        index_cache.forget(self.root)
        self.engine.dispose()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Library({self.name!r}, {str(self.root)!r})"

    # ------------------------------------------------------------------------------------------------- lock
    @contextlib.contextmanager
    def lock(self, command: str = "index") -> Iterator[None]:
        """Hold the library's write lock; LibraryBusyError if another process or thread holds it."""
        self._lock.acquire(command)
        try:
            yield
        finally:
            self._lock.release()

    @property
    def locked_here(self) -> bool:
        """True when the calling thread holds the write lock."""
        return self._lock.held

    # ---------------------------------------------------------------------------------------------- settings
    def setting(self, key: str):
        kind, default = _setting_spec(key)
        with self.session() as s:
            value = s.get(Meta, f"setting.{key}")
        return default if value is None else kind(value.value)

    def settings(self) -> dict[str, object]:
        return {key: self.setting(key) for key in SETTINGS}

    def set_setting(self, key: str, value) -> None:
        kind, _ = _setting_spec(key)
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise StoreError(f"setting {key} must be {kind.__name__}, got {value!r}") from None
        if key == "ann_kind" and value not in ("ivf", "hnsw"):
            raise StoreError(f"ann_kind must be 'ivf' or 'hnsw', got {value!r}")
        if kind is int and value < 1:
            raise StoreError(f"setting {key} must be at least 1, got {value}")
        with self.write_session.begin() as s:
            s.merge(Meta(key=f"setting.{key}", value=str(value)))

    # ----------------------------------------------------------------------------------------------- folders
    def folders(self) -> list[FolderRecord]:
        with self.session() as s:
            counts = dict(s.execute(select(Image.folder_id, func.count()).group_by(Image.folder_id)).all())
            rows = s.scalars(select(Folder).order_by(Folder.path)).all()
            return [FolderRecord(f.id, f.path, f.added_at, counts.get(f.id, 0)) for f in rows]

    def add_folder(self, path: str | os.PathLike) -> FolderRecord:
        """Register a source folder (its real path). A folder inside one already added is covered by that one; a
        folder that contains already-added ones absorbs them (their images keep their rows)."""
        real = os.path.realpath(os.path.expanduser(os.fspath(path)))
        if not os.path.isdir(real):
            what = "is not a folder" if os.path.exists(real) else "does not exist"
            raise StoreError(f"{path} {what}")
        with self.lock("add folder"), self.write_session.begin() as s:
            existing = s.scalars(select(Folder)).all()
            for f in existing:
                if _is_within(real, f.path):
                    return FolderRecord(f.id, f.path, f.added_at)
            folder = Folder(path=real)
            s.add(folder)
            s.flush()
            for f in existing:
                if _is_within(f.path, real):
                    s.execute(update(Image).where(Image.folder_id == f.id).values(folder_id=folder.id))
                    s.delete(f)
            return FolderRecord(folder.id, folder.path, folder.added_at)

    def folder_for(self, path: str | os.PathLike) -> FolderRecord | None:
        """The registered folder that holds `path`, if any."""
        real = os.path.realpath(os.path.expanduser(os.fspath(path)))
        for f in self.folders():
            if _is_within(real, f.path):
                return f
        return None

    def remove_folder(self, path: str | os.PathLike) -> int:
        """Forget a source folder and everything indexed from it; returns how many images were removed."""
        real = os.path.realpath(os.path.expanduser(os.fspath(path)))
        with self.lock("remove folder"), self.write_session.begin() as s:
            folder = s.scalar(select(Folder).where(Folder.path.in_({real, os.fspath(path)})))
            if folder is None:
                raise StoreError(f"{path} is not a folder of library '{self.name}'")
            n = s.scalar(select(func.count()).select_from(Image).where(Image.folder_id == folder.id)) or 0
            s.execute(delete(Folder).where(Folder.id == folder.id))  # cascades to images and everything derived
            return n

    # ------------------------------------------------------------------------------------------------ images
    def images(
        self,
        status: str | None = None,
        folder: int | str | None = None,
        order_by: str = "path",
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ImageRecord]:
        orders = {"path": (Image.path,), "id": (Image.id,), "captured_at": (Image.captured_at, Image.path)}
        if order_by not in orders:
            raise ValueError(f"order_by must be one of {', '.join(orders)}, got {order_by!r}")
        q = select(Image)
        if status is not None:
            q = q.where(Image.status == status)
        if folder is not None:
            if isinstance(folder, int):
                q = q.where(Image.folder_id == folder)
            else:
                q = q.join(Folder).where(Folder.path == os.path.realpath(folder))
        q = q.order_by(*orders[order_by]).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self.session() as s:
            return [ImageRecord.of(r) for r in s.scalars(q)]

    def image_paths(self, status: str | None = "ok", order_by: str = "path") -> list[tuple[int, str]]:
        """(id, path) of every image, ordered as :meth:`images` orders them: what a photo grid needs, without
        building a full record per row (at 100k images 0.2 s instead of several seconds on the UI thread)."""
        orders = {"path": (Image.path,), "id": (Image.id,), "captured_at": (Image.captured_at, Image.path)}
        if order_by not in orders:
            raise ValueError(f"order_by must be one of {', '.join(orders)}, got {order_by!r}")
        rank = func.row_number().over(order_by=orders[order_by]).label("rank")
        q = select(Image.id, Image.path, rank)
        if status is not None:
            q = q.where(Image.status == status)
        sub = q.subquery()
        # One row, one JSON array, built inside SQLite: sqlite3 releases the GIL on every row it steps, and at
        # start-up a worker imports torch, so 100k single-row steps waited 1.1 s for the GIL instead of 0.12 s.
        # A name that is not UTF-8 is a BLOB (FsText), which JSON cannot hold: those come as null, read apart.
        text_path = case((func.typeof(sub.c.path) == "text", sub.c.path), else_=None)
        whole = select(func.json_group_array(func.json_array(sub.c.rank, sub.c.id, text_path)))
        with self.session() as s:
            conn = s.connection()
            ranked = sorted(json.loads(conn.execute(whole).scalar_one() or "[]"))  # the rank fixes the order
            odd = [i for _r, i, p in ranked if p is None]
            rest = conn.execute(select(Image.id, Image.path).where(Image.id.in_(odd))) if odd else ()
            odd_paths = {i: p for i, p in rest}
        return [(int(i), str(p if p is not None else odd_paths[i])) for _r, i, p in ranked]

    def image(self, image_id: int) -> ImageRecord | None:
        with self.session() as s:
            row = s.get(Image, image_id)
            return None if row is None else ImageRecord.of(row)

    def image_by_path(self, path: str | os.PathLike) -> ImageRecord | None:
        """Looked up as given (absolute), then with links resolved (rows hold the path found under the folder)."""
        given = os.path.abspath(os.path.expanduser(os.fspath(path)))
        with self.session() as s:
            row = s.scalar(select(Image).where(Image.path.in_({given, os.path.realpath(given)})))
            return None if row is None else ImageRecord.of(row)

    def errors(self) -> list[tuple[str, str]]:
        """(path, reason) of every file that could not be read, for `python -m app index --errors`."""
        with self.session() as s:
            rows = s.execute(select(Image.path, Image.error).where(Image.status == "error").order_by(Image.path))
            return [(p, e or "unknown error") for p, e in rows]

    def thumbnail(self, image_id: int) -> bytes | None:
        with self.session() as s:
            return s.scalar(select(Thumbnail.jpeg).where(Thumbnail.image_id == image_id))

    def counts(self) -> dict:
        """{'total', 'ok', 'error', 'pending', 'per_model': {model_id: embeddings}}."""
        with self.session() as s:
            by_status = dict(s.execute(select(Image.status, func.count()).group_by(Image.status)).all())
            per_model = dict(s.execute(select(Embedding.model_id, func.count()).group_by(Embedding.model_id)).all())
        out = {"total": sum(by_status.values())}
        out.update({k: by_status.get(k, 0) for k in ("ok", "error", "pending")})
        out["per_model"] = per_model
        return out

    # ------------------------------------------------------------------------------------------------ models
    def models(self) -> list[ModelRecord]:
        with self.session() as s:
            return [ModelRecord.of(m) for m in s.scalars(select(Model).order_by(Model.id))]

    def model(self, model_id: int) -> ModelRecord | None:
        with self.session() as s:
            row = s.get(Model, model_id)
            return None if row is None else ModelRecord.of(row)

    def model_by_source(self, source: str | os.PathLike) -> ModelRecord | None:
        """The most recent model indexed from this source string (zoo name or path as the user gave it)."""
        names = {os.fspath(source)}
        if os.path.exists(os.fspath(source)):
            names.add(str(Path(source).expanduser().resolve()))
        with self.session() as s:
            row = s.scalars(
                select(Model).where(Model.name.in_(names) | Model.source.in_(names)).order_by(Model.id.desc())
            ).first()
            return None if row is None else ModelRecord.of(row)

    # ----------------------------------------------------------------------------------------------- vectors
    def regions(self, model_id: int, image_ids: Iterable[int]) -> np.ndarray:
        """(n, 20, D) float16 region vectors of the given images, in the order given (KeyError for a missing one)."""
        ids = [int(i) for i in image_ids]
        model = self.model(model_id)
        if model is None:
            raise StoreError(f"library '{self.name}' has no model with id {model_id}")
        found: dict[int, bytes] = {}
        with self.session() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                q = select(Region.image_id, Region.data).where(
                    Region.model_id == model_id, Region.image_id.in_(chunk)
                )
                found.update((image_id, data) for image_id, data in s.execute(q))
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"no region vectors for image id(s) {missing[:10]} under model {model_id}")
        out = np.empty((len(ids), N_REGIONS, model.dim), np.float16)
        for row, image_id in enumerate(ids):
            out[row] = np.frombuffer(found[image_id], np.float16).reshape(N_REGIONS, model.dim)
        return out


def _setting_spec(key: str) -> tuple[type, object]:
    try:
        return SETTINGS[key]
    except KeyError:
        raise StoreError(f"unknown library setting {key!r}; known: {', '.join(SETTINGS)}") from None
