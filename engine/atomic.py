"""Writing the store's own files (vector indexes, stamps, caches, settings) so that a crash leaves either the old
file or the new one, never half of one. (Copying and moving the user's photos is `engine.photo_files`.)"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call write(f) on a temp file in the same folder, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable too; best effort (directories cannot be opened so on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_group(files: list[tuple[Path, Callable[[BinaryIO], object]]]) -> None:
    """Write several files that belong together: each to a temp name in its folder, fsynced, then all renamed in
    the order given. Put the file that marks the group complete (a stamp) last: a crash before its rename leaves
    the old stamp, which no longer matches, so readers rebuild instead of trusting half a group. On any failure
    the temp files are removed and the previous files stay as they were; the error is raised."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, write in files:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            # ".<name>.<random>.<pid>.tmp": a later writer can tell a dead writer's leftovers by the pid
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{os.getpid()}.tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
        for folder in {path.parent for _, path in temps}:
            fsync_dir(folder)
    finally:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)


def remove_stale_temps(folder: str | os.PathLike, pattern: str) -> int:
    """Remove temp files a killed writer left (`.<name>.*.tmp`); only call it while holding the lock that
    serialises the writers of `folder`. Returns how many were removed."""
    removed = 0
    for tmp in Path(folder).glob(pattern):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed
