"""Optimizer parameter groups: layer-wise lr decay, the patch-embedding lr multiplier, weight-decay exemptions.

Rules (DINOV2_SPEC.md §4.3), per student submodule:
- layer id 0 for pos_embed, patch_embed, mask_token, cls_token, register_tokens; i+1 for block i; depth+1 for
  everything else (final norm). Heads have no blocks, so all their parameters get multiplier 1.
- lr multiplier = layerwise_decay ** (depth + 1 - layer_id), times patch_embed_lr_mult for patch_embed.
- weight decay: none on biases, norms and LayerScale gammas, and (Dinoscope default, as the issue asks) none on
  the tokens (cls_token, pos_embed, mask_token, register_tokens) either. `official=True` restores upstream's rule,
  which decays the tokens. The last layer's `weight_g` is decayed in both, as upstream does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from trainer.config import OptimCfg

__all__ = [
    "apply_optim_schedule",
    "build_optimizer",
    "fuse_param_groups",
    "layer_id",
    "param_group_settings",
]

_TOKENS = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")
_NO_DECAY_TOKENS = ("pos_embed", "mask_token", "cls_token", "register_tokens")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.(?:(\d+)\.)?")


def layer_id(name: str, depth: int) -> int:
    """The layer a backbone parameter belongs to (0 = embeddings, i+1 = block i, depth+1 = the rest).

    Block-chunked names (`blocks.<chunk>.<block>.`) use the global block index, the second number.
    """
    first = name.split(".", 1)[0]
    if first in _TOKENS:
        return 0
    m = _BLOCK.search(name)
    if m:
        return int(m.group(2) if m.group(2) is not None else m.group(1)) + 1
    return depth + 1


def param_group_settings(
    name: str,
    depth: int,
    layerwise_decay: float = 0.9,
    patch_embed_lr_mult: float = 0.2,
    official: bool = False,
) -> dict[str, Any]:
    """lr_multiplier, wd_multiplier and is_last_layer for one parameter of a submodule with `depth` blocks."""
    lid = layer_id(name, depth) if depth > 0 else 1
    lr_mult = layerwise_decay ** ((depth if depth > 0 else 0) + 1 - lid)
    if name.startswith("patch_embed") or ".patch_embed" in name:
        lr_mult *= patch_embed_lr_mult
    no_decay = name.endswith(".bias") or "norm" in name or "gamma" in name
    if not official and name.split(".", 1)[0] in _NO_DECAY_TOKENS:
        no_decay = True
    return {
        "lr_multiplier": lr_mult,
        "wd_multiplier": 0.0 if no_decay else 1.0,
        "is_last_layer": "last_layer" in name,
    }


def fuse_param_groups(
    modules: Mapping[str, nn.Module],
    layerwise_decay: float = 0.9,
    patch_embed_lr_mult: float = 0.2,
    official: bool = False,
) -> list[dict[str, Any]]:
    """Optimizer groups for the student's submodules, parameters with equal settings fused into one group.

    Each group carries `lr_multiplier`, `wd_multiplier`, `is_last_layer` and `names` (qualified by submodule).
    A submodule's depth is its number of transformer blocks (`len(module.blocks)`), 0 for heads.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for prefix, module in modules.items():
        blocks = getattr(module, "blocks", None)
        depth = len(blocks) if blocks is not None else 0
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            s = param_group_settings(name, depth, layerwise_decay, patch_embed_lr_mult, official)
            key = (s["lr_multiplier"], s["wd_multiplier"], s["is_last_layer"])
            group = groups.setdefault(key, {"params": [], "names": [], **s})
            group["params"].append(param)
            group["names"].append(f"{prefix}.{name}")
    return list(groups.values())


def build_optimizer(modules: Mapping[str, nn.Module], optim_cfg: OptimCfg) -> torch.optim.AdamW:
    """AdamW over the fused groups of an OptimCfg; lr and weight decay are set each step by the schedules."""
    groups = fuse_param_groups(
        modules, optim_cfg.layerwise_decay, optim_cfg.patch_embed_lr_mult, optim_cfg.official_param_groups
    )
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, betas=tuple(optim_cfg.betas))


def apply_optim_schedule(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    """Set every group's lr and weight decay for this iteration from the scheduled values and its multipliers."""
    for group in optimizer.param_groups:
        base = last_layer_lr if group.get("is_last_layer") else lr
        group["lr"] = base * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = wd * group.get("wd_multiplier", 1.0)
