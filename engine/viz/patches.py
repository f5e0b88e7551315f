"""Patch tokens of whole images at the dense resolution, and the geometry between the patch grid and pixels.

Overlays need every part of the photo, so images are not centre-cropped: :func:`engine.transforms.dense_transform`
resizes the whole image to a patch-aligned size (aspect kept, shorter side about ``resolution``, at most
``max_tokens`` patches). The grid therefore covers the original image edge to edge, and a patch maps back to pixels
by plain scaling of each axis, which is what :func:`patch_at`, :func:`patch_center` and :func:`upsample_grid` do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from engine.progress import Progress, ProgressFn

__all__ = ["PatchTokens", "patch_at", "patch_center", "patch_tokens", "upsample_grid"]

ImageInput = np.ndarray | str | os.PathLike


@dataclass
class PatchTokens:
    """The normed last-block patch tokens of one image, row-major over the patch grid."""

    tokens: np.ndarray  # (gh*gw, D) float32
    grid: tuple[int, int]  # (gh, gw) patches
    size: tuple[int, int]  # (H, W) of the original image, in pixels

    def as_grid(self) -> np.ndarray:
        """The tokens as a ``(gh, gw, D)`` view."""
        return self.tokens.reshape(self.grid[0], self.grid[1], -1)


def patch_tokens(
    model,
    images: Sequence[ImageInput],
    resolution: int = 448,
    max_tokens: int = 4096,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 4,
    progress: ProgressFn | None = None,
) -> list[PatchTokens]:
    """Dense patch tokens for each image (an ``HxWx3`` uint8 RGB array or a path), in input order.

    Images that come out at the same patch grid run through the model together, ``batch_size`` at a time.
    ``precision`` "auto" uses bf16 autocast where :func:`engine.device.pick_dtype` says the hardware is fast at it
    (AVX512-BF16/AMX CPUs, GPUs); "fp32", "bf16" and "fp16" force one. Paths are decoded with
    :func:`engine.imageio.load_rgb` (reduced-size JPEG decoding, since the image is shrunk anyway) and raise its
    ``ImageDecodeError`` for unreadable files. ``progress`` is called after each batch.
    All inputs are decoded and resized before the first batch runs (so that equal grids can be grouped): pass a
    few dozen images per call, not a whole library.
    """
    import torch

    from engine.device import pick_device, pick_dtype
    from engine.transforms import dense_transform

    if resolution < 1 or max_tokens < 1 or batch_size < 1:
        raise ValueError("resolution, max_tokens and batch_size must be positive")
    dev = pick_device(device)
    dtype = pick_dtype(dev, precision)
    patch = int(model.patch_size)
    model = model.to(dev).eval()

    inputs: list[torch.Tensor] = []
    grids: list[tuple[int, int]] = []
    sizes: list[tuple[int, int]] = []
    for item in images:
        rgb, size = _decode(item, resolution)
        tensor, grid = dense_transform(rgb, resolution, patch, max_tokens)
        inputs.append(tensor)
        grids.append(grid)
        sizes.append(size)

    groups: dict[tuple[int, int], list[int]] = {}
    for i, grid in enumerate(grids):
        groups.setdefault(grid, []).append(i)
    results: list[PatchTokens | None] = [None] * len(inputs)
    autocast = nullcontext() if dtype == torch.float32 else torch.autocast(dev.type, dtype=dtype)
    done = 0
    with torch.inference_mode(), autocast:
        for grid, members in groups.items():
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                x = torch.stack([inputs[i] for i in chunk]).to(dev)
                out = model.get_intermediate_layers(x, n=1, norm=True)[0]  # (B, gh*gw, D), registers dropped
                out = out.float().cpu().numpy()
                for j, i in enumerate(chunk):
                    results[i] = PatchTokens(np.ascontiguousarray(out[j]), grid, sizes[i])
                done += len(chunk)
                if progress is not None:
                    progress(Progress(done, len(inputs), phase="patch tokens"))
    return [r for r in results if r is not None]


def _decode(item: ImageInput, resolution: int) -> tuple[np.ndarray, tuple[int, int]]:
    if isinstance(item, np.ndarray):
        return item, (int(item.shape[0]), int(item.shape[1]))
    from engine.imageio import load_rgb, read_info

    info = read_info(item)  # the upright full size; the decode below may be DCT-reduced
    return load_rgb(item, min_side=resolution), (info.height, info.width)


def patch_at(xy: tuple[float, float], grid: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the patch under pixel ``(x, y)`` of an image of ``size`` (H, W); clamped to the grid."""
    gh, gw = grid
    height, width = size
    col = int(np.clip(np.floor(float(xy[0]) * gw / width), 0, gw - 1))
    row = int(np.clip(np.floor(float(xy[1]) * gh / height), 0, gh - 1))
    return row, col


def patch_center(rc: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    """Pixel ``(x, y)`` of the centre of patch ``(row, col)``."""
    gh, gw = grid
    height, width = size
    return (rc[1] + 0.5) * width / gw, (rc[0] + 0.5) * height / gh


def upsample_grid(values: np.ndarray, size: tuple[int, int], method: str = "nearest") -> np.ndarray:
    """Resize a ``(gh, gw)`` or ``(gh, gw, C)`` patch map to ``size`` (H, W) pixels.

    "nearest" keeps the patch blocks (what the model actually saw); "bicubic" is smooth. Bicubic overshoots, so the
    result is clipped to the input's range. cv2 keeps this fast at 12 MP (one pass, no float64 copies).
    """
    import cv2

    if method not in ("nearest", "bicubic"):
        raise ValueError(f"unknown upsampling {method!r}; choose nearest or bicubic")
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    arr = np.ascontiguousarray(values)
    if arr.dtype not in (np.uint8, np.float32):
        arr = arr.astype(np.float32)
    if arr.shape[:2] == (height, width):
        return arr.copy()
    channels = arr.shape[2] if arr.ndim == 3 else 1
    if channels > 4:  # cv2.resize handles at most 4 channels in one call
        return np.stack([upsample_grid(arr[..., c], size, method) for c in range(channels)], axis=-1)
    # INTER_NEAREST_EXACT samples at pixel centres (as PIL does); plain INTER_NEAREST shifts patch borders by ~1 px.
    flag = cv2.INTER_NEAREST_EXACT if method == "nearest" else cv2.INTER_CUBIC
    out = cv2.resize(arr, (width, height), interpolation=flag)
    if arr.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    if method == "bicubic" and arr.dtype == np.float32:
        np.clip(out, float(arr.min()), float(arr.max()), out=out)
    return out
