"""`python -m app search`: the library photos most like one or several images, or like a box drawn on one.

The query is planned and run by `engine.query.run_query`, the same path as the GUI's drops: query files that are
library photos (by content, wherever the copy lives) use their stored vectors and are left out of the results;
other files are embedded with the library's model, which is loaded only when needed. Exit codes: 0 ok; 1 some query
files could not be read (the others were used); 2 nothing searched (no readable query, bad arguments, no such
library or model).
"""

from __future__ import annotations

import argparse
import sys

from app.commands._library import DEVICE_HELP, add_backend_argument
from app.commands._search_output import print_results, region_argument
from app.progress import ProgressBar


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the library photos most like some images (or a region of one)",
                       description="Search a library by one or several images (their mean), or by a box on one "
                                   "image with --region. Prints rank, cosine score and path.")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="query image files (need not be in the library)")
    p.add_argument("--k", type=int, default=20, help="number of results (default: %(default)s)")
    p.add_argument("--library", default="default", help="library name or folder (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help="the model whose vectors to search, as given to `index --model` (default: the library's "
                        "most recent model)")
    p.add_argument("--region", default=None, metavar="X0,Y0,X1,Y1",
                   help="search by this box of the (single) query image, in its pixels")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (for embedding the queries)")
    add_backend_argument(p)
    p.add_argument("--no-stack", action="store_true",
                   help="list every photo; by default near-identical copies and bursts fold into their best-ranked "
                        "member (JSON: its \"stack\" lists the others)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {rank, score, path, image_id, box}")
    p.add_argument("--text", default=None, metavar="WORDS",
                   help="search by words with dino.txt (combines with IMAGEs: the mean of the normalised queries); "
                        "the library needs dino.txt vectors: index --model dinov2_vitl14_reg4_dinotxt")


def load_model(record, source: str | None, device: str, backend: str = "auto"):
    """The backbone the library was indexed with, checked by its weights hash; an Extractor around it."""
    from engine.extract import Extractor
    from engine.models import load_backbone
    from engine.store.indexer import model_hash

    given = source or record.source
    bar = ProgressBar(f"loading {given}", unit="B")
    model = load_backbone(given, progress=bar)
    if model_hash(model) != record.checkpoint_hash:
        raise ValueError(f"the weights of {given} are not the ones library vectors of model '{record.name}' were "
                         "computed with (the file changed?); index the library again with it")
    return Extractor(model, device=device, backend=backend)


def run(args: argparse.Namespace) -> int:
    from app.commands._library import open_with_model
    from engine.query import expand_inputs, run_query
    from engine.store import StoreError

    if args.k < 1:
        print("error: --k must be at least 1", file=sys.stderr)
        return 2
    if args.text is not None:  # words, with dino.txt: app/commands/search_text.py
        from app.commands.search_text import run_text

        return run_text(args)
    if not args.images:
        print("error: give one or more IMAGE files, or --text WORDS", file=sys.stderr)
        return 2
    try:
        region = region_argument(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files, skipped = expand_inputs(args.images) if region is None else ([], [])
    opened = open_with_model(args.library, args.model, args.backend)
    if opened is None:
        return 2
    lib, record = opened
    with lib:
        try:
            outcome = run_query(lib, lambda: load_model(record, args.model, args.device, args.backend), files,
                                region=region,
                                k=args.k, model_id=record.id, fold_stacks=not args.no_stack)
        except (StoreError, ValueError, RuntimeError) as e:  # bad arguments; a bad checkpoint or failed download
            print(f"error: {e}", file=sys.stderr)
            return 2
        problems = [u.message for u in skipped + outcome.unusable]
        if outcome.used:
            print_results(outcome.results, args.json)
            if not outcome.results:
                print(f"no results: library '{lib.name}' has no other photos under model '{record.name}'",
                      file=sys.stderr)
        return _report(problems, used=outcome.used)


def _report(problems: list[str], used: int) -> int:
    from app.display import shown

    for message in problems:
        print(f"unreadable: {shown(message)}", file=sys.stderr)
    if used == 0:
        print("error: no readable query image", file=sys.stderr)
        return 2
    return 1 if problems else 0


__all__ = ["add_parser", "load_model", "run"]
