"""Search by a box drawn on a photo: the mean of the query's patch tokens inside the box against the pooled patch
vectors that indexing stored for every photo (engine.store.region_index).

A photo scores the best cosine over its cells, and the result names that cell as a box in the photo's own pixels.
The global CLS vector is deliberately left out of the score: it lives in a different space from patch-token means
(another token, other statistics), and mixing it in would reward photos that resemble the query's background,
which is exactly what drawing a box asks to ignore. The whole-crop vector covers the case the cells would miss: a
photo that is entirely the object.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from engine.search import (
    CROP,
    DEFAULT_K,
    RESIZE,
    Box,
    ImageInput,
    SearchResult,
    _allowed,
    _check_k,
    _decode,
    _extractor,
    _results,
    _top_k,
    model_id_for,
)
from engine.store.region_index import WHOLE, region_index, with_whole
from engine.store.regions import region_boxes
from engine.store.schema import Image

if TYPE_CHECKING:
    from engine.store.library import Library


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


__all__ = ["RegionQuery", "eval_crop_box", "region_box", "region_query", "search_by_region", "search_regions"]
