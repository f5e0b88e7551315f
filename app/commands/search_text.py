"""`python -m app search --text WORDS [IMAGE] [--region BOX]`: the --text part of `search`, kept apart from the
image search code. The logic is engine.text.query; this file parses, prints and maps errors to exit codes
(0 ok; 1 some query images unreadable; 2 nothing searched).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.progress import ProgressBar


def run_text(args: argparse.Namespace) -> int:
    """Words (and optional query images) against the library's dino.txt vectors; the logic is engine.text.query."""
    from app.commands._library import open_existing
    from app.commands.search import _library_query, _print, parse_box
    from engine.imageio import ImageDecodeError
    from engine.models import CheckpointError
    from engine.models.download import DownloadError
    from engine.store import StoreError
    from engine.text import VocabularyError
    from engine.text import query as text_query

    box = None
    if args.region is not None:
        try:
            box = parse_box(args.region)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if len(args.images) != 1:
            print("error: --region searches by a box of one image; give exactly one IMAGE", file=sys.stderr)
            return 2
    if not args.text.strip():
        print("error: --text is empty; give some words to search for", file=sys.stderr)
        return 2
    lib = open_existing(args.library)
    if lib is None:
        return 2
    with lib:
        problems: list[str] = []
        try:
            record = text_query.text_model_record(lib, args.model)
            bar = ProgressBar(f"loading {args.model or record.name}", unit="B")
            model = text_query.load_text_model(record, args.model, progress=lambda d, t: bar.update(d, t))
            query = text_query.embed_texts(model, [args.text])
            if box is not None:
                from engine import search
                from engine.extract import Extractor

                path = Path(args.images[0])
                if not path.is_file():
                    raise ValueError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
                extractor = Extractor(model.image_encoder(), device=args.device)
                region = search.region_query(extractor, path, box).vector
                results = text_query.search_regions_by_text(lib, record, query, region, k=args.k)
                for note in query.notes:
                    print(f"note: {note}", file=sys.stderr)
                _print(results, args.json)
                return 0
            in_library, to_embed = [], []
            for item in args.images:
                path = Path(item)
                if not path.is_file():
                    problems.append(f"{item}: {'not a file' if path.exists() else 'no such file'}")
                elif (image_id := _library_query(lib, record.id, path)) is not None:
                    in_library.append(image_id)
                else:
                    to_embed.append(path)
            vectors = []
            from engine import search

            if in_library:
                vectors.append(search.stored_vectors(lib, record.id, in_library))
            if to_embed:
                from engine.extract import Extractor

                embedded, errors = search.embed_queries(Extractor(model.image_encoder(), device=args.device),
                                                        to_embed)
                problems += [message for _, message in errors]
                vectors.append(embedded)
            import numpy as np

            images = np.concatenate(vectors) if vectors else None
            results = text_query.search_by_text(lib, record, query, k=args.k, image_vectors=images,
                                                exclude_ids=in_library)
        except (StoreError, CheckpointError, DownloadError, VocabularyError, ImageDecodeError, ValueError,
                RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for note in query.notes:
            print(f"note: {note}", file=sys.stderr)
        _print(results, args.json)
        for message in problems:
            print(f"unreadable: {message}", file=sys.stderr)
        return 1 if problems else 0


__all__ = ["run_text"]
