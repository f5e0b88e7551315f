"""Non-overlapping patch embedding: a strided convolution, flattened to tokens in row-major order."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 384) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            # The official code raises here too; cropping silently would shift every overlay.
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the patch size {p}; "
                f"resize or crop it first (engine.transforms snaps sizes to multiples of {p})"
            )
        x = self.proj(x)  # B, D, H/p, W/p
        return x.flatten(2).transpose(1, 2)  # B, HW, D
