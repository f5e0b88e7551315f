"""Copying and moving photos into a folder without ever overwriting or deleting anything silently.

Names are claimed atomically, so two processes (or the app and a file manager) moving "IMG_0001.jpg" into the same
folder at once each get their own name: a same-disk move is a hard link under the new name (which fails if the name
exists) then the removal of the old one; a copy, or a move across disks, writes a hidden temporary file in the
target folder, fsyncs it and only then links it under its final name. A kill at any moment leaves either the
original untouched or a complete file under the new name (at worst both, or a hidden ``.*.dinoscope-tmp`` file),
never a truncated photo under a real name. File systems without hard links (FAT, exFAT, some network shares)
reserve the name with an exclusive create instead and rename onto that reservation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from engine.progress import ProgressFn, Stopwatch

_TEMP_SUFFIX = ".dinoscope-tmp"
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EACCES}


class PartialMoveError(OSError):
    """A move or copy that stopped on an error after some files were done; ``done`` lists them."""

    def __init__(self, cause: OSError, done: list) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.filename = cause.filename
        self.cause = cause
        self.done = done

    def __str__(self) -> str:
        return f"{self.cause} ({len(self.done)} file(s) already done stay where they are now)"


def free_name(dest: Path, name: str) -> Path:
    """dest/name, or dest/"stem (2).ext", "stem (3).ext"... if taken. Only a first guess: the name is claimed
    atomically by the functions below, which move on to the next one if it was taken in the meantime."""
    return next(_candidates(dest, name))


def _candidates(dest: Path, name: str):
    stem, suffix = Path(name).stem, Path(name).suffix
    target, n = dest / name, 2
    while True:
        if not os.path.lexists(target):
            yield target
        target = dest / f"{stem} ({n}){suffix}"
        n += 1


def _claim(source: Path, dest: Path, name: str, *, keep_source: bool) -> Path:
    """Put `source` (a complete file on dest's disk) under the first free name in `dest`, atomically; returns it."""
    for target in _candidates(dest, name):
        try:
            os.link(source, target, follow_symlinks=False)  # a link is moved as a link, as rename would
        except FileExistsError:
            continue  # taken since we looked: try the next name
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            return _claim_by_reservation(source, dest, name)
        if not keep_source:
            os.unlink(source)
        return target
    raise AssertionError("unreachable")


def _claim_by_reservation(source: Path, dest: Path, name: str) -> Path:
    """For file systems without hard links: reserve the name with O_EXCL, then rename onto the reservation."""
    for target in _candidates(dest, name):
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        try:
            os.replace(source, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(target)
            raise
        return target
    raise AssertionError("unreachable")


def _temp_copy(src: Path, dest: Path) -> Path:
    """A complete, fsynced copy of src (data and times) under a hidden temporary name in dest."""
    tmp = dest / f".{src.name}.{uuid.uuid4().hex[:12]}{_TEMP_SUFFIX}"
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def copy_one(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy one photo into `dest` under a free name; returns where it went."""
    src, dest = Path(src), Path(dest)
    tmp = _temp_copy(src, dest)
    try:
        target = _claim(tmp, dest, src.name, keep_source=False)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest)
    return target


def move_one(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move one photo into `dest` under a free name; the source is removed only once the new file is complete."""
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(src))
    try:
        target = _claim(src, dest, src.name, keep_source=True)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        target = copy_one(src, dest)  # another disk: a complete copy first, then the original goes
    else:
        _fsync_dir(dest)
    os.unlink(src)
    _fsync_dir(src.parent)
    return target


def copy_files(paths: Iterable[str | os.PathLike], dest: str | os.PathLike,
               progress: ProgressFn | None = None,
               cancel: Callable[[], bool] | None = None) -> list[Path]:
    """Copy photos into a folder; a name already there gets " (2)", " (3)"... appended.

    ``progress`` follows the copies; when ``cancel()`` turns true the copying stops between files
    and the ones already copied are returned. An error raises :class:`PartialMoveError` listing those copied.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in paths]
    clock = Stopwatch()
    out: list[Path] = []
    for p in paths:
        if cancel is not None and cancel():
            break
        try:
            out.append(copy_one(p, dest))
        except OSError as exc:
            if not out:
                raise
            raise PartialMoveError(exc, out) from exc
        if progress is not None:
            progress(clock(len(out), len(paths), phase="copying", current=str(p)))
    return out


def move_files(paths: Iterable[str | os.PathLike], dest: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Move photos into a folder (renaming on collision); returns (from, to) pairs for an undo or a report.

    A file that cannot be moved stops the operation: with nothing moved yet its OSError is raised as it is,
    otherwise a :class:`PartialMoveError` whose ``done`` holds the (from, to) pairs of the files already moved.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    done: list[tuple[Path, Path]] = []
    for p in map(Path, paths):
        try:
            done.append((p, move_one(p, dest)))
        except OSError as exc:
            if not done:
                raise
            raise PartialMoveError(exc, done) from exc
    return done
