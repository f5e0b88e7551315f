"""`python -m app dedup`: groups of duplicate photos in a library, by tier, each with a suggested keeper.

Tiers: exact copies (same bytes), near-identical (cosine >= --near: re-encodes, resizes, slight crops) and same
scene (cosine >= --scene). The keeper is the largest photo, then the oldest. Nothing is deleted.
Exit codes: 0 ok (with or without groups); 2 nothing done (bad thresholds, no such library or model).
"""

from __future__ import annotations

import argparse
import json
import sys

from app.display import shown
from app.progress import ProgressBar

# engine.dedup.NEAR and SCENE, written out so that building the parser imports nothing heavy (a test checks them)
NEAR_DEFAULT, SCENE_DEFAULT = 0.95, 0.80


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dedup", help="list duplicate photos by tier (exact, near-identical, same scene)",
                       description="Group a library's duplicate photos: exact copies, near-identical versions "
                                   "(re-encoded, resized, slightly cropped) and shots of the same scene. Each group "
                                   "names a keeper (largest, then oldest). Nothing is deleted.")
    p.add_argument("--library", default="default", help="library name or folder (default: %(default)s)")
    p.add_argument("--model", default=None, help="the model whose vectors to compare (default: the most recent)")
    p.add_argument("--near", type=float, default=NEAR_DEFAULT,
                   help="cosine from which photos are near-identical (default: %(default)s)")
    p.add_argument("--scene", type=float, default=SCENE_DEFAULT,
                   help="cosine from which photos show the same scene (default: %(default)s)")
    p.add_argument("--min-size", type=int, default=2, help="smallest group to list (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the groups as JSON")


def run(args: argparse.Namespace) -> int:
    from app.commands._library import open_with_model
    from engine.dedup import TIER_NAMES, TIERS, find_duplicates, savings
    from engine.store import StoreError

    if not (-1.0 <= args.scene <= args.near <= 1.0):
        print(f"error: thresholds must satisfy -1 <= --scene <= --near <= 1 (got --scene {args.scene}, "
              f"--near {args.near})", file=sys.stderr)
        return 2
    if args.min_size < 2:
        print("error: --min-size must be at least 2", file=sys.stderr)
        return 2
    opened = open_with_model(args.library, args.model)
    if opened is None:
        return 2
    lib, record = opened
    with lib:
        try:
            bar = ProgressBar("comparing", unit="blocks")
            groups = find_duplicates(lib, record.id, near=args.near, scene=args.scene, min_size=args.min_size,
                                     progress=bar)
            bar.finish()
        except StoreError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        ids = sorted({i for g in groups for i in g.image_ids})
        rows = {i: lib.image(i) for i in ids}

    if args.json:
        out = []
        for g in groups:
            members = []
            for i, score in zip(g.image_ids, g.scores, strict=True):
                rec = rows[i]
                members.append({"image_id": i, "path": rec.path if rec else None,
                                "width": rec.width if rec else None, "height": rec.height if rec else None,
                                "score": round(score, 6), "keeper": i == g.keeper_id})
            out.append({"tier": g.tier, "keeper_id": g.keeper_id, "members": members})
        print(json.dumps(out, indent=1))
        return 0

    for tier in TIERS:
        in_tier = [g for g in groups if g.tier == tier]
        threshold = {"near": f" (cosine >= {args.near})", "scene": f" (cosine >= {args.scene})"}.get(tier, "")
        print(f"{TIER_NAMES[tier]}{threshold}: {len(in_tier)} group(s), "
              f"{savings(groups, tier)} photo(s) besides the keepers")
        for n, g in enumerate(in_tier, 1):
            print(f"  group {n}: {len(g.image_ids)} photos")
            for i, score in zip(g.image_ids, g.scores, strict=True):
                rec = rows[i]
                size = f"{rec.width}x{rec.height}" if rec and rec.width else "?"
                mark = "*" if i == g.keeper_id else " "
                note = "keeper" if i == g.keeper_id else f"{score:.3f}"
                print(f"    {mark} {note:>6}  {size:>11}  {shown(rec.path) if rec else f'image {i}'}")
    if not groups:
        print("no duplicates found", file=sys.stderr)
    return 0
