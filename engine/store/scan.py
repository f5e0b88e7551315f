"""Walking source folders and comparing what is on disk with what the library holds.

The walk never raises for a problem inside a folder: a subfolder that cannot be listed (vanished mid-walk,
permission denied) is recorded, and rows under it are protected from deletion, because "cannot see it" is not
"it is gone". A source folder that does not exist at all (an unmounted drive) protects all of its rows.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from engine.imageio import SUPPORTED_EXTENSIONS
from engine.raw import RAW_EXTENSIONS


def content_hash(data: bytes | bytearray | memoryview) -> str:
    """A file's identity in the library (Image.content_hash): blake2b-128 of its whole bytes. The indexer stores it;
    a query recognises a library photo by it, wherever the copy lives. ~1 GB/s, and hashlib releases the GIL."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class FoundFile:
    """An image file on disk. `problem` is set when it can be listed but not read as a file at all."""

    path: str
    size: int
    mtime_ns: int
    problem: str | None = None
    raw: str | None = None  # the camera RAW with this JPEG's stem in its folder: one photo, the JPEG shown


@dataclass
class FolderScan:
    root: str
    exists: bool
    files: list[FoundFile] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason), skipped with a warning
    only: list[tuple[str, bool]] | None = None  # a partial scan (scan_dirs): these (folder, recursive) alone

    def covers(self, path: str) -> bool:
        """True when the walk saw everything that could be at `path` (so its absence means it is gone)."""
        if not self.exists:
            return False
        if self.only is not None and not any(in_part(path, d, deep) for d, deep in self.only):
            return False
        return not any(_is_within(path, folder) for folder, _ in self.unreadable)


def in_part(path: str, folder: str, deep: bool) -> bool:
    """Whether `path` lies in `folder` (anywhere below it when `deep`, else directly in it)."""
    return _is_within(path, folder) if deep else os.path.dirname(path) == folder


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "it disappeared while being read"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def is_candidate(name: str) -> bool:
    """Visible files with a supported image extension."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in SUPPORTED_EXTENSIONS


def scan_folder(
    root: str,
    visited_dirs: set[tuple[int, int]] | None = None,
    on_file: Callable[[int], None] | None = None,
) -> FolderScan:
    """Walk `root`, following directory links, each physical directory once (so link loops end).

    Real subfolders are walked before linked ones, so a folder reachable both ways is listed under its real path.
    Hidden entries and non-image files are skipped. Each physical file is listed once: a regular path is preferred
    over a symbolic link to the same file, then the first path in sorted order.
    """
    visited = visited_dirs if visited_dirs is not None else set()
    scan = FolderScan(root=root, exists=os.path.isdir(root))
    if not scan.exists:
        return scan
    by_inode: dict[tuple[int, int], tuple[bool, FoundFile]] = {}
    loose: list[FoundFile] = []  # files without a usable inode (problems)
    st = os.stat(root)
    visited.add((st.st_dev, st.st_ino))
    stack = [root]
    linked: list[str] = []  # directory links, followed once every real folder has been walked
    while stack or linked:
        if not stack:
            link = linked.pop(0)
            try:
                dst = os.stat(link)
            except OSError as exc:
                scan.unreadable.append((link, _reason(exc)))
                continue
            if (dst.st_dev, dst.st_ino) in visited:  # a loop, or a second way into a folder already walked
                continue
            visited.add((dst.st_dev, dst.st_ino))
            stack.append(link)
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            scan.unreadable.append((folder, _reason(exc)))
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if entry.is_symlink():
                    linked.append(entry.path)
                    continue
                try:
                    dst = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    scan.unreadable.append((entry.path, _reason(exc)))
                    continue
                if (dst.st_dev, dst.st_ino) not in visited:
                    visited.add((dst.st_dev, dst.st_ino))
                    subdirs.append(entry.path)
                continue
            if not is_candidate(entry.name):
                continue
            found, key = _stat_file(entry)
            if key is None:
                loose.append(found)
            else:
                is_link = entry.is_symlink()
                kept = by_inode.get(key)
                if kept is None or (kept[0] and not is_link):
                    by_inode[key] = (is_link, found)
            if on_file is not None:
                on_file(1)
        stack.extend(reversed(subdirs))
    scan.files = pair_raw_files(sorted([f for _, f in by_inode.values()] + loose, key=lambda f: f.path))
    return scan


_JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe"})


def pair_raw_files(files: list[FoundFile]) -> list[FoundFile]:
    """Fold each RAW that has a JPEG of the same stem (case aside) in the same folder into that JPEG: a camera's
    RAW+JPEG mode writes one photo twice, and it should be shown, searched and embedded once."""
    jpegs: dict[str, int] = {}
    for i, f in enumerate(files):
        stem, ext = os.path.splitext(f.path)
        if ext.lower() in _JPEG_EXTENSIONS and f.problem is None:
            jpegs.setdefault(stem.lower(), i)
    if not jpegs:
        return files
    out = list(files)
    folded: set[int] = set()
    for i, f in enumerate(files):
        stem, ext = os.path.splitext(f.path)
        j = jpegs.get(stem.lower())
        if ext.lower() in RAW_EXTENSIONS and j is not None and out[j].raw is None:
            out[j] = FoundFile(out[j].path, out[j].size, out[j].mtime_ns, None, f.path)
            folded.add(i)
    return [f for i, f in enumerate(out) if i not in folded]


def _stat_file(entry: os.DirEntry) -> tuple[FoundFile, tuple[int, int] | None]:
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError as exc:
        try:
            lst = entry.stat(follow_symlinks=False)
            size, mtime = lst.st_size, lst.st_mtime_ns
        except OSError:
            size, mtime = 0, 0
        if isinstance(exc, FileNotFoundError) and entry.is_symlink():
            problem = "broken symbolic link (its target does not exist)"
        elif exc.errno == errno.ELOOP:  # a file link pointing at itself, or a cycle of links
            problem = "symbolic link loop"
        else:
            problem = f"cannot be read ({_reason(exc)})"
        return FoundFile(entry.path, size, mtime, problem), None
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file (a pipe, socket or device)"
        return FoundFile(entry.path, st.st_size, st.st_mtime_ns, problem), None
    return FoundFile(entry.path, st.st_size, st.st_mtime_ns), (st.st_dev, st.st_ino)


def scan_dirs(root: str, dirs: Iterable[tuple[str, bool]]) -> FolderScan:
    """A partial scan of `root`: only the given (folder, recursive) parts of it, for a watcher that knows where
    things changed. A part that no longer exists is simply empty (its rows are gone), as long as `root` exists."""
    parts = {(d, deep) for d, deep in dirs if _is_within(d, root)}
    recursive = [d for d, deep in parts if deep]
    # Drop the parts that a recursive part already holds (a folder below it, or the same folder listed flat).
    parts = {(d, deep) for d, deep in parts if not any(_is_within(d, r) and (r != d or not deep) for r in recursive)}
    scan = FolderScan(root=root, exists=os.path.isdir(root), only=sorted(parts))
    if not scan.exists:
        return scan
    found: list[FoundFile] = []
    visited: set[tuple[int, int]] = set()
    for folder, deep in scan.only or []:
        if deep:
            sub = scan_folder(folder, visited)
            found += sub.files
            scan.unreadable += sub.unreadable
            continue
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            scan.unreadable.append((folder, _reason(exc)))
            continue
        loose = [_stat_file(e)[0] for e in entries if is_candidate(e.name) and not _is_dir(e)]
        found += pair_raw_files(loose)
    scan.files = sorted({f.path: f for f in found}.values(), key=lambda f: f.path)
    return scan


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def scan_folders(roots: Iterable[str], on_file: Callable[[int], None] | None = None) -> list[FolderScan]:
    """Walk every root; a directory reachable from two roots (through links) is walked once."""
    visited: set[tuple[int, int]] = set()
    return [scan_folder(root, visited, on_file) for root in roots]


# ------------------------------------------------------------------------------------------------ comparison


@dataclass(frozen=True)
class KnownImage:
    """What the library knows about one file, enough to decide what to do with it."""

    id: int
    path: str
    folder_id: int
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str
    has_embedding: bool  # for the model being indexed
    raw_path: str | None = None


@dataclass
class Plan:
    new: list[tuple[FoundFile, int]] = field(default_factory=list)  # (file, folder id)
    changed: list[tuple[FoundFile, KnownImage]] = field(default_factory=list)  # size or mtime differ
    embed: list[tuple[FoundFile, KnownImage]] = field(default_factory=list)  # unchanged, lacks this model
    unchanged: int = 0
    missing: list[KnownImage] = field(default_factory=list)  # gone from a fully seen folder: moved or deleted
    protected: int = 0  # not seen, but under a folder that could not be read: kept as they are
    raw_links: list[tuple[int, str | None]] = field(default_factory=list)  # (row id, RAW twin) that changed


def compare(scans: list[tuple[FolderScan, int]], known: Iterable[KnownImage]) -> Plan:
    """Sort each file into new / changed / needs-this-model / unchanged, and each unseen row into missing or kept."""
    plan = Plan()
    by_path = {k.path: k for k in known}
    seen: set[str] = set()
    for scan, folder_id in scans:
        for f in scan.files:
            seen.add(f.path)
            row = by_path.get(f.path)
            if row is not None and row.raw_path != f.raw:
                plan.raw_links.append((row.id, f.raw))
            if row is None:
                plan.new.append((f, folder_id))
            elif row.size != f.size or row.mtime_ns != f.mtime_ns or row.status == "pending":
                plan.changed.append((f, row))
            elif row.status == "ok" and not row.has_embedding:
                plan.embed.append((f, row))
            else:
                plan.unchanged += 1
    scan_by_folder = {folder_id: scan for scan, folder_id in scans}
    for row in by_path.values():
        if row.path in seen:
            continue
        scan = scan_by_folder.get(row.folder_id)
        if scan is None:
            continue  # a folder this run did not look at
        if scan.covers(row.path):
            plan.missing.append(row)
        else:
            plan.protected += 1
    return plan
