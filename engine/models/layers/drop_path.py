"""Stochastic depth, in the two forms the official code uses.

Above a drop rate of 0.1, DINOv2 computes a residual branch only for a random subset of the batch and adds it
back scaled up, which saves compute in proportion to the rate (paper, Sec. 5). Below, it uses ordinary DropPath.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


def drop_add_residual_stochastic_depth(
    x: torch.Tensor, residual_func: Callable[[torch.Tensor], torch.Tensor], sample_drop_ratio: float
) -> torch.Tensor:
    """x + residual(x) on floor(B·(1-d)) random samples (at least one), scaled by B/subset; the rest pass through."""
    b = x.shape[0]
    keep = max(int(b * (1 - sample_drop_ratio)), 1)
    subset = torch.randperm(b, device=x.device)[:keep]
    residual = residual_func(x[subset])
    out = torch.index_add(x.flatten(1), 0, subset, residual.flatten(1).to(x.dtype), alpha=b / keep)
    return out.view_as(x)
