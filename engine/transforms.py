"""Turn decoded RGB arrays into DINOv2 model inputs.

``eval_transform`` reproduces the official evaluation pipeline (``dinov2/data/transforms.py``:
Resize(256, BICUBIC) -> CenterCrop(224) -> ToTensor -> Normalize(ImageNet)) exactly as torchvision computes it on PIL
images, without depending on torchvision: global features then match the published k-NN/linear numbers.
``dense_transform`` keeps the whole image (no crop) at a patch-aligned size for PCA overlays and heatmaps.

Inputs are ``HxWx3`` uint8 RGB arrays as returned by :func:`engine.imageio.load_rgb`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from engine.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_rgb, eval_crop, normalize_array

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "dense_size",
    "dense_transform",
    "eval_batch",
    "eval_transform",
    "normalize",
]


def normalize(arr: np.ndarray) -> torch.Tensor:
    """``HxWx3`` uint8 -> ``(3, H, W)`` float32 tensor, scaled to [0, 1] then ImageNet-normalised, as torchvision's
    ToTensor + Normalize compute it (`engine.preprocess.normalize_array`)."""
    return torch.from_numpy(normalize_array(arr))


def eval_transform(img: np.ndarray, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """The official DINOv2 eval preprocessing: ``(3, crop, crop)`` float32, normalised.

    Resize: shorter side to ``resize`` with PIL bicubic (antialiased), long side ``int(resize * long / short)``
    (truncated, as torchvision does). CenterCrop: offsets ``int(round((size - crop) / 2))`` (Python rounds halves
    to even), zero-padded first if the image is smaller than the crop, as torchvision does.
    """
    return normalize(eval_crop(img, resize, crop))


def eval_batch(images: list[np.ndarray], resize: int = 256, crop: int = 224) -> torch.Tensor:
    """:func:`eval_transform` on each image, stacked to ``(N, 3, crop, crop)``."""
    if not images:
        return torch.empty((0, 3, crop, crop), dtype=torch.float32)
    return torch.stack([eval_transform(img, resize, crop) for img in images])


def dense_size(
    height: int, width: int, resolution: int = 448, patch_size: int = 14, max_tokens: int = 4096
) -> tuple[int, int]:
    """Patch-aligned ``(H, W)`` for dense features: aspect kept, shorter side about ``resolution``.

    Both sides are rounded to the nearest multiple of ``patch_size`` (at least one patch each, so even a 5x5 image
    works). If that would exceed ``max_tokens`` patches (a 20:1 panorama at 448 would need ~20k), the grid is scaled
    down uniformly to fit, because attention cost grows with the square of the token count.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if resolution < 1 or patch_size < 1 or max_tokens < 1:
        raise ValueError("resolution, patch_size and max_tokens must be positive")
    scale = resolution / min(height, width)
    rows = max(1, math.floor(height * scale / patch_size + 0.5))
    cols = max(1, math.floor(width * scale / patch_size + 0.5))
    if rows * cols > max_tokens:
        shrink = math.sqrt(max_tokens / (rows * cols))
        rows = max(1, math.floor(rows * shrink))
        cols = max(1, math.floor(cols * shrink))
        # Extreme strips can still overflow after flooring the short side to 1 patch; trim the long side.
        if rows * cols > max_tokens:
            if rows >= cols:
                rows = max(1, max_tokens // cols)
            else:
                cols = max(1, max_tokens // rows)
    return rows * patch_size, cols * patch_size


def dense_transform(
    img: np.ndarray, resolution: int = 448, patch_size: int = 14, max_tokens: int = 4096
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize (PIL bicubic) to :func:`dense_size` and normalise; returns the ``(3, H, W)`` tensor and patch grid."""
    check_rgb(img)
    height, width = dense_size(img.shape[0], img.shape[1], resolution, patch_size, max_tokens)
    if (height, width) != img.shape[:2]:
        img = np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BICUBIC))
    return normalize(img), (height // patch_size, width // patch_size)
