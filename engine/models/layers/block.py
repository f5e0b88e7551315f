"""Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(ffn(norm2(x)))."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from engine.models.layers.attention import Attention
from engine.models.layers.drop_path import DropPath, drop_add_residual_stochastic_depth
from engine.models.layers.layer_scale import LayerScale
from engine.models.layers.mlp import Mlp, SwiGLUFFN

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_hidden: int,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = 1e-5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = LayerNorm(dim)
        if ffn_layer == "mlp":
            self.mlp = Mlp(dim, ffn_hidden, bias=ffn_bias)
        elif ffn_layer == "swiglu":
            self.mlp = SwiGLUFFN(dim, ffn_hidden, bias=ffn_bias)
        else:
            raise ValueError(f"unknown ffn_layer {ffn_layer!r}; expected 'mlp' or 'swiglu'")
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.sample_drop_ratio = drop_path
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _attn_residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls1(self.attn(self.norm1(x)))

    def _ffn_residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sample_drop_ratio > 0.1:
            x = drop_add_residual_stochastic_depth(x, self._attn_residual, self.sample_drop_ratio)
            return drop_add_residual_stochastic_depth(x, self._ffn_residual, self.sample_drop_ratio)
        x = x + self.drop_path(self._attn_residual(x))
        return x + self.drop_path(self._ffn_residual(x))
