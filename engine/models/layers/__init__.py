"""Building blocks of the DINOv2 ViT. Module and parameter names follow the official checkpoints."""

from engine.models.layers.attention import Attention
from engine.models.layers.block import Block
from engine.models.layers.drop_path import DropPath, drop_add_residual_stochastic_depth
from engine.models.layers.layer_scale import LayerScale
from engine.models.layers.mlp import Mlp, SwiGLUFFN, swiglu_hidden_features
from engine.models.layers.patch_embed import PatchEmbed

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLUFFN",
    "drop_add_residual_stochastic_depth",
    "swiglu_hidden_features",
]
