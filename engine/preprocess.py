"""The torch-free half of DINOv2's input pipeline: the official eval resize and crop, and ImageNet normalisation, on
numpy arrays. `engine.transforms` wraps these as tensors; `engine.runtime.ov_quick` feeds them to OpenVINO directly,
so a first search after start-up needs no torch. Same operations, same float32 values, either way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)


def normalize_array(arr: np.ndarray) -> np.ndarray:
    """``HxWx3`` uint8 -> ``(3, H, W)`` float32, scaled to [0, 1] then ImageNet-normalised.

    The same operations, in the same order and float32 precision, as torchvision's ToTensor + Normalize (each step
    correctly rounded, so the values are bit-identical; tests/test_transforms.py holds it to that).
    """
    check_rgb(arr)
    x = arr.transpose(2, 0, 1).astype(np.float32, order="C")
    x /= np.float32(255)
    x -= _MEAN
    x /= _STD
    return x


def eval_crop(img: np.ndarray, resize: int = 256, crop: int = 224) -> np.ndarray:
    """The official eval resize and crop, still ``HxWx3`` uint8 (see `engine.transforms.eval_transform`)."""
    check_rgb(img)
    height, width = img.shape[:2]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_h, new_w) != (height, width):
        img = np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BICUBIC))
    return center_crop(img, crop)


def eval_array(img: np.ndarray, resize: int = 256, crop: int = 224) -> np.ndarray:
    """The official DINOv2 eval preprocessing as a ``(3, crop, crop)`` float32 array."""
    return normalize_array(eval_crop(img, resize, crop))


def center_crop(img: np.ndarray, crop: int) -> np.ndarray:
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


def check_rgb(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        shape = getattr(img, "shape", None)
        dtype = getattr(img, "dtype", type(img).__name__)
        raise ValueError(f"expected an HxWx3 uint8 RGB array (engine.imageio.load_rgb), got {shape} {dtype}")
