"""Where in a photo are the words? dino.txt's open-vocabulary heatmap, the official notebook's recipe.

The vision head's patch tokens are upsampled bicubically, L2-normalised per pixel and compared (cosine) with the
second half of the text embedding, the half trained against pooled patch tokens. The photo is fed whole (aspect
kept, shorter side about `resolution`, snapped to the patch size) rather than centre-cropped, so the map covers
all of it. The notebook upsamples to the full image; here the cosine is taken at 4x the patch grid (the same
maths, 1/16 of the patch grid's cells per pixel at most) and that map is resized to the photo, which keeps a 12 MP
photo at ~100 MB instead of 48 GB of upsampled 1024-d tokens.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from engine.device import pick_device, pick_dtype
from engine.models.dinotxt import DinoTxt
from engine.text.tokenizer import Tokenizer
from engine.transforms import dense_transform
from engine.viz.heatmap import Heatmap
from engine.viz.patches import patch_center

UPSAMPLE = 4  # cosine computed on a grid this many times finer than the patches


def text_heatmap(model: DinoTxt, image: np.ndarray, text: str, *, tokenizer: Tokenizer | None = None,
                 resolution: int = 448, device: str = "auto", precision: str = "auto") -> Heatmap:
    """The cosine of each location of `image` (HxWx3 uint8) with `text`, as a Heatmap sized to the photo."""
    if not text.strip():
        raise ValueError("the text is empty; give some words to look for")
    tokenizer = tokenizer or Tokenizer()
    dev = pick_device(device)
    dtype = pick_dtype(dev, precision if precision != "int8" else "fp32")
    model = model.to(dev)
    x, grid = dense_transform(image, resolution=resolution, patch_size=model.patch_size)
    ids = tokenizer.tokenize(text, context_length=model.text_model.config.context_length).to(dev)
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    with torch.inference_mode(), autocast:
        _, patches = model.get_visual_class_and_patch_tokens(x[None].to(dev))
        words = model.encode_text(ids)
    half = words.shape[-1] - patches.shape[-1]  # 1024 of 2048: the patch-aligned half
    words = F.normalize(words[:, half:].float(), dim=-1)[0]
    tokens = patches.float()[0].T.reshape(1, -1, *grid)  # (1, D, gh, gw)
    fine = (grid[0] * UPSAMPLE, grid[1] * UPSAMPLE)
    tokens = F.normalize(F.interpolate(tokens, size=fine, mode="bicubic", align_corners=False), dim=1)
    sim = torch.einsum("bdhw,d->hw", tokens, words).cpu().numpy().astype(np.float32)
    size = (int(image.shape[0]), int(image.shape[1]))
    best = np.unravel_index(int(np.argmax(sim)), sim.shape)
    best_rc = (int(best[0]), int(best[1]))
    return Heatmap(sim=sim, size=size, best_xy=patch_center(best_rc, sim.shape, size),
                   best_score=float(sim[best_rc]), upsample="bicubic")
