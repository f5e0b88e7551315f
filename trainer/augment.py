"""DINOv2 multi-crop augmentation without torchvision (DINOV2_SPEC.md §4.7).

Each image gives two global crops and N local crops. Every crop is an independent RandomResizedCrop (bicubic,
antialiased through Pillow, as torchvision does on PIL images) with a horizontal flip, then colour jitter
(p=0.8, the four ops in random order), random greyscale (p=0.2), Gaussian blur (kernel 9, sigma U(0.1, 2)), and on
the second global crop solarisation (p=0.2); then ImageNet normalisation.

Blur probabilities: the paper intends global1 1.0, global2 0.1, locals 0.5. The official code passes 1-p to
RandomApply, so it really blurs global1 never, global2 with 0.9, locals 0.5; `official_blur_bug=True` gives those.

Photometric ops work on float RGB in [0, 1] with torchvision's tensor formulas; randomness comes only from the
`numpy.random.Generator` passed in, so a seeded generator reproduces a sample exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.transforms import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from trainer.config import CropsCfg

__all__ = [
    "BLUR_KERNEL",
    "MultiCropAugmentation",
    "ViewTransform",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_probabilities",
    "gaussian_blur",
    "grayscale",
    "rrc_params",
    "solarize",
]

BLUR_KERNEL = 9
BLUR_SIGMA = (0.1, 2.0)
JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
RATIO = (3.0 / 4.0, 4.0 / 3.0)
_LUMA = (0.299, 0.587, 0.114)


def blur_probabilities(official_blur_bug: bool = False) -> tuple[float, float, float]:
    """(global 1, global 2, local) probabilities of Gaussian blur."""
    return (0.0, 0.9, 0.5) if official_blur_bug else (1.0, 0.1, 0.5)


# ------------------------------------------------------------------------------------------------ geometry
def rrc_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    ratio: tuple[float, float] = RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop box, drawn as torchvision does (10 tries, then a centre crop)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resized_crop(img: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop, then resize with Pillow's antialiased bicubic: torchvision's resized_crop on a PIL image."""
    top, left, h, w = box
    patch = np.ascontiguousarray(img[top : top + h, left : left + w])
    return np.array(Image.fromarray(patch).resize((size, size), Image.Resampling.BICUBIC))  # writable copy


# ------------------------------------------------------------------------------------------------ photometry
# All take and return float (3, H, W) tensors in [0, 1].
def _blend(a: torch.Tensor, b: torch.Tensor | float, factor: float) -> torch.Tensor:
    return (factor * a + (1.0 - factor) * b).clamp_(0.0, 1.0)


def _luma(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(0)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(0)


def grayscale(img: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma copied to the three channels (torchvision's rgb_to_grayscale)."""
    return _luma(img).expand(3, -1, -1).clone()


def adjust_brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(img, 0.0, factor)


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(img, _luma(img).mean(), factor)


def adjust_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(img, _luma(img), factor)


def adjust_hue(img: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by `shift` turns (in [-0.5, 0.5]) through HSV, as torchvision's tensor path does."""
    r, g, b = img.unbind(0)
    maxc, _ = img.max(0)
    minc, _ = img.min(0)
    delta = maxc - minc
    eq = maxc == minc
    v = maxc
    s = delta / torch.where(eq, torch.ones_like(maxc), maxc)
    dsafe = torch.where(eq, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / dsafe, (maxc - g) / dsafe, (maxc - b) / dsafe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(eq, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0 + 1.0 + shift, 1.0)
    # HSV -> RGB
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    choices_r = torch.stack([v, q, p, p, t, v])
    choices_g = torch.stack([t, v, v, q, p, p])
    choices_b = torch.stack([p, p, t, v, v, q])
    idx = i.unsqueeze(0)
    return torch.cat(
        [choices_r.gather(0, idx), choices_g.gather(0, idx), choices_b.gather(0, idx)], dim=0
    )


def gaussian_blur(img: torch.Tensor, sigma: float, kernel_size: int = BLUR_KERNEL) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (torchvision's GaussianBlur on tensors)."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[0]
    pad = kernel_size // 2
    out = F.pad(img.unsqueeze(0), (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out.squeeze(0)


def solarize(img: torch.Tensor, threshold: float = 128.0 / 255.0) -> torch.Tensor:
    """Invert every value at or above the threshold (PIL's ImageOps.solarize with 128 on 8-bit values)."""
    return torch.where(img >= threshold, 1.0 - img, img)


# ------------------------------------------------------------------------------------------------ pipelines
@dataclass(frozen=True)
class ViewTransform:
    """One crop's recipe: geometry, then colour, blur and optional solarisation, then normalisation."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float = 0.0
    jitter_p: float = 0.8
    gray_p: float = 0.2

    def __call__(
        self, img: np.ndarray, rng: np.random.Generator, applied: list[str] | None = None
    ) -> torch.Tensor:
        """`img` is HxWx3 uint8 RGB; returns a normalised (3, size, size) float32 tensor.

        `applied`, when given, collects the names of the random ops that fired (for logs and tests).
        """
        log = applied.append if applied is not None else (lambda _name: None)
        box = rrc_params(img.shape[0], img.shape[1], self.scale, rng)
        crop = _resized_crop(img, box, self.size)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
            log("flip")
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).to(torch.float32).div_(255.0)
        if rng.random() < self.jitter_p:
            x = _color_jitter(x, rng)
            log("jitter")
        if rng.random() < self.gray_p:
            x = grayscale(x)
            log("gray")
        if rng.random() < self.blur_p:
            x = gaussian_blur(x, float(rng.uniform(*BLUR_SIGMA)))
            log("blur")
        if rng.random() < self.solarize_p:
            x = solarize(x)
            log("solarize")
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
        return x.sub_(mean).div_(std)


def _color_jitter(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """ColorJitter(0.4, 0.4, 0.2, 0.1): factors drawn first, then the four ops in a random order."""
    b, c, s, h = JITTER
    factors = (
        rng.uniform(1.0 - b, 1.0 + b),
        rng.uniform(1.0 - c, 1.0 + c),
        rng.uniform(1.0 - s, 1.0 + s),
        rng.uniform(-h, h),
    )
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for i in rng.permutation(4):
        x = ops[i](x, float(factors[i]))
    return x


class MultiCropAugmentation:
    """Image -> {'global_crops': [2 tensors], 'local_crops': [n_local tensors]} (DataAugmentationDINO)."""

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 98,
        n_local: int = 8,
        global_scale: Sequence[float] = (0.32, 1.0),
        local_scale: Sequence[float] = (0.05, 0.32),
        official_blur_bug: bool = False,
    ) -> None:
        g1, g2, loc = blur_probabilities(official_blur_bug)
        gs = (float(global_scale[0]), float(global_scale[1]))
        ls = (float(local_scale[0]), float(local_scale[1]))
        self.global1 = ViewTransform(global_size, gs, blur_p=g1)
        self.global2 = ViewTransform(global_size, gs, blur_p=g2, solarize_p=0.2)
        self.local = ViewTransform(local_size, ls, blur_p=loc)
        self.n_local = n_local
        self.global_size = global_size

    @classmethod
    def from_config(cls, crops: CropsCfg) -> MultiCropAugmentation:
        """From a `trainer.config.CropsCfg`."""
        return cls(crops.global_size, crops.local_size, crops.n_local, crops.global_scale, crops.local_scale,
                   crops.official_blur_bug)

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, list[torch.Tensor]]:
        rng = rng if rng is not None else np.random.default_rng()
        return {
            "global_crops": [self.global1(img, rng), self.global2(img, rng)],
            "local_crops": [self.local(img, rng) for _ in range(self.n_local)],
        }
