"""Opening a library's database: versions and migrations, connection settings, the quick check on open.

The tables themselves are `engine.store.schema`; this module brings a file to `schema.SCHEMA_VERSION` (read at
call time, so a test can raise it) and hands back the SQLAlchemy engine.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError

from engine.store import schema
from engine.store.integrity import quick_check
from engine.store.schema import (
    LIBRARY_ID_KEY,
    Base,
    LibraryReadOnlyError,
    LibraryVersionError,
    Meta,
    StackMember,
    StoreError,
    is_read_only,
    ro_uri,
)

_REVISION_TRIGGERS = (
    """CREATE TRIGGER embeddings_revision_insert AFTER INSERT ON embeddings
       BEGIN UPDATE models SET revision = revision + 1 WHERE id = NEW.model_id; END""",
    """CREATE TRIGGER embeddings_revision_update AFTER UPDATE ON embeddings
       BEGIN UPDATE models SET revision = revision + 1 WHERE id IN (OLD.model_id, NEW.model_id); END""",
    """CREATE TRIGGER embeddings_revision_delete AFTER DELETE ON embeddings
       BEGIN UPDATE models SET revision = revision + 1 WHERE id = OLD.model_id; END""",
)

# --------------------------------------------------------------------------------------------------- versions

Migration = Callable[[Connection], None]



def _add_raw_pairs_and_stacks(conn: Connection) -> None:
    """Schema 2: a JPEG row may carry its RAW twin's path, and stacks of near-identical photos and bursts."""
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN raw_path TEXT")
    StackMember.__table__.create(conn)


MIGRATIONS: dict[int, Migration] = {2: _add_raw_pairs_and_stacks}
"""target version -> function that upgrades a database at version target-1, run inside one transaction.

A new database is created directly at schema.SCHEMA_VERSION from the ORM above; migrations only ever run on files that
were written by an older Dinoscope. Version 1 is the first released schema.
"""


def _on_connect(dbapi_connection, _record) -> None:
    # pysqlite's own transaction handling would not put DDL (migrations) or SELECTs inside a transaction; let
    # SQLAlchemy's begin event below emit BEGIN instead (the recipe from SQLAlchemy's SQLite dialect docs).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the indexer, and a kill never corrupts
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _on_begin(conn: Connection) -> None:
    """BEGIN, or BEGIN IMMEDIATE for write transactions (execution option sqlite_begin="IMMEDIATE"): taking the
    write lock up front means a writer waits its turn instead of failing when its read snapshot turns stale."""
    conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', '')}".strip())


def stored_version(path: Path) -> int | None:
    """Read the schema version without changing a single byte of the file (read-only connection).

    None for a file with no tables (new). Raises StoreError for a file that is not a Dinoscope library.
    """
    if is_read_only(path):
        try:
            tables, row = _read_version(path, ro_uri(path))
        except sqlite3.OperationalError as exc:
            raise LibraryReadOnlyError(f"{path}: cannot read the read-only library database ({exc})") from None
        return _version_of(path, tables, row)
    try:
        tables, row = _read_version(path, f"{path.resolve().as_uri()}?mode=ro")
    except sqlite3.OperationalError:
        # A read-only connection cannot rebuild a missing WAL index (-shm); a normal one can, and recovering the
        # WAL rewrites only the -shm file, never the database file itself.
        try:
            tables, row = _read_version(path, path.resolve().as_uri())
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{path}: cannot read the library database ({exc})") from None
    return _version_of(path, tables, row)


def _version_of(path: Path, tables: set[str], row: tuple | None) -> int | None:
    if not tables:
        return None
    if "meta" not in tables:
        raise StoreError(f"{path} is not a Dinoscope library database (it has no meta table)")
    if row is None:
        raise StoreError(f"{path}: the library database has no schema version")
    try:
        return int(row[0])
    except ValueError:
        raise StoreError(f"{path}: the schema version {row[0]!r} is not a number") from None


def _read_version(path: Path, uri: str) -> tuple[set[str], tuple | None]:
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the library database ({exc})") from None
    try:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = None
        if "meta" in tables:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return tables, row
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: the library database is damaged or not SQLite ({exc})") from None
    finally:
        con.close()


def check_version(path: Path, version: int | None) -> None:
    if version is not None and version > schema.SCHEMA_VERSION:
        raise LibraryVersionError(
            f"{path} was created by a newer Dinoscope (schema {version}, this version reads up to "
            f"{schema.SCHEMA_VERSION}); upgrade Dinoscope"
        )


def open_engine(path: Path) -> Engine:
    """Engine for a library database, brought to the schema version, after a quick consistency check. A newer
    database is refused before any write; a damaged one (LibraryDamagedError) before anything is read from it; a
    read-only one is opened as a read-only snapshot (searchable; writes raise sqlite3's "readonly database")."""
    existed = path.exists()
    version = stored_version(path) if existed else None
    check_version(path, version)
    read_only = existed and is_read_only(path)
    if read_only:
        engine = create_engine(f"sqlite:///{ro_uri(path).replace('file://', 'file:', 1)}&uri=true")
        event.listen(engine, "connect", _on_connect_read_only)
    else:
        engine = create_engine(f"sqlite:///{path}")
        event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", _on_begin)
    try:
        if version is not None:  # an older schema lacks the tables its migration adds: those are checked after it
            quick_check(engine, path, tables=version == schema.SCHEMA_VERSION)
        if version == schema.SCHEMA_VERSION:
            if not read_only:
                _ensure_library_id(engine)
            return engine  # the common case takes no write lock, so opening never waits for a running indexer
        if read_only:
            raise LibraryReadOnlyError(
                f"{path} needs upgrading to schema {schema.SCHEMA_VERSION}, but it is read-only")
        try:
            migrate(engine)
        except OperationalError as exc:
            raise StoreError(f"cannot {'update' if existed else 'create'} the library database {path} "
                             f"({_sqlite_reason(exc)}); nothing was changed") from None
        if version is not None:
            quick_check(engine, path)  # the upgraded file has every table now
    except BaseException:
        engine.dispose()
        if not existed:  # a database this call created and could not finish: leave no empty shell behind
            for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        raise
    return engine


def _on_connect_read_only(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_reason(exc: Exception) -> str:
    text_ = str(getattr(exc, "orig", exc))
    return "the disk is full" if "full" in text_ else text_


def _ensure_library_id(engine: Engine) -> None:
    """Libraries created before the id existed get one, once; a read-only one goes without (its vector files then
    match no stamp and are rebuilt in memory, never trusted blindly)."""
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1 FROM meta WHERE key = :k"), {"k": LIBRARY_ID_KEY}).first() is not None:
            return
    try:
        with engine.connect() as conn, conn.execution_options(sqlite_begin="IMMEDIATE").begin():
            conn.execute(text("INSERT OR IGNORE INTO meta (key, value) VALUES (:k, :v)"),
                         {"k": LIBRARY_ID_KEY, "v": uuid.uuid4().hex})
    except OperationalError:  # read-only file or folder
        pass


def migrate(engine: Engine) -> int:
    """Create a new database, or apply the registered migrations from its stored version; returns the version.

    All steps run in one transaction (SQLite DDL is transactional): a failure leaves the file as it was.
    """
    with engine.connect() as conn, conn.execution_options(sqlite_begin="IMMEDIATE").begin():
        tables = set(inspect(conn).get_table_names())
        if not tables:
            Base.metadata.create_all(conn)
            for ddl in _REVISION_TRIGGERS:
                conn.exec_driver_sql(ddl)
            conn.execute(Meta.__table__.insert().values(key="schema_version", value=str(schema.SCHEMA_VERSION)))
            conn.execute(Meta.__table__.insert().values(key=LIBRARY_ID_KEY, value=uuid.uuid4().hex))
            return schema.SCHEMA_VERSION
        version = int(conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar_one())
        check_version(Path(engine.url.database or "library.db"), version)
        for target in range(version + 1, schema.SCHEMA_VERSION + 1):
            step = MIGRATIONS.get(target)
            if step is None:
                raise StoreError(f"no migration from schema {target - 1} to {target}; this build is incomplete")
            step(conn)
        if version != schema.SCHEMA_VERSION:
            conn.execute(text("UPDATE meta SET value = :v WHERE key = 'schema_version'"),
                         {"v": str(schema.SCHEMA_VERSION)})
        return schema.SCHEMA_VERSION


__all__ = ["MIGRATIONS", "check_version", "migrate", "open_engine", "stored_version"]
