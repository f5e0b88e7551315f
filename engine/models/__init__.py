"""DINOv2 backbones: the from-scratch ViT, checkpoint formats, the official zoo and `load_backbone`.

The names below load on first use (PEP 562), so that `engine.models.zoo` (what the window asks at start-up:
is the model on disk?) does not import torch with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "CheckpointError": "checkpoint",
    "save_backbone": "checkpoint",
    "save_hf": "checkpoint",
    "ARCHS": "config",
    "OFFICIAL_CONFIGS": "config",
    "BackboneConfig": "config",
    "load_dinotxt": "dinotxt_load",
    "build_backbone": "loader",
    "load_backbone": "loader",
    "DinoVisionTransformer": "vision_transformer",
}

__all__ = [
    "ARCHS",
    "OFFICIAL_CONFIGS",
    "BackboneConfig",
    "CheckpointError",
    "DinoVisionTransformer",
    "build_backbone",
    "load_backbone",
    "load_dinotxt",
    "save_backbone",
    "save_hf",
]

if TYPE_CHECKING:
    from engine.models.checkpoint import CheckpointError, save_backbone, save_hf
    from engine.models.config import ARCHS, OFFICIAL_CONFIGS, BackboneConfig
    from engine.models.dinotxt_load import load_dinotxt
    from engine.models.loader import build_backbone, load_backbone
    from engine.models.vision_transformer import DinoVisionTransformer


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"engine.models.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine.models' has no attribute {name!r}")
