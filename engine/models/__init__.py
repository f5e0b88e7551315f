"""DINOv2 backbones: the from-scratch ViT, checkpoint formats, the official zoo and `load_backbone`."""

from engine.models.checkpoint import CheckpointError, save_backbone, save_hf
from engine.models.config import ARCHS, OFFICIAL_CONFIGS, BackboneConfig
from engine.models.dinotxt_load import load_dinotxt
from engine.models.loader import build_backbone, load_backbone
from engine.models.vision_transformer import DinoVisionTransformer

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
