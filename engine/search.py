"""Similarity search over a library by vectors: the ranking every query ends in (engine.query builds the vectors).

Global search averages the L2-normalised CLS vectors of the query photos, renormalises, and asks the model's
`VectorIndex` (exact inner product, approximate past the library's `ann_threshold`). Scores are cosines.
Search by a box on a photo is `engine.region_search`.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select

from engine.faiss_runtime import faiss_settings
from engine.store.schema import Embedding, Image, StoreError
from engine.store.vectors import vector_index

if TYPE_CHECKING:
    import torch

    from engine.store.library import Library, ModelRecord

log = logging.getLogger("dinoscope.search")

DEFAULT_K = 20
RESIZE, CROP = 256, 224  # the eval transform the library's vectors were computed with

Box = tuple[float, float, float, float]
ImageInput = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray


@dataclass(frozen=True)
class SearchResult:
    """One hit: rank 1 is the best; score is a cosine; box (region search) is in the photo's own pixels."""

    image_id: int
    path: str
    score: float
    rank: int
    box: Box | None = None
    stack: list[str] = field(default_factory=list)  # paths of the other photos of its stack (engine.stacks)


# ------------------------------------------------------------------------------------------------- models


def library_model(lib: Library, source: str | os.PathLike | None = None) -> ModelRecord:
    """The model a command works with: the one indexed from `source`, or else the most recent model with vectors."""
    if source is not None:
        record = lib.model_by_source(source)
        if record is None:
            known = ", ".join(sorted({m.name for m in lib.models()})) or "none"
            given = os.fspath(source)
            raise StoreError(f"library '{lib.name}' has no vectors from model {given!r} (it has: {known}); "
                             f"index it with that model first: python -m app index --model {given}")
        return record
    with lib.session() as s:
        model_id = s.scalar(select(func.max(Embedding.model_id)))
    if model_id is None:
        raise StoreError(f"library '{lib.name}' has no indexed photos yet; run: python -m app index FOLDER "
                         f"--library {lib.name}")
    record = lib.model(int(model_id))
    assert record is not None
    return record


_HASHES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_EXTRACTORS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_cache_guard = threading.Lock()


def _weights_hash(module: torch.nn.Module) -> str | None:
    """The checkpoint hash of a backbone (cached per module object); None for weights that cannot be hashed the
    indexer's way (an int8 Extractor's packed linears)."""
    with _cache_guard:
        digest = _HASHES.get(module)
    if digest is None:
        from engine.store.indexer import model_hash

        try:
            digest = model_hash(module)
        except (AttributeError, RuntimeError, TypeError):
            return None
        with _cache_guard:
            _HASHES[module] = digest
    return digest


def _folded(module: Any) -> bool:
    """True for an Extractor's backbone copy whose LayerScale was folded into its linears (engine.models.fuse)."""
    import torch

    blocks = getattr(module, "blocks", None)
    config = getattr(module, "config", None)
    if not blocks or config is None or not getattr(config, "init_values", None):
        return False
    return isinstance(getattr(blocks[0], "ls1", None), torch.nn.Identity)


def _is_extractor(obj: object) -> bool:
    return hasattr(obj, "embed_tensor") and hasattr(obj, "forward") and hasattr(obj, "model")


def model_id_for(lib: Library, model: Any) -> int:
    """The library's model id for a backbone or an `Extractor`: the model whose checkpoint hash matches.

    An Extractor holds a copy of the backbone with LayerScale folded into the linears, so its weights no longer
    hash like the checkpoint; it is then matched by the backbone's `source` (zoo name or path) and dimensions.
    Pass `model_id` to the search functions to skip this.
    """
    module = model.model if _is_extractor(model) else model
    digest = None if _folded(module) else _weights_hash(module)  # folded weights can never match: skip the hash
    models = lib.models()
    for m in models:
        if m.checkpoint_hash == digest:
            return m.id
    if _is_extractor(model):
        source = str(getattr(module, "source", type(module).__name__))  # what the indexer records for it
        dim, patch = int(model.embed_dim), int(model.patch_size)
        matches = [m for m in models if source in (m.source, m.name) and m.dim == dim and m.patch_size == patch]
        if matches:
            return matches[-1].id
    name = getattr(module, "source", type(module).__name__)
    raise StoreError(f"library '{lib.name}' has no vectors from this model ({name}); index the library with it "
                     "first, or search with the model it was indexed with")


def _extractor(model: Any):
    """An Extractor for a backbone (cached per backbone, so repeated searches do not copy the weights again)."""
    if _is_extractor(model):
        return model
    with _cache_guard:
        ex = _EXTRACTORS.get(model)
    if ex is None:
        from engine.extract import Extractor

        ex = Extractor(model)
        with _cache_guard:
            _EXTRACTORS[model] = ex
    return ex


# ------------------------------------------------------------------------------------------------ queries


def _decode(image: ImageInput, min_side: int | None = RESIZE) -> np.ndarray:
    """RGB uint8 from a path, encoded bytes or an array (ImageDecodeError / ValueError for bad input)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"a query array must be HxWx3 uint8 RGB, got {image.shape} {image.dtype}")
        return image
    from engine.imageio import load_rgb

    return load_rgb(image, min_side=min_side)


def _label(image: ImageInput, i: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return f"query {i + 1}"


def embed_queries(model: Any, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """L2-normalised CLS vectors of the readable query images, in order, and (index, message) for the others.

    Paths and bytes are decoded as the indexer decodes library files (reduced JPEG decode, eval transform), so a
    copy of a library photo lands on its library vector.
    """
    import torch

    from engine.imageio import ImageDecodeError
    from engine.transforms import eval_transform

    extractor = _extractor(model)
    tensors, errors = [], []
    for i, image in enumerate(images):
        try:
            tensors.append(eval_transform(_decode(image), resize=RESIZE, crop=CROP))
        except ImageDecodeError as exc:
            errors.append((i, str(exc)))
        except (OSError, ValueError) as exc:
            errors.append((i, f"{_label(image, i)}: {exc}"))
    if not tensors:
        return np.zeros((0, int(extractor.embed_dim)), np.float32), errors
    vectors = [extractor.embed_tensor(torch.stack(tensors[s : s + extractor.batch_size])).cls
               for s in range(0, len(tensors), extractor.batch_size)]
    return np.concatenate(vectors).astype(np.float32, copy=False), errors


def mean_query(queries: np.ndarray) -> np.ndarray:
    """The renormalised mean of L2-normalised query vectors: (D,) float32."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or len(q) == 0:
        raise ValueError(f"expected (n, D) query vectors with n >= 1, got shape {q.shape}")
    if not np.isfinite(q).all():
        raise ValueError("query vectors contain NaN or infinity")
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise ValueError("a query vector is all zeros")
    mean = (q / norms).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-6:
        raise ValueError("the query vectors cancel out (their mean is zero); search with them one at a time")
    return (mean / norm).astype(np.float32)


def stored_vectors(lib: Library, model_id: int, image_ids: Iterable[int]) -> np.ndarray:
    """(n, D) float32 stored vectors of library images, in the order given (KeyError for one without)."""
    ids = [int(i) for i in image_ids]
    with lib.session() as s:
        rows = dict(s.execute(select(Embedding.image_id, Embedding.vector).where(
            Embedding.model_id == model_id, Embedding.image_id.in_(ids))).all()) if ids else {}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise KeyError(f"image id(s) {missing[:10]} have no vector under model {model_id}")
    return np.stack([np.frombuffer(rows[i], np.float32) for i in ids]) if ids else np.zeros((0, 0), np.float32)


# ------------------------------------------------------------------------------------------- global search


def _allowed(filter: Iterable[int] | None, exclude: set[int]) -> np.ndarray | None:
    if filter is None:
        return None
    allowed = np.unique(np.fromiter((int(i) for i in filter), np.int64))
    if exclude:
        allowed = allowed[~np.isin(allowed, np.fromiter(exclude, np.int64))]
    return allowed


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        scores, ids = scores[part], ids[part]
    order = np.lexsort((ids, -scores))
    return scores[order], ids[order]


def _ranked_ids(lib: Library, model_id: int, query: np.ndarray, k: int, exclude: set[int],
                allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, image ids) of the k best images, best first, honouring exclusions and the filter."""
    index = vector_index(lib, model_id)
    if query.shape[-1] != index.dim:
        raise ValueError(f"queries have dimension {query.shape[-1]} but model {model_id} has {index.dim}")
    if allowed is not None and len(allowed) * 4 <= index.count:
        # A narrow filter: score its members directly (exact even over an approximate index) rather than
        # fetching ever more neighbours in the hope that k of them pass.
        ids = index.ids()
        pos = np.searchsorted(ids, allowed)
        pos = pos[(pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == allowed)]
        if len(pos) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = np.asarray(index.vectors()[pos], np.float32) @ query
        return _top_k(scores, ids[pos], k)
    fetch = k + len(exclude)
    while True:
        fetch = min(fetch, max(index.count, 1))
        with faiss_settings(1):
            scores, ids = index.search(query[None, :], fetch)
        scores, ids = scores[0], ids[0]
        keep = ids >= 0
        if exclude:
            keep &= ~np.isin(ids, np.fromiter(exclude, np.int64))
        if allowed is not None:
            keep &= np.isin(ids, allowed)
        if keep.sum() >= k or fetch >= index.count:
            return scores[keep][:k], ids[keep][:k]
        fetch *= 4


def _paths(lib: Library, image_ids: Iterable[int]) -> dict[int, str]:
    ids = [int(i) for i in image_ids]
    out: dict[int, str] = {}
    with lib.session() as s:
        for start in range(0, len(ids), 500):
            out.update(s.execute(select(Image.id, Image.path).where(Image.id.in_(ids[start : start + 500]))).all())
    return out


def _results(lib: Library, scores: np.ndarray, ids: np.ndarray, boxes: dict[int, Box] | None = None,
             ) -> list[SearchResult]:
    paths = _paths(lib, ids)
    out: list[SearchResult] = []
    for score, image_id in zip(scores.tolist(), ids.tolist(), strict=True):
        path = paths.get(image_id)
        if path is None:  # deleted between the search and this read
            continue
        box = boxes.get(image_id) if boxes else None
        out.append(SearchResult(image_id, path, float(score), len(out) + 1, box))
    return out


def _check_k(k: int) -> int:
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return k


def search_by_vectors(
    lib: Library,
    model_id: int,
    queries: np.ndarray,
    k: int = DEFAULT_K,
    exclude_ids: Iterable[int] = (),
    filter: Iterable[int] | None = None,
) -> list[SearchResult]:
    """The k library photos closest to the mean of the (L2-normalised) query vectors.

    `exclude_ids` never appear; `filter`, when given, is the set of image ids that may appear.
    """
    k = _check_k(k)
    query = mean_query(queries)
    exclude = {int(i) for i in exclude_ids}
    scores, ids = _ranked_ids(lib, model_id, query, k, exclude, _allowed(filter, exclude))
    return _results(lib, scores, ids)


def search_by_images(
    lib: Library,
    model: Any,
    images: Sequence[ImageInput] | ImageInput,
    k: int = DEFAULT_K,
    *,
    model_id: int | None = None,
    exclude_ids: Iterable[int] = (),
    filter: Iterable[int] | None = None,
) -> list[SearchResult]:
    """Photos like one or several query images (paths, encoded bytes or RGB arrays; they need not be in the
    library), embedded with `model` (an Extractor or a backbone) that the library was indexed with.

    An unreadable query raises ImageDecodeError (ValueError for a malformed array); use `embed_queries` and
    `search_by_vectors` to go on with the readable ones.
    """
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("no query images given")
    if model_id is None:
        model_id = model_id_for(lib, model)
    vectors, errors = embed_queries(model, images)
    if errors:
        _raise_query_error(images, errors[0])
    return search_by_vectors(lib, model_id, vectors, k, exclude_ids, filter)


def _raise_query_error(images: Sequence[ImageInput], error: tuple[int, str]) -> None:
    from engine.imageio import ImageDecodeError

    i, message = error
    image = images[i]
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        path = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "<image bytes>"
        prefix = f"{os.path.basename(path.rstrip('/')) or path}: "
        raise ImageDecodeError(path, message[len(prefix):] if message.startswith(prefix) else message)
    raise ValueError(message)


def search_by_library_image(
    lib: Library,
    model_id: int,
    image_id: int,
    k: int = DEFAULT_K,
    filter: Iterable[int] | None = None,
) -> list[SearchResult]:
    """Photos like one already in the library (its stored vector; the photo itself is left out)."""
    vectors = stored_vectors(lib, model_id, [image_id])
    return search_by_vectors(lib, model_id, vectors, k, exclude_ids=[image_id], filter=filter)


__all__ = [
    "DEFAULT_K",
    "SearchResult",
    "embed_queries",
    "library_model",
    "mean_query",
    "model_id_for",
    "search_by_images",
    "search_by_library_image",
    "search_by_vectors",
    "stored_vectors",
]
