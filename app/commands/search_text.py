"""`python -m app search --text WORDS [IMAGE...] [--region BOX]`: the --text part of `search`. The words are embedded
by engine.text.query and join the photos (or the box) in engine.query.run_query, the one query path; this file
parses, prints and maps errors to exit codes (0 ok; 1 some query images unreadable; 2 nothing searched).
"""

from __future__ import annotations

import argparse
import sys

from app.progress import ProgressBar


def run_text(args: argparse.Namespace) -> int:
    """Words (and optional query images) against the library's dino.txt vectors; the logic is engine.text.query."""
    from app.commands._library import open_existing
    from app.commands._search_output import print_results, region_argument
    from engine.extract import Extractor
    from engine.imageio import ImageDecodeError
    from engine.models import CheckpointError
    from engine.models.download import DownloadError
    from engine.query import expand_inputs, run_query
    from engine.store import StoreError
    from engine.text import VocabularyError
    from engine.text import query as text_query

    try:
        region = region_argument(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.text.strip():
        print("error: --text is empty; give some words to search for", file=sys.stderr)
        return 2
    lib = open_existing(args.library)
    if lib is None:
        return 2
    with lib:
        try:
            record = text_query.text_model_record(lib, args.model)
            bar = ProgressBar(f"loading {args.model or record.name}", unit="B")
            model = text_query.load_text_model(record, args.model, progress=bar)
            query = text_query.embed_texts(model, [args.text])
            words = text_query.region_text_vector(query) if region is not None else query.vectors
            files, skipped = expand_inputs(args.images) if region is None else ([], [])
            outcome = run_query(lib, lambda: Extractor(model.image_encoder(), device=args.device), files,
                                region=region, k=args.k, model_id=record.id, also=words,
                                fold_stacks=not args.no_stack)
        except (StoreError, CheckpointError, DownloadError, VocabularyError, ImageDecodeError, ValueError,
                RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for note in query.notes:
            print(f"note: {note}", file=sys.stderr)
        print_results(outcome.results, args.json)
        problems = [u.message for u in skipped + outcome.unusable]
        for message in problems:
            print(f"unreadable: {message}", file=sys.stderr)
        return 1 if problems else 0


__all__ = ["run_text"]
