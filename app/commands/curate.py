"""`python -m app curate`: a training set from a library, deduplicated and balanced as the paper did."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="write a deduplicated, balanced file list for `train --data`")
    p.add_argument("--library", default="default", help="library name or folder (default: %(default)s)")
    p.add_argument("--model", default=None, help="which of the library's models (default: the most recent)")
    p.add_argument("--out", required=True, type=Path, help="the file list to write (one path per line)")
    p.add_argument("--threshold", type=float, default=0.95,
                   help="cosine above which two photos count as copies; one per group is kept (default 0.95)")
    p.add_argument("--seeds", type=Path, default=None,
                   help="a folder of example photos: keep only their nearest library photos (retrieval)")
    p.add_argument("--per-seed", type=int, default=32, help="nearest photos kept per seed (default 32)")
    p.add_argument("--per-cluster", type=int, default=None,
                   help="balance: keep at most N photos per k-means cluster")
    p.add_argument("--clusters", type=int, default=None, help="number of clusters (default sqrt(N/2))")


def run(args: argparse.Namespace) -> int:
    from app.commands._library import open_with_model
    from app.commands.embed import collect_images
    from engine.extract import Extractor
    from engine.models import load_backbone
    from trainer.curate import curate, write_list

    if not 0.0 < args.threshold <= 1.0:
        print("error: --threshold must lie in (0, 1]", file=sys.stderr)
        return 2
    opened = open_with_model(args.library, args.model)
    if opened is None:
        return 2
    lib, model = opened
    with lib:
        seed_vectors = None
        if args.seeds is not None:
            files, problems = collect_images([str(args.seeds)])
            for msg in problems:
                print(f"warning: {msg}", file=sys.stderr)
            ex = Extractor(load_backbone(model.source), device="auto")
            parts = []
            for batch in ex.iter_files(files):
                parts.append(batch.cls)
                for _, msg in batch.errors:
                    print(f"skipped seed: {msg}", file=sys.stderr)
            if not parts or not sum(len(p) for p in parts):
                print("error: none of the seed photos could be read", file=sys.stderr)
                return 2
            import numpy as np

            seed_vectors = np.concatenate(parts)
        report = curate(lib, model.id, threshold=args.threshold, seed_vectors=seed_vectors,
                        per_seed=args.per_seed, clusters=args.clusters, per_cluster=args.per_cluster,
                        log=lambda msg: print(msg, file=sys.stderr))
    print(report.table())
    if not report.paths:
        print("error: nothing left to write", file=sys.stderr)
        return 2
    write_list(report.paths, args.out)
    print(f"wrote {args.out} ({len(report.paths)} photos); train on it with: "
          f"python -m app train --preset tiny-cpu --data {args.out} --out RUN_DIR")
    return 0
