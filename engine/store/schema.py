"""The library database: ORM tables, the schema version and the migrations that bring old files up to date.

The database is the source of truth. Everything else in a library folder (vector files, FAISS indexes) is derived
from it and can be rebuilt, so every embedding is stored here as a BLOB.

Layout notes (why, not what):
* Per-model tables use (model_id, image_id) as their primary key, so one model's rows are a contiguous range of
  the key index (reading every vector of a model in image-id order is one index scan); a second index on image_id
  keeps ON DELETE CASCADE from images cheap.
* Region vectors live in their own table rather than beside the global vector: at 20 x D float16 they are ten times
  larger, and sharing a row pushed each global vector onto an overflow page. Measured on 100k x 384 rows: reading
  all global vectors took 7.9 s cold / 0.6 s warm from the shared rows, 0.7 s / 0.25 s from a separate table.
* ``models.revision`` is bumped by triggers on every change to a model's embeddings (cascades included). A vector
  file records the revision it was built from, which catches a re-embedded image whose id did not change.
* ``images.id`` uses AUTOINCREMENT: ids are never reused, so an id held by a stale index or a GUI selection can
  never silently point at a different photo.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    CheckConstraint,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

LIBRARY_ID_KEY = "library_id"
"""meta key of a random id given to a library when it is created: derived files record it, so files copied from
another library, or left behind when library.db was deleted and created anew, are never taken for this one's."""

SCHEMA_VERSION = 2
"""The schema this code writes. Bump it and register a migration in MIGRATIONS when a table changes."""

STATUSES = ("pending", "ok", "error")
LABEL_SOURCES = ("user", "knn", "probe")


class StoreError(Exception):
    """A library cannot be used as asked; the message says why and what to do."""


class LibraryBusyError(StoreError):
    """Another process (or another thread of this one) is indexing the library."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class LibraryVersionError(StoreError):
    """The database was written by a newer Dinoscope; it is left untouched."""


class LibraryDamagedError(StoreError):
    """library.db fails SQLite's consistency check or lacks a table; nothing more is read from it or written."""


class LibraryReadOnlyError(StoreError):
    """The library is on a read-only disk or folder: it can be searched and browsed, not changed."""




def utcnow() -> datetime:
    return datetime.now(UTC)


class IsoDateTime(TypeDecorator):
    """Datetimes as ISO-8601 text that keeps the UTC offset when there is one.

    EXIF capture times are local wall-clock times, usually without an offset: stored as written they sort the way
    a photographer expects. SQLAlchemy's SQLite DateTime would drop an offset silently.
    """

    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> str | None:
        return None if value is None else value.isoformat()

    def process_result_value(self, value: str | None, dialect) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)


class FsText(TypeDecorator):
    """Text that may hold a file name which is not valid UTF-8 (legal on Linux: bytes from an old camera card or a
    Latin-1 system). Python carries such names as str with surrogate escapes, which SQLite cannot store as TEXT;
    those values are stored as their raw bytes (a BLOB in the same column) and read back as the identical str, so
    the file can still be opened, moved and found by path. Valid names stay ordinary TEXT."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect) -> str | bytes | None:
        if value is None or not isinstance(value, str):
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return to_fs_bytes(value)
        return value

    def process_result_value(self, value: str | bytes | None, dialect) -> str | None:
        if isinstance(value, bytes):
            return value.decode("utf-8", "surrogateescape")
        return value


def to_fs_bytes(value: str) -> bytes:
    """The bytes of a name as the file system holds them (surrogate escapes back to their original bytes)."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no POSIX file name decodes to (Windows names)
        return value.encode("utf-8", "surrogatepass")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: IsoDateTime()}  # noqa: RUF012 (SQLAlchemy reads this class attribute)


class Meta(Base):
    """Key/value facts about the library: the schema version and per-library settings."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Folder(Base):
    """A source folder the user added; every image belongs to exactly one."""

    __tablename__ = "folders"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(FsText, unique=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class Image(Base):
    """One file on disk. status 'error' rows keep the reason, so a broken file is listed instead of retried."""

    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint(f"status IN {STATUSES}", name="image_status"),
        Index("ix_images_content_hash", "content_hash"),
        Index("ix_images_status", "status"),
        Index("ix_images_folder", "folder_id"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(FsText, unique=True)  # absolute; FsText keeps non-UTF-8 names intact
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str | None] = mapped_column(String(32))  # blake2b-128 hex of the whole file
    width: Mapped[int | None] = mapped_column(Integer)  # as displayed (EXIF orientation applied)
    height: Mapped[int | None] = mapped_column(Integer)
    orientation: Mapped[int | None] = mapped_column(Integer)
    captured_at: Mapped[datetime | None] = mapped_column()
    format: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(8), default="pending")
    error: Mapped[str | None] = mapped_column(FsText)  # names the file, so it may hold its undecodable bytes
    indexed_at: Mapped[datetime | None] = mapped_column()
    raw_path: Mapped[str | None] = mapped_column(Text)  # a camera RAW beside this JPEG (same stem): one photo


class Thumbnail(Base):
    """A small JPEG (longest side 256), made from the same decode as the model input and shared by all models."""

    __tablename__ = "thumbnails"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)


class Model(Base):
    """A backbone, identified by its weights (checkpoint_hash), whatever file or zoo name they came from."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(FsText)
    source: Mapped[str] = mapped_column(FsText)
    checkpoint_hash: Mapped[str] = mapped_column(String(64), unique=True)
    dim: Mapped[int] = mapped_column(Integer)
    patch_size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revision: Mapped[int] = mapped_column(Integer, default=0)  # maintained by triggers on embeddings


class Embedding(Base):
    """The global (CLS) vector of an image under a model: float32, L2-normalised."""

    __tablename__ = "embeddings"
    __table_args__ = (Index("ix_embeddings_image", "image_id"),)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class Region(Base):
    """Pooled patch vectors (2x2 then 4x4 grid, 20 x D float16, each L2-normalised); deleted with the embedding."""

    __tablename__ = "regions"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model_id", "image_id"], ["embeddings.model_id", "embeddings.image_id"], ondelete="CASCADE"
        ),
        Index("ix_regions_image", "image_id"),
    )
    model_id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        CheckConstraint(f"source IN {LABEL_SOURCES}", name="label_source"),
        Index("ix_labels_name", "name"),
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    source: Mapped[str] = mapped_column(String(8), default="user")
    confidence: Mapped[float | None] = mapped_column(Float)


class MapCoord(Base):
    __tablename__ = "map_coords"
    __table_args__ = (Index("ix_map_coords_image", "image_id"),)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    cluster: Mapped[int | None] = mapped_column(Integer)


class Cluster(Base):
    __tablename__ = "clusters"
    __table_args__ = (Index("ix_clusters_image", "image_id"),)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    k: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    cluster: Mapped[int] = mapped_column(Integer)


class StackMember(Base):
    """A photo's stack under a model (engine/stacks.py): near-identical copies, or a burst (same scene, same folder,
    seconds apart). Every photo that has been through stacking has a row (one on its own is a stack of size 1);
    stack_id is the cover's image id. Deleted with the embedding, so a re-embedded photo is stacked again."""

    __tablename__ = "stack_members"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model_id", "image_id"], ["embeddings.model_id", "embeddings.image_id"], ondelete="CASCADE"
        ),
        Index("ix_stack_members_stack", "model_id", "stack_id"),
        Index("ix_stack_members_image", "image_id"),
    )
    model_id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(primary_key=True)
    stack_id: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)  # members when last written: fewer rows now = a member was removed


def is_read_only(path: Path) -> bool:
    """True when this process cannot write the database or create its -wal/-shm files beside it (a read-only
    mount, `chattr +i`, or permissions), so it must be opened as an immutable snapshot."""
    folder = path.parent
    return (path.exists() and not os.access(path, os.W_OK)) or (folder.exists() and not os.access(folder, os.W_OK))


def ro_uri(path: Path) -> str:
    # immutable=1: SQLite takes no locks and creates no -shm, which is what lets a read-only WAL database open at
    # all. Nobody can change a file this process may not write and whose folder it may not write... except its
    # owner; a leftover -wal (a writer killed before it checkpointed) keeps the plain read-only mode, which sees it.
    wal = path.with_name(path.name + "-wal")
    immutable = not (wal.exists() and wal.stat().st_size > 0)
    return f"{path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")


__all__ = [
    "SCHEMA_VERSION",
    "Base",
    "Cluster",
    "Embedding",
    "Folder",
    "Image",
    "Label",
    "LibraryDamagedError",
    "LibraryReadOnlyError",
    "LibraryVersionError",
    "MapCoord",
    "Meta",
    "Model",
    "Region",
    "StackMember",
    "StoreError",
    "Thumbnail",
    "is_read_only",
    "ro_uri",
]
