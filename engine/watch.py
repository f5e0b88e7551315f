"""Following a library's folders as they change: watchdog events -> quiet-period batches -> incremental index runs.

Why it is built this way:
* watchdog (inotify, FSEvents, ReadDirectoryChangesW; its polling observer only where none exists) says *where*
  something changed. Events are reduced to dirty folders ("list this folder again", or "walk this subtree again" for
  a folder created, deleted or moved), and the existing incremental indexer does the rest with a partial scan
  (`index_library(only=...)`): moves are recognised by content, nothing is indexed twice, and a kill at any moment
  leaves whole batches, which the next `index` run completes.
* A folder is indexed once it has been quiet for `quiet_s`: a file still being copied keeps producing events, so it
  waits. A folder busy for longer than `max_wait_s` (a long camera import) is indexed anyway; a file caught half
  written is recorded as unreadable and indexed again when its next events arrive.
* Everything that is ready goes into one index run, committed in batches of up to 256 files: a burst of thousands
  of files costs a few transactions, not one per file.
* The library lock is held for the whole session (writers stay exclusive); readers (search, dedup, map, the GUI)
  use SQLite's WAL snapshots and never wait on it.
* A watched folder that disappears (deleted, or its drive unplugged) keeps its rows, as the indexer does; its
  existence is checked each tick (one stat per folder, not a scan), and when it is back it is walked again.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from engine.progress import Cancelled
from engine.store.library import Library
from engine.store.scan import is_candidate

QUIET_S = 0.75
MAX_WAIT_S = 10.0
TICK_S = 0.2
RETRY_S = 10.0  # after a failed run (disk full...), wait this long before trying those folders again


@dataclass
class WatchBatch:
    """One index run of the watcher, for the caller to print or show."""

    parts: list[tuple[str, bool]]  # the (folder, recursive) parts that were looked at again
    report: object | None = None  # engine.store.indexer.IndexReport; None when the run failed
    stacks: object | None = None  # engine.stacks.StackUpdate, when the run changed any vector
    error: str | None = None
    seconds: float = 0.0


@dataclass
class WatchNotice:
    """Something the user should know that is not an index run: a folder gone or back."""

    message: str


@dataclass
class _Dirty:
    deep: bool
    first: float
    last: float


@dataclass
class DirtySet:
    """Folders where something changed, with when; thread-safe (watchdog calls `mark` from its own thread)."""

    quiet_s: float = QUIET_S
    max_wait_s: float = MAX_WAIT_S
    _dirs: dict[str, _Dirty] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, folder: str, deep: bool = False, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._guard:
            d = self._dirs.get(folder)
            if d is None:
                self._dirs[folder] = _Dirty(deep, now, now)
            else:
                d.deep = d.deep or deep
                d.last = now

    def take_ready(self, now: float | None = None) -> list[tuple[str, bool]]:
        """Remove and return the folders quiet for quiet_s (or waiting past max_wait_s)."""
        now = time.monotonic() if now is None else now
        with self._guard:
            ready = [k for k, d in self._dirs.items()
                     if now - d.last >= self.quiet_s or now - d.first >= self.max_wait_s]
            return sorted((k, self._dirs.pop(k).deep) for k in ready)

    def __len__(self) -> int:
        with self._guard:
            return len(self._dirs)


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _handler(dirty: DirtySet):
    """A watchdog handler that turns events into dirty folders (built lazily: watchdog loads on first use)."""
    from watchdog.events import FileSystemEventHandler

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            kind = event.event_type
            if kind in ("opened", "closed_no_write"):
                return  # reading a file changes nothing (our own decode threads open them)
            paths = [os.fsdecode(event.src_path)]
            if kind == "moved":
                paths.append(os.fsdecode(event.dest_path))
            for path in paths:
                if event.is_directory:
                    if kind == "modified":
                        continue  # a folder's own date changes with every file in it; those files say more
                    dirty.mark(path, deep=True)
                    dirty.mark(os.path.dirname(path))
                elif is_candidate(os.path.basename(path)):
                    dirty.mark(os.path.dirname(path))

    return Handler()


def watch_library(
    lib: Library,
    model,
    *,
    folders: Iterable[str | os.PathLike] | None = None,
    on_batch: Callable[[WatchBatch], None] | None = None,
    on_notice: Callable[[WatchNotice], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    quiet_s: float = QUIET_S,
    max_wait_s: float = MAX_WAIT_S,
    ready: threading.Event | None = None,
    **index_options,
) -> None:
    """Keep the library's folders (or `folders`, added first) indexed until `cancel()` is true or Ctrl+C.

    `model` is a loaded backbone (it is loaded once, not per batch). Every folder is walked once at the start, so
    that nothing that changed before the watch began is missed; `ready` is set once the watches are in place.
    Returns normally when cancelled; KeyboardInterrupt propagates after the finished files are committed.
    """
    from watchdog.observers import Observer

    from engine.stacks import update_stacks
    from engine.store.indexer import index_library

    with lib.lock("watch"):
        roots = ([lib.add_folder(f).path for f in folders] if folders is not None else
                 [f.path for f in lib.folders()])
        roots = sorted(set(roots))
        dirty = DirtySet(quiet_s, max_wait_s)
        handler = _handler(dirty)
        observer = Observer()
        watches: dict[str, object] = {}
        gone: set[str] = set()

        def notice(text: str) -> None:
            if on_notice is not None:
                on_notice(WatchNotice(text))

        def check_roots() -> None:
            for root in roots:
                here = os.path.isdir(root)
                if here and root not in watches:
                    try:
                        watches[root] = observer.schedule(handler, root, recursive=True)
                    except OSError as exc:  # vanished again between the check and the watch
                        if root not in gone:
                            notice(f"{root}: cannot be watched ({exc.strerror or exc}); will retry")
                        gone.add(root)
                        continue
                    if root in gone:
                        notice(f"{root}: folder is back; looking for what changed while it was away")
                        gone.discard(root)
                    dirty.mark(root, deep=True, now=0.0)  # walk it now: changes made before the watch began
                elif not here and root not in gone:
                    watch = watches.pop(root, None)
                    if watch is not None:
                        with contextlib.suppress(KeyError, OSError):  # the emitter may have ended by itself
                            observer.unschedule(watch)
                    gone.add(root)
                    notice(f"{root}: folder not found (deleted, or its drive unplugged?); its photos are kept, "
                           "and watching resumes when it is back")

        observer.start()
        try:
            check_roots()
            if ready is not None:
                ready.set()
            while not (cancel is not None and cancel()):
                time.sleep(TICK_S)
                check_roots()
                parts = [p for p in dirty.take_ready() if not any(_is_within(p[0], g) for g in gone)]
                if not parts:
                    continue
                start = time.perf_counter()
                batch = WatchBatch(parts)
                try:
                    batch.report = report = index_library(lib, model, only=parts, cancel=cancel, **index_options)
                    if report.new or report.changed or report.deleted or report.embedded or report.vanished:
                        batch.stacks = update_stacks(lib, report.model_id, cancel=cancel)  # new photos join stacks
                except Cancelled:
                    break
                except Exception as exc:  # a disk-full or damaged-database error: say so and try again later
                    batch.error = str(exc)
                    for folder, deep in parts:
                        dirty.mark(folder, deep, now=time.monotonic() + RETRY_S)
                batch.seconds = time.perf_counter() - start
                if on_batch is not None:
                    on_batch(batch)
        finally:
            observer.stop()
            observer.join(timeout=5)


__all__ = ["MAX_WAIT_S", "QUIET_S", "DirtySet", "WatchBatch", "WatchNotice", "watch_library"]
