"""The one path from what a person gives to ranked results: the CLI's `search` and the GUI's drop, paste, "More
like these" and region search all call `run_query`; neither decodes or plans queries itself.

What a person can give: file paths, encoded bytes (pasted, or dragged from a browser), RGB arrays, a photo of the
library (`LibraryPhoto`), and a box on one of those (`Region`). Each input is read once, then:

- recognised as a library photo when it is one (a `LibraryPhoto`, or a file or bytes whose content hash is that of
  an indexed photo, wherever the copy lives): its stored vector is used, nothing is decoded and the model is not
  even loaded when every input is such a photo;
- otherwise decoded exactly as the indexer decodes library files (reduced-size JPEG decode, shorter side 256,
  224 centre crop), so a copy of a library photo lands on its stored vector in any case.

Inputs that cannot be used (unreadable, not an image, no vector under this model) come back in
`QueryOutcome.unusable` with a message naming them; the others still make the query.

**The self rule** (one rule, CLI and GUI alike): a query photo that is itself in the library is left out of its
own results, since it would only come first with a score of 1.0 and tell nothing; `include_queries=True` keeps it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from engine.search import (
    CROP,
    DEFAULT_K,
    RESIZE,
    Box,
    SearchResult,
    _extractor,
    model_id_for,
    search_by_vectors,
    stored_vectors,
)
from engine.store.scan import content_hash
from engine.store.schema import Embedding, Image

if TYPE_CHECKING:
    from engine.store.library import Library

MAX_QUERY_BYTES = 1 << 30  # as the indexer: a video or disk image named .jpg is not read into memory
MAX_QUERIES = 256  # a dropped folder of thousands of photos is a mistake more often than a query


@dataclass(frozen=True)
class LibraryPhoto:
    """A photo of the open library by id: a result picked for "More like these", a grid selection."""

    image_id: int


Source = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | LibraryPhoto


@dataclass(frozen=True)
class Region:
    """A box (x0, y0, x1, y1, in the photo's own upright pixels) drawn on one photo: search for what it shows."""

    source: Source
    box: Box


@dataclass(frozen=True)
class Unusable:
    """An input that did not make it into the query, and why (the message names it)."""

    label: str
    message: str


@dataclass
class QueryOutcome:
    results: list[SearchResult]
    unusable: list[Unusable] = field(default_factory=list)
    used: int = 0  # inputs that made the query
    in_library: list[int] = field(default_factory=list)  # the library photos among them (left out of results)
    model_id: int | None = None


def label(source: Source, i: int = 0) -> str:
    """How an input is named in messages: its path, else "query N" / "library photo N"."""
    if isinstance(source, LibraryPhoto):
        return f"library photo {source.image_id}"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"query {i + 1}"


def expand_inputs(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Unusable]]:
    """Files as given; a folder contributes the image files inside it (recursively, by path), nothing else.

    At most `MAX_QUERIES` files are kept; the rest are reported so nothing is dropped silently.
    """
    from engine.imageio import SUPPORTED_EXTENSIONS

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() in SUPPORTED_EXTENSIONS
                            and not q.name.startswith(".") and q.is_file())
        else:
            files.append(p)
    skipped = [Unusable(os.fspath(p), f"{p}: left out, a query takes at most {MAX_QUERIES} photos")
               for p in files[MAX_QUERIES:]]
    return files[:MAX_QUERIES], skipped


@dataclass
class _Read:
    """One input after reading: its library id when recognised, else what to decode."""

    label: str
    image_id: int | None = None
    data: bytes | np.ndarray | None = None
    short: str = ""  # how decode errors name it: a file's name, else the label


def _read(source: Source, i: int) -> _Read:
    """Read an input once (OSError / ValueError name the problem)."""
    name = label(source, i)
    if isinstance(source, LibraryPhoto):
        return _Read(name, image_id=int(source.image_id))
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ValueError(f"{name}: a query array must be HxWx3 uint8 RGB, got {source.shape} {source.dtype}")
        return _Read(name, data=source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise OSError(f"{name}: {'not a file' if path.exists() else 'no such file'}")
        if path.stat().st_size > MAX_QUERY_BYTES:
            raise OSError(f"{name}: the file is too large to be an image ({path.stat().st_size / 2**30:.1f} GiB)")
        data = path.read_bytes()
    if not data:
        raise ValueError(f"{name}: the file is empty (0 bytes)")
    short = os.path.basename(name.rstrip("/")) if isinstance(source, (str, os.PathLike)) else name
    return _Read(name, data=data, short=short)


def _recognise(lib: Library, model_id: int, reads: list[_Read]) -> None:
    """Give inputs whose bytes are those of an indexed photo (with a vector under the model) its image id."""
    by_hash: dict[str, list[_Read]] = {}
    for r in reads:
        if r.image_id is None and isinstance(r.data, bytes):
            by_hash.setdefault(content_hash(r.data), []).append(r)
    if not by_hash:
        return
    with lib.session() as s:
        # The status is checked here, not in SQL: with it in the WHERE clause SQLite walked the status index (every
        # "ok" photo, 20 ms at 100k) instead of looking the hash up.
        rows = s.execute(
            select(Image.content_hash, Image.id, Image.status)
            .join(Embedding, (Embedding.image_id == Image.id) & (Embedding.model_id == model_id))
            .where(Image.content_hash.in_(list(by_hash)))
            .order_by(Image.id)
        ).all()
    for digest, image_id, status in rows:
        if status != "ok":
            continue
        for r in by_hash.pop(digest, []):  # the first (oldest) copy in the library wins
            r.image_id, r.data = int(image_id), None


def _model_input(r: _Read) -> np.ndarray:
    """The eval input of a photo, (3, 224, 224) float32, decoded the way the indexer decodes library files."""
    from engine.imageio import load_rgb
    from engine.preprocess import eval_array

    rgb = r.data if isinstance(r.data, np.ndarray) else load_rgb(r.data, min_side=RESIZE)
    return eval_array(rgb, resize=RESIZE, crop=CROP)


def _resolve(model: Any) -> Any:
    """An Extractor from an Extractor, a backbone, or a zero-argument callable that loads one on demand (which may
    give an `engine.runtime.ov_quick.QuickExtractor`, kept as it is)."""
    if callable(model) and not hasattr(model, "forward"):
        model = model()
    return model if hasattr(model, "embed_arrays") else _extractor(model)


def run_query(
    lib: Library,
    model: Any,
    inputs: Sequence[Source] = (),
    *,
    region: Region | None = None,
    k: int = DEFAULT_K,
    model_id: int | None = None,
    filter: Iterable[int] | None = None,
    include_queries: bool = False,
    fold_stacks: bool = True,
    also: np.ndarray | None = None,
    cancel: Callable[[], bool] | None = None,
) -> QueryOutcome:
    """Rank the library's photos for `inputs` (their mean direction) or for `region` (a box on one photo).

    `model` is an Extractor, a backbone, or a callable returning one (called only if something must be
    embedded). `model_id` is the library's model to search (default: the one `model` matches, which loads it).
    `also` holds more query vectors in the same space, already embedded (dino.txt words: engine.text.query),
    averaged in with the photos' (normalised first, so each counts once); with it, no photo is needed.
    `fold_stacks`: near-identical copies and bursts (engine.stacks) show as their best-ranked member, the others
    listed in its `stack`; k counts stacks then.
    Raises ValueError for bad arguments (k < 1, a region together with other inputs, no query at all).
    """
    from engine.imageio import ImageDecodeError
    from engine.progress import raise_if_cancelled

    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if region is not None and inputs:
        raise ValueError("a region search takes one box on one photo; search by the other photos separately")
    sources = [region.source] if region is not None else list(inputs)
    extra = _unit_rows(also)
    if not sources and not len(extra):
        raise ValueError("no query given")
    if model_id is None:
        model = _resolve(model)
        model_id = model_id_for(lib, model)
    outcome = QueryOutcome([], model_id=model_id)

    reads: list[tuple[int, _Read]] = []
    for i, source in enumerate(sources):
        try:
            reads.append((i, _read(source, i)))
        except (OSError, ValueError) as exc:
            outcome.unusable.append(Unusable(label(source, i), str(exc)))
    _recognise(lib, model_id, [r for _, r in reads])
    outcome.in_library = sorted({r.image_id for _, r in reads if r.image_id is not None})
    exclude = () if include_queries else outcome.in_library
    raise_if_cancelled(cancel)

    fetch = k * 3 if fold_stacks else k  # folding merges stack members: ask for more, keep k stacks
    if region is not None:
        _run_region(lib, model, model_id, region, reads, outcome, fetch, exclude, filter, extra)
        return _folded(lib, outcome, k, fold_stacks)

    vectors: list[np.ndarray] = [extra] if len(extra) else []
    stored = [(i, r) for i, r in reads if r.image_id is not None]
    for _i, r in stored:
        try:
            vectors.append(stored_vectors(lib, model_id, [r.image_id]))
        except KeyError:
            outcome.unusable.append(Unusable(r.label, f"{r.label}: not indexed with this model yet"))
    tensors, labels = [], []
    for _, r in reads:
        if r.image_id is not None:
            continue
        try:
            tensors.append(_model_input(r))
            labels.append(r.label)
        except ImageDecodeError as exc:
            outcome.unusable.append(Unusable(r.label, f"{r.short or r.label}: {exc.cause}"))
        except (OSError, ValueError) as exc:
            outcome.unusable.append(Unusable(r.label, f"{r.label}: {exc}"))
    if tensors:
        extractor = _resolve(model)
        for start in range(0, len(tensors), extractor.batch_size):
            raise_if_cancelled(cancel)
            batch = np.stack(tensors[start : start + extractor.batch_size])
            if hasattr(extractor, "embed_arrays"):  # engine.runtime.ov_quick: the first search, before torch loads
                vectors.append(extractor.embed_arrays(batch))
            else:
                import torch

                vectors.append(extractor.embed_tensor(torch.from_numpy(batch)).cls)
    outcome.used = sum(len(v) for v in vectors)
    if outcome.used == 0:
        return outcome
    raise_if_cancelled(cancel)
    queries = np.concatenate(vectors).astype(np.float32, copy=False)
    outcome.results = search_by_vectors(lib, model_id, queries, fetch, exclude_ids=exclude, filter=filter)
    return _folded(lib, outcome, k, fold_stacks)


def _folded(lib: Library, outcome: QueryOutcome, k: int, fold: bool) -> QueryOutcome:
    if fold and outcome.results and outcome.model_id is not None:
        from engine.stacks import fold_results

        outcome.results = fold_results(lib, outcome.model_id, outcome.results)
    outcome.results = outcome.results[:k]
    return outcome


def _unit_rows(vectors: np.ndarray | None) -> np.ndarray:
    if vectors is None:
        return np.zeros((0, 0), np.float32)
    v = np.asarray(vectors, np.float32)
    v = v.reshape(1, -1) if v.ndim == 1 else v
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _run_region(lib: Library, model: Any, model_id: int, region: Region, reads: list[tuple[int, _Read]],
                outcome: QueryOutcome, k: int, exclude: Sequence[int], filter: Iterable[int] | None,
                extra: np.ndarray) -> QueryOutcome:
    """A box on one photo: the photo is decoded in full (the box may reach outside the eval crop)."""
    from engine.imageio import ImageDecodeError
    from engine.region_search import region_query, search_regions

    if not reads:
        return outcome
    _, r = reads[0]
    source: Any = region.source
    if isinstance(source, LibraryPhoto):
        record = lib.image(source.image_id)
        if record is None:
            outcome.unusable.append(Unusable(r.label, f"{r.label}: no longer in the library"))
            return outcome
        source = record.path
    elif isinstance(r.data, bytes):
        source = r.data  # read once: the file may have changed or gone since
    try:
        query = region_query(_resolve(model), source, region.box)
    except ImageDecodeError as exc:
        outcome.unusable.append(Unusable(r.label, f"{r.short or r.label}: {exc.cause}"))
        return outcome
    except OSError as exc:
        outcome.unusable.append(Unusable(r.label, f"{r.label}: {exc}"))
        return outcome
    outcome.used = 1
    vector = query.vector
    if len(extra):  # words in region space beside the box: the mean of the normalised parts
        mean = np.concatenate([extra, vector[None, :]]).mean(axis=0)
        vector = mean / max(float(np.linalg.norm(mean)), 1e-12)
    outcome.results = search_regions(lib, model_id, vector, k, exclude_ids=exclude, filter=filter)
    return outcome


__all__ = [
    "MAX_QUERIES",
    "LibraryPhoto",
    "QueryOutcome",
    "Region",
    "Source",
    "Unusable",
    "content_hash",
    "expand_inputs",
    "label",
    "run_query",
]
