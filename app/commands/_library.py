"""What the library commands share: opening an existing library with a clear error instead of a traceback."""

from __future__ import annotations

import sys


def open_existing(name: str):
    """The library, or None after telling the user why it cannot be opened (missing, newer, busy...)."""
    from engine.store import Library, StoreError

    try:
        return Library.open(name, create=False)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def open_with_model(name: str, model_source: str | None):
    """(library, model record) for a command, or None after saying why (no library, no vectors, unknown model).

    model_source None means the library's most recent model.
    """
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
