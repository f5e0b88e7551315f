"""`python -m app cluster`: k-means clusters of a library's photos, stored for the GUI's colours and filters.

Computing clusters for a k the library already has replaces them. Exit codes: 0 ok; 2 nothing done (bad k, no such
library or model).
"""

from __future__ import annotations

import argparse
import json
import sys

from app.display import shown


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="group a library's photos into k clusters (k-means) and store them",
                       description="Spherical k-means over a library's vectors. Clusters are numbered by size "
                                   "(0 is the largest) and stored in the library, replacing earlier ones for the "
                                   "same k.")
    p.add_argument("--k", type=int, default=20, help="number of clusters (default: %(default)s)")
    p.add_argument("--library", default="default", help="library name or folder (default: %(default)s)")
    p.add_argument("--model", default=None, help="the model whose vectors to cluster (default: the most recent)")
    p.add_argument("--niter", type=int, default=20, help="k-means iterations (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the clusters as JSON")


def run(args: argparse.Namespace) -> int:
    from app.commands._library import open_with_model
    from engine.clusters import cluster_library
    from engine.store import StoreError

    if args.k < 1 or args.niter < 1:
        print("error: --k and --niter must be at least 1", file=sys.stderr)
        return 2
    opened = open_with_model(args.library, args.model)
    if opened is None:
        return 2
    lib, record = opened
    with lib:
        try:
            result = cluster_library(lib, record.id, args.k, niter=args.niter, seed=args.seed)
        except (StoreError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        reps = {int(i): lib.image(int(i)) for i in result.representatives if i >= 0}

    rows = []
    for c in range(result.k):
        rep = int(result.representatives[c])
        rows.append({"cluster": c, "size": int(result.sizes[c]), "representative_id": rep if rep >= 0 else None,
                     "representative": reps[rep].path if reps.get(rep) else None})
    if args.json:
        print(json.dumps({"library": args.library, "model": record.name, "k": result.k,
                          "photos": int(result.sizes.sum()), "clusters": rows}, indent=1))
        return 0
    print(f"{result.k} clusters of {int(result.sizes.sum())} photos (model '{record.name}'), stored in library "
          f"'{args.library}'")
    print(f"{'cluster':>7}  {'size':>6}  representative")
    for row in rows:
        print(f"{row['cluster']:>7}  {row['size']:>6}  {shown(row['representative'] or '-')}")
    return 0
