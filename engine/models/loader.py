"""`load_backbone`: any model source a user can name, to a module with the backbone's interface.

A plain DINOv2 ViT (zoo name, official or Hugging Face weights, a Dinoscope checkpoint) is `vit_loader`'s; dino.txt
(its zoo name or a folder of its three files) gives its image encoder, whose 2048-d `encode_image` vectors stand in
for the CLS token. This module only tells them apart, so neither loader imports the other's caller.
"""

from __future__ import annotations

import torch

from engine.models.dinotxt_load import is_dinotxt_source, load_dinotxt_image_encoder
from engine.models.download import ProgressFn
from engine.models.vit_loader import Source, build_backbone, load_state, load_vit


def load_backbone(
    source: Source,
    device: str | torch.device = "cpu",
    *,
    progress: ProgressFn | None = None,
    allow_download: bool = True,
) -> torch.nn.Module:
    """Build the model a source describes and load it strictly, in eval mode on `device` (see `load_vit` for the
    ViT sources it reads)."""
    if is_dinotxt_source(source):
        encoder = load_dinotxt_image_encoder(source, progress=progress, allow_download=allow_download)
        return encoder.to(device).eval()
    return load_vit(source, device, progress=progress, allow_download=allow_download)


__all__ = ["build_backbone", "load_backbone", "load_state"]
