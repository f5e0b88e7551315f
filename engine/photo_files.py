"""Copying and moving photos into a folder without ever overwriting or deleting anything silently."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from engine.progress import ProgressFn, Stopwatch


def free_name(dest: Path, name: str) -> Path:
    """dest/name, or dest/"stem (2).ext", "stem (3).ext"... if taken."""
    target = dest / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 2
    while target.exists():
        target = dest / f"{stem} ({n}){suffix}"
        n += 1
    return target


def copy_files(paths: Iterable[str | os.PathLike], dest: str | os.PathLike,
               progress: ProgressFn | None = None,
               cancel: Callable[[], bool] | None = None) -> list[Path]:
    """Copy photos into a folder; a name already there gets " (2)", " (3)"... appended.

    ``progress`` follows the copies; when ``cancel()`` turns true the copying stops between files
    and the ones already copied are returned (each copy is whole: shutil.copy2 of one file at a time).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in paths]
    clock = Stopwatch()
    out = []
    for p in paths:
        if cancel is not None and cancel():
            break
        target = free_name(dest, p.name)
        shutil.copy2(p, target)
        out.append(target)
        if progress is not None:
            progress(clock(len(out), len(paths), phase="copying", current=str(p)))
    return out


def move_files(paths: Iterable[str | os.PathLike], dest: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Move photos into a folder (renaming on collision); returns (from, to) pairs for an undo or a report.

    A file that cannot be moved stops the operation with the error; the ones before it stay moved and listed.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    done: list[tuple[Path, Path]] = []
    for p in map(Path, paths):
        target = free_name(dest, p.name)
        shutil.move(str(p), target)
        done.append((p, target))
    return done
