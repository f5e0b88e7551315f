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

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "dense_size",
    "dense_transform",
    "eval_batch",
    "eval_transform",
    "normalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(arr: np.ndarray) -> torch.Tensor:
    """``HxWx3`` uint8 -> ``(3, H, W)`` float32, scaled to [0, 1] then ImageNet-normalised.

    The same operations, in the same order and precision, as torchvision's ToTensor + Normalize.
    """
    _check_rgb(arr)
    # torch warns on read-only arrays (np.asarray of a PIL image is one), so copy those; the uint8 copy is cheap.
    tensor = torch.as_tensor(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1).contiguous()
    tensor = tensor.to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def eval_transform(img: np.ndarray, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """The official DINOv2 eval preprocessing: ``(3, crop, crop)`` float32, normalised.

    Resize: shorter side to ``resize`` with PIL bicubic (antialiased), long side ``int(resize * long / short)``
    (truncated, as torchvision does). CenterCrop: offsets ``int(round((size - crop) / 2))`` (Python rounds halves
    to even), zero-padded first if the image is smaller than the crop, as torchvision does.
    """
    _check_rgb(img)
    height, width = img.shape[:2]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_h, new_w) != (height, width):
        img = np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BICUBIC))
    return normalize(_center_crop(img, crop))


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
    _check_rgb(img)
    height, width = dense_size(img.shape[0], img.shape[1], resolution, patch_size, max_tokens)
    if (height, width) != img.shape[:2]:
        img = np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BICUBIC))
    return normalize(img), (height // patch_size, width // patch_size)


def _center_crop(img: np.ndarray, crop: int) -> np.ndarray:
    """torchvision.transforms.functional.center_crop for a square crop on an HxWxC array."""
    height, width = img.shape[:2]
    if crop > height or crop > width:
        pad_top = (crop - height) // 2 if crop > height else 0
        pad_left = (crop - width) // 2 if crop > width else 0
        pad_bottom = (crop - height + 1) // 2 if crop > height else 0
        pad_right = (crop - width + 1) // 2 if crop > width else 0
        img = np.pad(img, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
        height, width = img.shape[:2]
    top = round((height - crop) / 2.0)  # torchvision: int(round(...)); round() of a float is already an int
    left = round((width - crop) / 2.0)
    return img[top : top + crop, left : left + crop]


def _check_rgb(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        shape = getattr(img, "shape", None)
        dtype = getattr(img, "dtype", type(img).__name__)
        raise ValueError(f"expected an HxWx3 uint8 RGB array (engine.imageio.load_rgb), got {shape} {dtype}")
