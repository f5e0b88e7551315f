"""What `search` (images and words alike) prints, and the --region box it parses."""

from __future__ import annotations

import json


def parse_box(text: str) -> tuple[float, float, float, float]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(f"--region wants four numbers X0,Y0,X1,Y1, got {text!r}")
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--region wants four numbers X0,Y0,X1,Y1, got {text!r}") from None
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"--region {text}: X1 must exceed X0 and Y1 must exceed Y0")
    return x0, y0, x1, y1


def print_results(results, as_json: bool) -> None:
    from app.display import shown

    if as_json:
        rows = []
        for r in results:
            row = {"rank": r.rank, "score": round(r.score, 6), "path": r.path, "image_id": r.image_id}
            if r.stack:
                row["stack"] = list(r.stack)
            if r.box is not None:
                row["box"] = [round(v, 1) for v in r.box]
            rows.append(row)
        print(json.dumps(rows, indent=1))
        return
    with_box = any(r.box is not None for r in results)
    print(f"{'rank':>4}  {'score':>6}  " + ("box                       " if with_box else "") + "path")
    for r in results:
        box = ""
        if with_box:
            box = f"{','.join(f'{v:.0f}' for v in r.box):<24}  " if r.box is not None else " " * 26
        more = f"  (+{len(r.stack)} in its stack)" if r.stack else ""
        print(f"{r.rank:>4}  {r.score:6.3f}  {box}{shown(r.path)}{more}")  # a newline or bad bytes: escaped


def region_argument(args):
    """The --region of a search as an engine.query.Region (None without one); ValueError says what is wrong."""
    if args.region is None:
        return None
    from engine.query import Region

    box = parse_box(args.region)
    if len(args.images) != 1:
        raise ValueError("--region searches by a box of one image; give exactly one IMAGE")
    return Region(args.images[0], box)


__all__ = ["parse_box", "print_results", "region_argument"]
