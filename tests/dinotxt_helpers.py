"""A reduced dino.txt written in the official three-file layout, with every key named as the official files
name it (DINOV2_SPEC.md, "dino.txt"), independently of engine.models.dinotxt's module tree."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers import tiny_backbone

BACKBONE = "dinov2_vitl14_reg4_pretrain.pth"
VISION_HEAD = "dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_vision_head.pth"
TEXT_ENCODER = "dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_text_encoder.pth"


def _rand(gen: torch.Generator, *shape: int, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def vision_head_state(width: int = 128, blocks: int = 2, ffn: int = 384, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(blocks):
        p = f"block_list.{i}."
        sd.update({
            p + "norm1.weight": 1 + _rand(g, width), p + "norm1.bias": _rand(g, width),
            p + "attn.qkv.weight": _rand(g, 3 * width, width),
            p + "attn.proj.weight": _rand(g, width, width), p + "attn.proj.bias": _rand(g, width),
            p + "ls1.gamma": 0.5 + _rand(g, width),
            p + "norm2.weight": 1 + _rand(g, width), p + "norm2.bias": _rand(g, width),
            p + "mlp.w1.weight": _rand(g, ffn, width), p + "mlp.w1.bias": _rand(g, ffn),
            p + "mlp.w2.weight": _rand(g, ffn, width), p + "mlp.w2.bias": _rand(g, ffn),
            p + "mlp.w3.weight": _rand(g, width, ffn), p + "mlp.w3.bias": _rand(g, width),
            p + "ls2.gamma": 0.5 + _rand(g, width),
        })
    sd["ln_final.weight"] = 1 + _rand(g, width)
    sd["ln_final.bias"] = _rand(g, width)
    return sd


def text_encoder_state(width: int = 64, depth: int = 2, embed_dim: int = 256, vocab: int = 49408,
                       context: int = 77, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {"backbone.token_embedding.weight": _rand(g, vocab, width, scale=0.5),
          "backbone.positional_embedding": _rand(g, context, width, scale=0.5)}
    for i in range(depth):
        p = f"backbone.blocks.{i}."
        sd.update({
            p + "attention_norm.weight": 1 + _rand(g, width), p + "attention_norm.bias": _rand(g, width),
            p + "attention.qkv.weight": _rand(g, 3 * width, width, scale=0.2),
            p + "attention.proj.weight": _rand(g, width, width, scale=0.2),
            p + "attention.proj.bias": _rand(g, width),
            p + "ffn_norm.weight": 1 + _rand(g, width), p + "ffn_norm.bias": _rand(g, width),
            p + "feed_forward.fc1.weight": _rand(g, 4 * width, width, scale=0.2),
            p + "feed_forward.fc1.bias": _rand(g, 4 * width),
            p + "feed_forward.fc2.weight": _rand(g, width, 4 * width, scale=0.2),
            p + "feed_forward.fc2.bias": _rand(g, width),
        })
    sd["backbone.ln_final.weight"] = 1 + _rand(g, width)
    sd["backbone.ln_final.bias"] = _rand(g, width)
    sd["head.linear_projection.weight"] = _rand(g, embed_dim, width, scale=0.2)
    return sd


def save_tiny_dinotxt(folder: Path, width: int = 128, seed: int = 0) -> Path:
    """The three files, official names, a 2-block 128-wide backbone with 4 registers."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone = tiny_backbone(registers=4, depth=2, dim=width, seed=seed)
    torch.save(backbone.state_dict(), folder / BACKBONE)
    torch.save(vision_head_state(width=width, seed=seed + 1), folder / VISION_HEAD)
    torch.save(text_encoder_state(embed_dim=2 * width, seed=seed + 2), folder / TEXT_ENCODER)
    return folder
