"""Is a library database whole? A quick check every time a library opens, the full one on demand (`index --check`).

SQLite notices a damaged page only when a query reads it: garbage among the thumbnails would pass every search
unnoticed while the file is already broken. These checks read it on purpose.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DatabaseError

from engine.store.schema import Base, LibraryDamagedError, is_read_only, ro_uri

QUICK_CHECK_WHOLE_FILE_BYTES = 64 << 20
"""Up to this size the whole database gets PRAGMA quick_check when a library opens (~1 s per GB on the 2-core
machine: at most ~60 ms). Larger ones (a 100k-photo library is ~2.8 GB, whose full check takes 2.4 s) check the
tables every command reads first: meta, folders, models and images, 0.07 s at 100k photos; thumbnails, regions and
embeddings are checked in full by `index --check`."""
_CORE_TABLES = ("meta", "folders", "models", "images")


def _damaged(path: Path, problem: str) -> LibraryDamagedError:
    return LibraryDamagedError(
        f"{path} is damaged ({problem}); nothing was read from it or written to it. Your photos are untouched: "
        f"restore library.db from a backup, or move the library folder aside and index the folders again")


def quick_check(engine: Engine, path: Path, tables: bool = True) -> None:
    """Every table present (unless `tables` is False: a file of an older schema, before its migration adds the
    new ones), and SQLite's quick_check clean (on the whole file when small; see QUICK_CHECK_WHOLE_FILE_BYTES).
    Raises LibraryDamagedError naming the first problem."""
    try:
        with engine.connect() as conn:
            check_tables = tables
            tables = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = sorted(set(Base.metadata.tables) - tables) if check_tables else []
            if missing:
                raise _damaged(path, f"the table{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                                     f"{'are' if len(missing) > 1 else 'is'} missing")
            if path.stat().st_size <= QUICK_CHECK_WHOLE_FILE_BYTES:
                problems = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check(5)")]
            else:
                problems = []
                for table in _CORE_TABLES:
                    problems += [r[0] for r in conn.exec_driver_sql(f"PRAGMA quick_check({table})")]
    except DatabaseError as exc:
        raise _damaged(path, str(exc.orig)) from None
    problems = [p for p in problems if p != "ok"]
    if problems:
        raise _damaged(path, problems[0])


def integrity_check(path: Path, limit: int = 100) -> list[str]:
    """SQLite's full integrity_check (every page, index and constraint) plus the tables a library needs, through a
    read-only connection: the problems found, [] when intact. For `index --check`; a damaged file is only read."""
    uri = ro_uri(path) if is_read_only(path) else f"{path.resolve().as_uri()}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        return [f"cannot open it ({exc})"]
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        problems = [f"table {t} is missing" for t in sorted(set(Base.metadata.tables) - tables)]
        problems += [r[0] for r in con.execute(f"PRAGMA integrity_check({int(limit)})") if r[0] != "ok"]
    except sqlite3.Error as exc:
        problems = [str(exc)]
    finally:
        con.close()
    return problems
