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
