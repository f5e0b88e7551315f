"""`python -m app index`: add photo folders to a library and bring its index up to date.

Exit codes: 0 every file was indexed; 1 partial: some files could not be read (they are recorded, see --errors),
a source folder was missing, or the vector files could not be written; 2 nothing done (bad input, busy library,
unknown model); 130 interrupted (what was finished is committed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from app.commands._library import DEVICE_HELP, add_backend_argument
from app.display import shown
from app.progress import ProgressBar


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index photo folders into a library (incremental, resumable)",
                       description="Add folders to a library and index new, changed, moved and deleted photos. "
                                   "Without PATH, re-index the folders the library already has.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="photo folders to add and index")
    p.add_argument("--library", default="default", help="library name or folder (default: %(default)s)")
    p.add_argument("--model", default="dinov2_vits14",
                   help="zoo name, .pth/.safetensors file, Hugging Face folder or Dinoscope checkpoint")
    p.add_argument("--batch", type=int, default=None, help="images per forward pass (default 8 on CPU, 64 on GPU)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="inference precision (auto: bf16 where the hardware is fast at it)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads")
    add_backend_argument(p)
    p.add_argument("--errors", action="store_true", help="list the files that could not be read, and why")
    p.add_argument("--check", action="store_true",
                   help="check every page of the library database (SQLite integrity_check) and exit")
    p.add_argument("--commit-every", type=int, default=256, help=argparse.SUPPRESS)  # tests: small batches
    p.add_argument("--watch", action="store_true",
                   help="after indexing, keep following the folders (new, changed, moved, deleted photos) until "
                        "Ctrl+C; search, dedup, map and the GUI keep working meanwhile")
    p.add_argument("--quiet-s", type=float, default=None, help=argparse.SUPPRESS)  # tests: shorter debounce


def _check(library: str) -> int:
    """Full integrity check: exit 0 intact, 2 damaged (each problem on a line) or no such library."""
    import time

    from engine.store import Library, StoreError
    from engine.store.integrity import integrity_check
    from engine.store.library import DB_NAME

    try:
        root, name = Library.resolve(library)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    db = root / DB_NAME
    if not db.is_file():
        print(f"error: there is no library '{name}' (looked in {root})", file=sys.stderr)
        return 2
    start = time.perf_counter()
    problems = integrity_check(db)
    vectors = root / "vectors"
    if vectors.exists() and not vectors.is_dir():
        problems.append(f"{vectors} is a file, not the folder of vector indexes")
    if problems:
        for problem in problems:
            print(f"damaged: {problem}")
        print(f"error: library '{name}' ({db}) is damaged: {len(problems)} problem(s). Your photos are untouched: "
              "restore library.db from a backup, or move the library folder aside and index the folders again",
              file=sys.stderr)
        return 2
    print(f"library '{name}': intact ({db.stat().st_size / 1e6:.1f} MB checked in "
          f"{time.perf_counter() - start:.1f} s)")
    return 0


def _list_errors(library: str) -> int:
    from engine.store import Library, StoreError

    try:
        with Library.open(library, create=False) as lib:
            errors = lib.errors()
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, reason in errors:
        print(f"{shown(path)}: {shown(reason)}")
    print(f"{len(errors)} unreadable file(s) in library '{library}'", file=sys.stderr)
    return 0


class _Interrupt:
    """First Ctrl-C asks the indexer to stop after committing what is done; a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after the current batch (Ctrl-C again to abort)...", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _Progress:
    """One stderr bar per phase."""

    def __init__(self) -> None:
        self.phase = None
        self.bar: ProgressBar | None = None
        self.last = (0, None, 0)

    def __call__(self, p) -> None:
        if p.phase != self.phase:
            self.close()
            self.phase = p.phase
            label = {"scan": "scanning", "embed": "indexing", "index": "writing index"}.get(p.phase, p.phase)
            self.bar = ProgressBar(label, unit={"scan": "files", "embed": "img"}.get(p.phase, "models"))
        self.last = (p.done, p.total, p.failed)
        assert self.bar is not None
        self.bar.update(p.done, p.total, extra=f"({p.failed} unreadable)" if p.failed else "")

    def close(self) -> None:
        if self.bar is not None:
            done, total, failed = self.last
            self.bar.close(done, total, extra=f"({failed} unreadable)" if failed else "")
            self.bar = None


def _watch(lib, model, args: argparse.Namespace) -> int:
    """Follow the library's folders until Ctrl+C (130; everything finished is committed)."""
    import time

    from engine.watch import QUIET_S, watch_library

    def batch_line(batch) -> None:
        stamp = time.strftime("%H:%M:%S")
        if batch.error:
            print(f"{stamp} error: {batch.error} (will retry)", file=sys.stderr)
            return
        report = batch.report
        for path, reason in report.errors:
            print(f"unreadable: {path}: {reason}", file=sys.stderr)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if report.new or report.changed or report.moved or report.deleted or report.failed or report.embedded:
            print(f"{stamp} {report.summary()}", flush=True)

    print(f"watching {len(lib.folders())} folder(s) of library '{lib.name}' (Ctrl+C to stop)", flush=True)
    try:
        with _Interrupt() as interrupt:
            watch_library(lib, model, on_batch=batch_line, cancel=lambda: interrupt.requested,
                          on_notice=lambda n: print(f"warning: {n.message}", file=sys.stderr, flush=True),
                          quiet_s=args.quiet_s or QUIET_S, batch_size=args.batch, device=args.device,
                          precision=args.dtype, commit_every=args.commit_every, workers=args.workers,
                          model_name=args.model)
    except KeyboardInterrupt:
        pass
    print("stopped watching; everything seen so far is in the library", file=sys.stderr)
    return 130


def run(args: argparse.Namespace) -> int:
    if args.check:
        return _check(args.library)
    if args.errors:
        return _list_errors(args.library)

    from engine.store import Library, LibraryBusyError, StoreError

    bad = [p for p in args.paths if not os.path.isdir(p)]
    for p in bad:
        print(f"error: {p}: {'not a folder' if os.path.exists(p) else 'no such folder'}", file=sys.stderr)
    if bad:
        return 2
    try:
        lib = Library.open(args.library, create=bool(args.paths))
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        stack.enter_context(lib)
        try:  # take the lock before the (slow) model load, so that a busy (or read-only) library fails at once
            stack.enter_context(lib.lock("index"))
        except StoreError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not args.paths and not lib.folders():
            print(f"error: library '{lib.name}' has no folders yet; give the folders to index", file=sys.stderr)
            return 2
        from engine.models import CheckpointError, load_backbone  # torch: only once the library is usable
        from engine.models.download import DownloadError
        from engine.store import index_library

        try:
            bar = ProgressBar(f"loading {args.model}", unit="B")
            model = load_backbone(args.model, progress=bar)
        except (CheckpointError, DownloadError, RuntimeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        progress = _Progress()
        try:
            with _Interrupt() as interrupt:
                report = index_library(
                    lib, model, folders=args.paths or None, batch_size=args.batch, device=args.device,
                    precision=args.dtype, progress=progress, cancel=lambda: interrupt.requested,
                    commit_every=args.commit_every, workers=args.workers, model_name=args.model,
                    backend=args.backend,
                )
        except LibraryBusyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except StoreError as e:
            progress.close()
            print(f"error: {e}", file=sys.stderr)
            return 1
        except (RuntimeError, ValueError) as e:  # device or precision the machine does not have
            progress.close()
            print(f"error: {e}", file=sys.stderr)
            return 2
        progress.close()
        if report.runtime:  # which backend and precision ran (int8 falls back to torch where NNCF is missing)
            print(f"model {args.model}: {report.runtime}", file=sys.stderr)
        if not report.cancelled and report.model_id is not None:  # new photos join their stacks (engine.stacks)
            from engine.stacks import update_stacks

            update_stacks(lib, report.model_id)
        for path, reason in report.errors:
            print(f"unreadable: {shown(path)}: {shown(reason)}", file=sys.stderr)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        counts = lib.counts()
        print(f"library '{lib.name}': {report.summary()}")
        if counts["error"]:
            print(f"{counts['error']} unreadable file(s) in the library: python -m app index --errors "
                  f"--library {args.library}", file=sys.stderr)
        if args.watch and not report.cancelled:
            return _watch(lib, model, args)
    if report.cancelled:
        return 130
    if report.failed or report.index_error or report.missing_folders:
        return 1
    return 0
