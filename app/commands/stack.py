"""`python -m app stack`: fold near-identical photos and bursts into stacks, stored in the library.

Stacks are kept up to date incrementally (each new photo is compared with its nearest neighbours only); `--rebuild`
starts over, which is what changed rules (--near, --scene, --window) need. The cover of each stack is dedup's keeper
(largest, then oldest). Exit codes: 0 ok; 2 nothing done (no such library or model, bad rules, library busy);
130 interrupted (stacks finished so far are kept).
"""

from __future__ import annotations

import argparse
import json
import sys

from app.progress import ProgressBar

# engine.dedup.NEAR / SCENE and engine.stacks.WINDOW_S, written out so that building the parser imports nothing heavy
NEAR_DEFAULT, SCENE_DEFAULT, WINDOW_DEFAULT = 0.95, 0.80, 10.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="fold near-identical photos and bursts into stacks",
                       description="Fold near-identical photos (any folder) and bursts (same scene, same folder, "
                                   "taken seconds apart) into stacks with one cover each. Incremental; --rebuild "
                                   "starts over (needed after changing --near, --scene or --window).")
    p.add_argument("--library", default="default", help="library name or folder (default: %(default)s)")
    p.add_argument("--model", default=None, help="the model whose vectors to compare (default: the most recent)")
    p.add_argument("--rebuild", action="store_true", help="forget the stored stacks and compute them again")
    p.add_argument("--near", type=float, default=NEAR_DEFAULT,
                   help="cosine from which photos are near-identical (default: %(default)s)")
    p.add_argument("--scene", type=float, default=SCENE_DEFAULT,
                   help="cosine from which photos of one burst show the same scene (default: %(default)s)")
    p.add_argument("--window", type=float, default=WINDOW_DEFAULT,
                   help="seconds between the capture times of a burst's photos (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the stacks as JSON (cover, then the other members)")


def run(args: argparse.Namespace) -> int:
    from app.commands._library import open_with_model
    from engine.progress import Cancelled
    from engine.stacks import StackRules, rebuild_stacks, stacks, update_stacks
    from engine.store import LibraryBusyError, StoreError

    if not (-1.0 <= args.scene <= args.near <= 1.0) or args.window < 0:
        print(f"error: the rules must satisfy -1 <= --scene <= --near <= 1 and --window >= 0 (got --scene "
              f"{args.scene}, --near {args.near}, --window {args.window})", file=sys.stderr)
        return 2
    opened = open_with_model(args.library, args.model)
    if opened is None:
        return 2
    lib, record = opened
    rules = StackRules(near=args.near, scene=args.scene, window_s=args.window)
    with lib:
        bar = ProgressBar("stacking", unit="photos")
        try:
            with lib.lock("stack"):
                fn = rebuild_stacks if args.rebuild else update_stacks
                result = fn(lib, record.id, rules, progress=bar)
        except LibraryBusyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except StoreError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (Cancelled, KeyboardInterrupt):
            print("\ninterrupted; the stacks finished so far are kept", file=sys.stderr)
            return 130
        bar.finish()
        found = stacks(lib, record.id)
        paths = {i: p for i, p in lib.image_paths(status=None, order_by="id")}
    if args.json:
        print(json.dumps([{"cover": paths.get(cover), "members": [paths.get(i) for i in members[1:]]}
                          for cover, members in sorted(found.items(), key=lambda kv: paths.get(kv[0], ""))],
                         indent=2))
        return 0
    folded = sum(len(m) for m in found.values())
    what = "rebuilt" if args.rebuild else "updated"
    print(f"library '{lib.name}', model {record.name}: {len(found)} stack(s) holding {folded} photos "
          f"({what}: {result.added} photo(s) folded in, {result.repaired} stack(s) repaired)")
    for cover, members in sorted(found.items(), key=lambda kv: paths.get(kv[0], "")):
        print(f"  {paths.get(cover)}  (+{len(members) - 1})")
    return 0
