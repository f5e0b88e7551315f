"""What the library commands share: opening an existing library with a clear error instead of a traceback."""

from __future__ import annotations

import argparse
import sqlite3
import sys

DEVICE_HELP = "auto, cpu, cuda, cuda:1, mps, or an OpenVINO device (GPU, GPU.1, NPU: Intel GPUs and NPUs)"


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """--backend, as embed, index and search take it (engine.extract.Extractor's `backend`)."""
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"],
                        help="inference runtime (auto: OpenVINO on x86 CPUs when it converts the model, torch "
                             "otherwise; the DINOSCOPE_BACKEND environment variable replaces auto)")


def open_existing(name: str):
    """The library, or None after telling the user why it cannot be opened (missing, newer, busy...)."""
    from engine.store import Library, StoreError

    try:
        return Library.open(name, create=False)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def open_with_model(name: str, model_source: str | None, backend: str = "auto"):
    """(library, model record) for a command, or None after saying why (no library, no vectors, unknown model).

    model_source None means the library's most recent model. `backend` is only checked here (an unknown name is
    refused before the library is opened); pass it on to `Extractor(..., backend=backend)` with the model.
    """
    from engine.runtime import BACKENDS

    if backend not in BACKENDS:
        print(f"error: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}", file=sys.stderr)
        return None
    from engine.search import library_model
    from engine.store import StoreError

    lib = open_existing(name)
    if lib is None:
        return None
    try:
        return lib, library_model(lib, model_source)
    except StoreError as e:
        lib.close()
        print(f"error: {e}", file=sys.stderr)
        return None


def library_failure(exc: BaseException) -> str | None:
    """One line for a library problem that surfaced in the middle of a command (the file went read-only, a damaged
    page was read, the disk filled), or None for anything else, which stays a bug with its traceback."""
    from sqlalchemy.exc import DatabaseError

    from engine.store import StoreError

    if isinstance(exc, StoreError):
        return str(exc)
    if isinstance(exc, DatabaseError):
        exc = exc.orig or exc
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        return ("the library is read-only: it can be searched and browsed, but this command saves its results in "
                f"it ({text})")
    if "full" in text:
        return f"the disk is full while writing the library ({text}); what was saved before is intact"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return (f"the library database is damaged ({text}); run `python -m app index --check --library NAME` "
                "for the full report")
    return f"the library database failed ({text})"
