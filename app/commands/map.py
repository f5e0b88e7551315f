"""`python -m app map`: the library's UMAP map (computed once, stored, updated with new photos) as a picture."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("map", help="draw the library's map of photos (UMAP), computing or updating it first")
    p.add_argument("--library", default="default", help="library name or folder (default: %(default)s)")
    p.add_argument("--model", default=None, help="which of the library's models (default: the most recent)")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--refit", action="store_true", help="fit the whole map again instead of placing new photos")
    p.add_argument("--size", default="1600x1200", help="picture size WIDTHxHEIGHT (default %(default)s)")
    p.add_argument("--thumbnails", type=int, default=300, help="how many thumbnails to draw (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from app.commands._library import open_with_model
    from engine.atomic import atomic_write
    from engine.viz.library_map import render_library_map, update_map

    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"error: --size must look like 1600x1200, not {args.size!r}", file=sys.stderr)
        return 2
    opened = open_with_model(args.library, args.model)
    if opened is None:
        return 2
    lib, model = opened
    with lib:
        try:
            m = update_map(lib, model.id, refit=args.refit, progress=lambda p: print(p.phase, file=sys.stderr))
        except OSError as e:  # the fitted map is kept in the library folder
            if e.errno not in (errno.EROFS, errno.EPERM, errno.EACCES):
                raise
            print(f"error: library '{lib.name}' is read-only ({e.strerror}: {e.filename}); the map is saved in "
                  "it, so it cannot be made here", file=sys.stderr)
            return 2
        if len(m.ids) == 0:
            print("error: no photos with vectors to map", file=sys.stderr)
            return 2
        picture = render_library_map(lib, model.id, size=(w, h), sample=args.thumbnails)
    atomic_write(args.out, lambda f: Image.fromarray(picture).save(f, format="PNG"))
    how = "fitted" if m.refitted else (f"{m.placed} placed" if m.placed else "up to date")
    print(f"wrote {args.out}: {len(m.ids)} photos, {len(set(m.clusters.tolist()))} clusters ({how})")
    return 0
