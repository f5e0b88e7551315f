"""Small builders shared by the tests: tiny random DINOv2 backbones in every official layout."""

from __future__ import annotations

import torch

from engine.models import BackboneConfig, DinoVisionTransformer
from engine.models.config import family_interpolation
from engine.models.layers.mlp import swiglu_hidden_features


def tiny_config(registers: int = 0, ffn: str = "mlp", depth: int = 3, dim: int = 128, img_size: int = 518):
    hidden = swiglu_hidden_features(dim) if ffn == "swiglu" else 4 * dim
    return BackboneConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=dim // 64,
        ffn_layer=ffn,
        ffn_hidden=hidden,
        img_size=img_size,
        num_register_tokens=registers,
        **family_interpolation(registers),
    )


def tiny_backbone(registers: int = 0, ffn: str = "mlp", seed: int = 0, **kw) -> DinoVisionTransformer:
    """Random weights everywhere (LayerScale, norms, tokens too), so any mis-mapped tensor shows up."""
    torch.manual_seed(seed)
    model = DinoVisionTransformer(tiny_config(registers, ffn, **kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model
