"""The DINO / iBOT projection head (DINOV2_SPEC.md §4.4): MLP -> bottleneck -> L2-normalise -> K prototypes.

State-dict keys match the official checkpoints: `mlp.0.*`, `mlp.2.*`, `mlp.4.*` (for 3 layers),
`last_layer.weight_g` (K, 1) and `last_layer.weight_v` (K, bottleneck).

The weight-normalised last layer is written out (`WeightNormLinear`) rather than taken from torch: the classic
`torch.nn.utils.weight_norm` is deprecated and its module cannot be deep-copied after a forward, and the
parametrizations version stores `parametrizations.weight.original0/1`, which no official checkpoint has. The maths
is the same: W = g · v / ‖v‖ with the norm over each prototype's row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOHead", "WeightNormLinear"]


class WeightNormLinear(nn.Module):
    """Bias-free linear layer whose rows are v / ‖v‖ scaled by a learnt per-row g (g starts at 1)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        # PyTorch's default nn.Linear init: the official head creates this layer after its trunc-normal pass.
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class DINOHead(nn.Module):
    """Projection head: Linear-GELU (nlayers-1 times) -> Linear(bottleneck) -> normalise -> prototypes."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError("a DINO head needs at least one layer")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=mlp_bias))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    @property
    def out_dim(self) -> int:
        return self.last_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)
