"""Similarity search over a library: by photos from anywhere, by a photo of the library, by a box drawn on a photo.

Global search averages the L2-normalised CLS vectors of the query photos, renormalises, and asks the model's
`VectorIndex` (exact inner product, approximate past the library's `ann_threshold`). Scores are cosines.

Region search matches the mean of the query's patch tokens inside the box against the pooled patch vectors that
indexing stored for every photo (2x2 and 4x4 cells of the 224 px eval crop, engine.store.regions), plus one
"whole crop" vector per photo derived from the four 2x2 cells. A photo scores the best cosine over its cells, and
the result names that cell as a box in the photo's own pixels. The global CLS vector is deliberately left out of
the score: it lives in a different space from patch-token means (another token, other statistics), and mixing it
in would reward photos that resemble the query's background, which is exactly what drawing a box asks to ignore.
The whole-crop vector covers the case the cells would miss: a photo that is entirely the object.

The region vectors are searched through a FAISS index, built on first use and cached in the library's vectors
folder next to the global index (stamp written last, checked against the database revision like VectorIndex).
It is exact: a scalar-quantizer index in fp16 holds precisely the float16 values the database stores, at half the
memory of a float32 flat index, and its scan is ~1.7x faster (one thread, 2M x 384: 95 ms against 160 ms). The
price is memory: 21 x D x 2 bytes per photo, 16 KB at D = 384, so 1.6 GB for 100k photos. Past that size a
compressed (IVF-PQ) index with exact re-ranking would be the next step.

FAISS settings (see `faiss_settings`): on this project's shared 2-core machines FAISS's spinning OpenMP workers
make batched searches 5-10x slower with 2 threads than with 1 (100 queries over 100k x 384 with torch loaded:
0.8-1.6 s against 0.10-0.15 s), a single query gains nothing from a second thread, and a single query must not
take faiss's BLAS path (3-5x slower).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select

from engine.store.regions import GRIDS, N_REGIONS, region_boxes
from engine.store.schema import Embedding, Image, Model, StoreError

if TYPE_CHECKING:
    import faiss
    import torch

    from engine.store.library import Library, ModelRecord

log = logging.getLogger("dinoscope.search")

DEFAULT_K = 20
RESIZE, CROP = 256, 224  # the eval transform the library's vectors were computed with
WHOLE = N_REGIONS  # region number of the whole-crop vector (the mean of the four 2x2 cells)
REGIONS_PER_IMAGE = N_REGIONS + 1
REGION_ID_STRIDE = 32  # region index ids are image_id * 32 + region
SMALL_BATCH = 20  # faiss switches to BLAS at 20 queries (engine.store.vectors sets the threshold)
REGION_STAMP_FORMAT = 1

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


# ------------------------------------------------------------------------------------------------ threads


def batch_threads() -> int:
    """FAISS threads for batched work (dedup, k-means, many queries).

    DINOSCOPE_FAISS_THREADS wins when set. Otherwise one thread on machines with two cores or fewer, where a
    second OpenMP worker only spins against the model, the GUI and the decoders (measured in the module doc),
    and FAISS's own default (OMP_NUM_THREADS or all cores) elsewhere.
    """
    import faiss

    env = os.environ.get("DINOSCOPE_FAISS_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("DINOSCOPE_FAISS_THREADS=%r is not a number; ignored", env)
    if (os.cpu_count() or 1) <= 2:
        return 1
    return max(1, faiss.omp_get_max_threads())


SEQUENTIAL = 1 << 30  # a BLAS threshold no query batch reaches: FAISS's own SIMD scan
BATCHED = 20  # what engine.store.vectors sets for batched flat search


@contextlib.contextmanager
def faiss_settings(n_queries: int | None = None, threads: int | None = None) -> Iterator[int]:
    """Run FAISS with the threads and distance path that suit `n_queries` (None: batched work); yields the
    thread count and restores both settings afterwards. `threads` overrides the thread count (a worker that has
    the machine to itself, such as a map fit, takes every core).

    Threads: fewer than 20 queries take one thread, since FAISS splits a scan by query and a lone query has
    nothing to give a second thread but the cost of waking it (libgomp keeps this per calling thread).
    Distance path: engine.store.vectors sets faiss's BLAS threshold to 20 for batched speed, but with it faiss
    1.15 also runs a single query through BLAS, 3-5x slower than its SIMD scan (one thread, 100k x 384: 29 ms
    against 7 ms; 1M: 398 ms against 85 ms). From 2 queries on, BLAS wins (4 queries over 100k: 28 against 42 ms).
    The threshold is process-wide, so a search running meanwhile in another thread may take the other path:
    slower for its duration, never wrong.
    """
    import faiss

    if threads is None:
        threads = 1 if n_queries is not None and n_queries < SMALL_BATCH else batch_threads()
    threshold = SEQUENTIAL if n_queries == 1 else BATCHED
    before = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold
    faiss.omp_set_num_threads(threads)
    faiss.cvar.distance_compute_blas_threshold = threshold
    try:
        yield threads
    finally:
        faiss.omp_set_num_threads(before[0])
        faiss.cvar.distance_compute_blas_threshold = before[1]


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
    index = lib.vector_index(model_id)
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


# ------------------------------------------------------------------------------------------- region search


def eval_crop_box(width: int, height: int) -> Box:
    """The eval transform's 224 px centre crop, as (x0, y0, x1, y1) in the pixels of a width x height image.

    Mirrors engine.transforms.eval_transform: shorter side to 256 (longer side truncated), then a centre crop
    with offsets round((size - 224) / 2).
    """
    if width <= height:
        new_w, new_h = RESIZE, int(RESIZE * height / width)
    else:
        new_w, new_h = int(RESIZE * width / height), RESIZE
    left, top = round((new_w - CROP) / 2.0), round((new_h - CROP) / 2.0)
    sx, sy = new_w / width, new_h / height
    return (left / sx, top / sy, (left + CROP) / sx, (top + CROP) / sy)


def region_box(width: int, height: int, region: int) -> Box:
    """A stored region (0-19: the 2x2 then 4x4 cells; 20: the whole crop) in a width x height photo's pixels."""
    x0, y0, x1, y1 = eval_crop_box(width, height)
    fx0, fy0, fx1, fy1 = (0.0, 0.0, 1.0, 1.0) if region == WHOLE else region_boxes()[region].tolist()
    w, h = x1 - x0, y1 - y0
    return (x0 + fx0 * w, y0 + fy0 * h, x0 + fx1 * w, y0 + fy1 * h)


def _check_box(box: Sequence[float], width: int, height: int) -> Box:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"a box is four numbers x0, y0, x1, y1, got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"the box {box!r} is not finite")
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if cx1 - cx0 < 1 or cy1 - cy0 < 1:
        raise ValueError(f"the box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) does not cover a pixel of the "
                         f"{width}x{height} image")
    return (cx0, cy0, cx1, cy1)


def _patch_mask(box: Box, rows: int, cols: int, patch: int) -> np.ndarray:
    """(rows, cols) bool: patches at least half inside the box (box in the model input's pixels); the patch that
    overlaps most when the box is smaller than half a patch."""
    x0, y0, x1, y1 = box
    edges_x, edges_y = np.arange(cols + 1) * patch, np.arange(rows + 1) * patch
    ox = np.clip(np.minimum(edges_x[1:], x1) - np.maximum(edges_x[:-1], x0), 0, None)
    oy = np.clip(np.minimum(edges_y[1:], y1) - np.maximum(edges_y[:-1], y0), 0, None)
    overlap = oy[:, None] * ox[None, :] / float(patch * patch)
    mask = overlap >= 0.5
    if not mask.any():
        mask = overlap == overlap.max()
    return mask


@dataclass(frozen=True)
class RegionQuery:
    """The query vector of a box, and how it was computed (for display and tests)."""

    vector: np.ndarray  # (D,) float32, L2-normalised
    view: str  # "crop": the eval crop the library's regions come from; "dense": the whole image, aspect kept
    patches: int  # patch tokens averaged
    box: Box  # the box actually used, clipped to the image, in its pixels


def region_query(model: Any, image: ImageInput, box: Sequence[float]) -> RegionQuery:
    """Mean patch token inside `box` (x0, y0, x1, y1 in the pixels of the original, EXIF-upright image).

    The box is read through the eval transform (256 resize, 224 centre crop) when it lies inside that crop (half
    a patch of slack): the same view, scale and position embeddings the library's region vectors were pooled
    from. A box reaching outside the crop is read from the whole image instead, resized to the same scale
    (shorter side 256, sides snapped to the patch size), so no part of it is lost.
    """
    import torch

    from engine.transforms import dense_transform, eval_transform

    extractor = _extractor(model)
    patch = int(extractor.patch_size)
    if isinstance(image, np.ndarray):
        rgb = _decode(image)
        full_w, full_h = rgb.shape[1], rgb.shape[0]
    else:
        from engine.imageio import read_info

        info = read_info(image)
        full_w, full_h = info.width, info.height
        rgb = _decode(image, min_side=RESIZE)  # reduced JPEG decode; the box is scaled to it below
    x0, y0, x1, y1 = _check_box(box, full_w, full_h)
    height, width = rgb.shape[:2]
    sx, sy = width / full_w, height / full_h
    scaled = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)

    cx0, cy0, cx1, cy1 = eval_crop_box(width, height)
    kx, ky = CROP / (cx1 - cx0), CROP / (cy1 - cy0)
    in_crop = ((scaled[0] - cx0) * kx, (scaled[1] - cy0) * ky, (scaled[2] - cx0) * kx, (scaled[3] - cy0) * ky)
    slack = patch / 2
    if min(in_crop) >= -slack and max(in_crop) <= CROP + slack:
        view = "crop"
        x = eval_transform(rgb, resize=RESIZE, crop=CROP)
        rows = cols = CROP // patch
        model_box = in_crop
    else:
        view = "dense"
        x, (rows, cols) = dense_transform(rgb, resolution=RESIZE, patch_size=patch)
        fx, fy = cols * patch / width, rows * patch / height
        model_box = (scaled[0] * fx, scaled[1] * fy, scaled[2] * fx, scaled[3] * fy)
    out = extractor.forward(x[None])
    tokens = out["x_norm_patchtokens"][0].float()
    if tokens.shape[0] != rows * cols:  # a model with a different patch grid than the transform assumed
        raise ValueError(f"expected {rows}x{cols} patch tokens, the model gave {tokens.shape[0]}")
    mask = _patch_mask(model_box, rows, cols, patch)
    with torch.inference_mode():
        mean = tokens.reshape(rows, cols, -1)[torch.from_numpy(mask)].mean(dim=0)
    vector = mean.cpu().numpy().astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if norm < 1e-12:
        raise ValueError("the patch tokens inside the box average to zero")
    return RegionQuery(vector / norm, view, int(mask.sum()), (x0, y0, x1, y1))


def search_by_region(
    lib: Library,
    model: Any,
    image: ImageInput,
    box: Sequence[float],
    k: int = DEFAULT_K,
    *,
    model_id: int | None = None,
    exclude_ids: Iterable[int] = (),
    filter: Iterable[int] | None = None,
) -> list[SearchResult]:
    """Photos holding what the box shows, anywhere in them: each result's box is its best-matching cell."""
    k = _check_k(k)
    if model_id is None:
        model_id = model_id_for(lib, model)
    query = region_query(model, image, box).vector
    return search_regions(lib, model_id, query, k, exclude_ids, filter)


def search_regions(
    lib: Library,
    model_id: int,
    query: np.ndarray,
    k: int = DEFAULT_K,
    exclude_ids: Iterable[int] = (),
    filter: Iterable[int] | None = None,
) -> list[SearchResult]:
    """The k photos whose best region vector is closest to `query` (a normalised patch-token mean)."""
    k = _check_k(k)
    q = np.asarray(query, np.float32).reshape(-1)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    exclude = {int(i) for i in exclude_ids}
    allowed = _allowed(filter, exclude)
    index = region_index(lib, model_id)
    if q.shape[0] != index.dim:
        raise ValueError(f"the query has dimension {q.shape[0]} but model {model_id} has {index.dim}")
    if allowed is not None and len(allowed) * 4 <= index.images:
        scores, ids, regions = _regions_subset(lib, model_id, q, allowed, k)
    else:
        scores, ids, regions = index.best_images(q, k, exclude, allowed)
    if len(ids) == 0:
        return []
    sizes = _sizes(lib, ids)
    boxes = {}
    for image_id, region in zip(ids.tolist(), regions.tolist(), strict=True):
        w, h = sizes.get(image_id, (None, None))
        if w and h:
            boxes[image_id] = tuple(round(v, 1) for v in region_box(w, h, region))
    return _results(lib, scores, ids, boxes)


def _regions_subset(lib: Library, model_id: int, q: np.ndarray, allowed: np.ndarray, k: int):
    """Score a narrow filter's members straight from their stored region vectors."""
    from engine.store.schema import Region

    ids, found = allowed.tolist(), []
    with lib.session() as s:
        for start in range(0, len(ids), 500):  # SQLite takes at most 32766 bound values per statement
            found += s.scalars(select(Region.image_id).where(Region.model_id == model_id,
                                                             Region.image_id.in_(ids[start : start + 500])))
    have = np.array(sorted(found), np.int64)
    if len(have) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    vecs = with_whole(lib.regions(model_id, have.tolist()))
    sims = vecs.astype(np.float32) @ q  # (n, 21)
    best = sims.argmax(axis=1)
    scores = sims[np.arange(len(have)), best]
    top_scores, top_ids = _top_k(scores, have, k)
    where = {int(i): n for n, i in enumerate(have.tolist())}
    regions = np.array([best[where[int(i)]] for i in top_ids], np.int64)
    return top_scores, top_ids, regions


def _sizes(lib: Library, image_ids: Iterable[int]) -> dict[int, tuple[int | None, int | None]]:
    ids = [int(i) for i in image_ids]
    with lib.session() as s:
        rows = s.execute(select(Image.id, Image.width, Image.height).where(Image.id.in_(ids))).all()
    return {i: (w, h) for i, w, h in rows}


def with_whole(regions: np.ndarray) -> np.ndarray:
    """(n, 20, D) stored regions -> (n, 21, D) float16 with the whole-crop vector appended.

    The four 2x2 cells hold equal numbers of patches, so the normalised sum of their (unit) means is the whole
    crop's mean direction up to the cells' norms, which differ little; good enough to rank, and free.
    """
    r = np.asarray(regions)
    first = GRIDS[0] * GRIDS[0]
    whole = r[:, :first].astype(np.float32).sum(axis=1)
    whole /= np.maximum(np.linalg.norm(whole, axis=-1, keepdims=True), 1e-12)
    return np.concatenate([r.astype(np.float16), whole[:, None].astype(np.float16)], axis=1)


# ------------------------------------------------------------------------------------------- region index


def _region_files(lib: Library, model_id: int) -> dict[str, Path]:
    base = lib.vectors_dir / f"regions_{model_id}"
    return {"faiss": base.with_suffix(".faiss"), "stamp": base.with_suffix(".json")}


class RegionIndex:
    """Every region vector of one model (21 per photo), keyed image_id * 32 + region, exact inner product."""

    def __init__(self, model_id: int, revision: int, dim: int, image_ids: np.ndarray, index: faiss.Index) -> None:
        self.model_id = model_id
        self.revision = revision
        self.dim = dim
        self.image_ids = image_ids
        self._index = index

    @property
    def images(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"RegionIndex(model {self.model_id}, {self.images} photos x {REGIONS_PER_IMAGE} regions)"

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, image ids, regions) of the k best region vectors, best first."""
        if self._index.ntotal == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        k = min(int(k), int(self._index.ntotal))
        with faiss_settings(1):
            scores, keys = self._index.search(np.ascontiguousarray(query, np.float32).reshape(1, -1), k)
        scores, keys = scores[0], keys[0]
        keep = keys >= 0
        scores, keys = scores[keep], keys[keep]
        return scores, keys // REGION_ID_STRIDE, keys % REGION_ID_STRIDE

    def best_images(self, query: np.ndarray, k: int, exclude: set[int] = frozenset(),
                    allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The k photos with the best max-over-regions score: (scores, image ids, best region), best first.

        Hits come best first, so a photo's first hit is its best region, and the first k distinct photos are
        the answer; regions are fetched in growing batches until k photos are found or none are left.
        """
        total = int(self._index.ntotal)
        fetch = min(total, max(4 * k, 64))
        while True:
            scores, ids, regions = self.search(query, fetch)
            keep = np.ones(len(ids), bool)
            if exclude:
                keep &= ~np.isin(ids, np.fromiter(exclude, np.int64))
            if allowed is not None:
                keep &= np.isin(ids, allowed)
            scores, ids, regions = scores[keep], ids[keep], regions[keep]
            _, first = np.unique(ids, return_index=True)
            first.sort()
            if len(first) >= k or fetch >= total:
                first = first[:k]
                return scores[first], ids[first], regions[first]
            fetch = min(total, fetch * 4)

    # --------------------------------------------------------------------------------------------- open
    @classmethod
    def open(cls, lib: Library, model_id: int) -> RegionIndex:
        """Load the cached index if its stamp matches the database, else rebuild it (and cache it when the
        library lock is free; an indexer running elsewhere leaves it in memory only)."""
        import faiss

        from engine.store.vectors import ids_checksum

        revision, dim, image_ids = _region_state(lib, model_id)
        files = _region_files(lib, model_id)
        try:
            stamp = json.loads(files["stamp"].read_text())
            expected = {"format": REGION_STAMP_FORMAT, "revision": revision, "dim": dim, "images": len(image_ids),
                        "ids_checksum": ids_checksum(image_ids), "faiss_bytes": files["faiss"].stat().st_size}
            stale = [key for key, value in expected.items() if stamp.get(key) != value]
            if not stale:
                index = faiss.read_index(str(files["faiss"]))
                if index.ntotal == len(image_ids) * REGIONS_PER_IMAGE:
                    return cls(model_id, revision, dim, image_ids, index)
                stale = ["ntotal"]
            log.info("rebuilding the region index of model %s in %s (%s changed)", model_id, lib.root,
                     ", ".join(stale))
        except (OSError, ValueError, RuntimeError) as exc:
            log.info("building the region index of model %s in %s (%s)", model_id, lib.root, exc)
        return cls.build(lib, model_id)

    @classmethod
    def build(cls, lib: Library, model_id: int) -> RegionIndex:
        from engine.store.library import LibraryBusyError

        try:
            with lib.lock("rebuild regions"):
                return cls._build(lib, model_id, write=True)
        except LibraryBusyError:
            return cls._build(lib, model_id, write=False)

    @classmethod
    def _build(cls, lib: Library, model_id: int, write: bool) -> RegionIndex:
        import faiss

        with lib.engine.begin() as conn:  # one read transaction: revision and rows agree
            cur = conn.connection.dbapi_connection.cursor()
            try:
                row = cur.execute("SELECT revision, dim FROM models WHERE id = ?", (model_id,)).fetchone()
                if row is None:
                    raise StoreError(f"library '{lib.name}' has no model with id {model_id}")
                revision, dim = row
                inner = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
                index = faiss.IndexIDMap2(inner)
                ids: list[np.ndarray] = []
                cur.execute("SELECT image_id, data FROM regions WHERE model_id = ? ORDER BY image_id", (model_id,))
                offsets = np.arange(REGIONS_PER_IMAGE, dtype=np.int64)
                while rows := cur.fetchmany(2048):
                    chunk_ids = np.array([r[0] for r in rows], np.int64)
                    data = np.frombuffer(b"".join(r[1] for r in rows), np.float16).reshape(len(rows), N_REGIONS, dim)
                    vecs = with_whole(data).astype(np.float32).reshape(-1, dim)
                    keys = (chunk_ids[:, None] * REGION_ID_STRIDE + offsets[None, :]).reshape(-1)
                    index.add_with_ids(vecs, keys)
                    ids.append(chunk_ids)
            finally:
                cur.close()
        image_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        if write:
            _write_region_files(lib, model_id, index, revision, dim, image_ids)
        return cls(model_id, revision, dim, image_ids, index)


def _region_state(lib: Library, model_id: int) -> tuple[int, int, np.ndarray]:
    with lib.engine.begin() as conn:
        cur = conn.connection.dbapi_connection.cursor()
        try:
            row = cur.execute("SELECT revision, dim FROM models WHERE id = ?", (model_id,)).fetchone()
            if row is None:
                raise StoreError(f"library '{lib.name}' has no model with id {model_id}")
            ids = np.array([r[0] for r in cur.execute(
                "SELECT image_id FROM regions WHERE model_id = ? ORDER BY image_id", (model_id,))], np.int64)
        finally:
            cur.close()
    return int(row[0]), int(row[1]), ids


def _write_region_files(lib: Library, model_id: int, index: faiss.Index, revision: int, dim: int,
                        image_ids: np.ndarray) -> None:
    """Temp file, fsync, rename; the stamp last. A failure (a full disk) only costs the cache: logged, not raised."""
    import faiss

    from engine.store.vectors import ids_checksum

    files = _region_files(lib, model_id)
    temps = {name: path.with_name(f".{path.name}.{os.getpid()}.tmp") for name, path in files.items()}
    try:
        lib.vectors_dir.mkdir(parents=True, exist_ok=True)
        for stale in lib.vectors_dir.glob(".regions_*.tmp"):  # left by a killed writer; we hold the lock
            stale.unlink(missing_ok=True)
        _write_synced(temps["faiss"], lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)))
        stamp = {"format": REGION_STAMP_FORMAT, "model_id": model_id, "revision": revision, "dim": dim,
                 "images": len(image_ids), "ids_checksum": ids_checksum(image_ids),
                 "faiss_bytes": temps["faiss"].stat().st_size}
        _write_synced(temps["stamp"], lambda f: f.write(json.dumps(stamp, indent=1).encode()))
        os.replace(temps["faiss"], files["faiss"])
        os.replace(temps["stamp"], files["stamp"])
    except OSError as exc:
        log.warning("could not cache the region index in %s (%s); it will be rebuilt next time", lib.vectors_dir, exc)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def _write_synced(path: Path, write: Callable[[Any], object]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


REGION_CACHE_SIZE = 2  # region indexes kept in memory (each up to 21 x D x 2 bytes per photo)
_REGION_CACHE: OrderedDict[tuple[str, int], RegionIndex] = OrderedDict()


def region_index(lib: Library, model_id: int) -> RegionIndex:
    """The region index of a model, kept in memory per library folder (so that every `Library` handle on it
    shares one) and reopened when the database revision moves."""
    with lib.session() as s:
        revision = s.scalar(select(Model.revision).where(Model.id == model_id))
    if revision is None:
        raise StoreError(f"library '{lib.name}' has no model with id {model_id}")
    key = (str(lib.root), int(model_id))
    with _cache_guard:
        cached = _REGION_CACHE.get(key)
        if cached is not None and cached.revision == revision:
            _REGION_CACHE.move_to_end(key)
            return cached
    index = RegionIndex.open(lib, model_id)
    with _cache_guard:
        _REGION_CACHE[key] = index
        _REGION_CACHE.move_to_end(key)
        while len(_REGION_CACHE) > REGION_CACHE_SIZE:
            _REGION_CACHE.popitem(last=False)
    return index


__all__ = [
    "DEFAULT_K",
    "RegionIndex",
    "RegionQuery",
    "SearchResult",
    "batch_threads",
    "embed_queries",
    "eval_crop_box",
    "faiss_settings",
    "library_model",
    "mean_query",
    "model_id_for",
    "region_box",
    "region_index",
    "region_query",
    "search_by_images",
    "search_by_library_image",
    "search_by_region",
    "search_by_vectors",
    "search_regions",
    "stored_vectors",
    "with_whole",
]
