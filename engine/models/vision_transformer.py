"""The DINOv2 vision transformer, written to reproduce the official outputs for every released checkpoint."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.config import BackboneConfig
from engine.models.layers import Block, PatchEmbed
from engine.models.layers.block import LayerNorm


def interpolate_pos_embed(
    pos_embed: torch.Tensor, h0: int, w0: int, offset: float, antialias: bool
) -> torch.Tensor:
    """Resample the (1, 1+M², D) table to an h0×w0 grid exactly as the official code does.

    The two official paths (scale_factor with +offset, or explicit size) sample the source at different points,
    so copying the right one per model family is what makes outputs match at sizes other than the native one.
    """
    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
    dim = pos_embed.shape[-1]
    pos = pos_embed.float()
    grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        kwargs = {"scale_factor": ((h0 + offset) / m, (w0 + offset) / m)}
    else:
        kwargs = {"size": (h0, w0)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
    if grid.shape[-2:] != (h0, w0):
        raise RuntimeError(f"pos-embed interpolation gave {tuple(grid.shape[-2:])}, expected {(h0, w0)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)
    return torch.cat([pos[:, :1], grid], dim=1)


class DinoVisionTransformer(nn.Module):
    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.embed_dim = c.embed_dim
        self.patch_size = c.patch_size
        self.num_register_tokens = c.num_register_tokens
        self.num_heads = c.num_heads
        self.interpolate_offset = c.interpolate_offset
        self.interpolate_antialias = c.interpolate_antialias

        self.patch_embed = PatchEmbed(c.patch_size, 3, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.grid_size**2, c.embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, c.num_register_tokens, c.embed_dim)) if c.num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, c.embed_dim))
        if c.drop_path_uniform:
            rates = [c.drop_path_rate] * c.depth
        else:
            rates = torch.linspace(0, c.drop_path_rate, c.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                c.embed_dim,
                c.num_heads,
                c.ffn_hidden,
                ffn_layer=c.ffn_layer,
                qkv_bias=c.qkv_bias,
                proj_bias=c.proj_bias,
                ffn_bias=c.ffn_bias,
                init_values=c.init_values,
                drop_path=rates[i],
            )
            for i in range(c.depth)
        )
        self.norm = LayerNorm(c.embed_dim)
        self.head = nn.Identity()
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        if self.pos_embed.device.type != "meta":
            # A checkpoint loader builds on "meta" and assigns the weights; initialising meta tensors would only
            # cost time (nn.init on meta goes through torch._refs, which imports torch._dynamo: 1.6 s at start-up).
            self.init_weights()

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def init_weights(self) -> None:
        """The official initialisation (trunc-normal .02 tables and linears, tiny CLS/registers, zero mask)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ tokens
    def interpolate_pos_encoding(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Pos-embed for an h×w input, cast to x's dtype. Cached at inference, where sizes repeat every batch."""
        n = self.pos_embed.shape[1] - 1
        if x.shape[1] - 1 == n and h == w:
            return self.pos_embed  # official: the stored table, uncast
        h0, w0 = h // self.patch_size, w // self.patch_size
        if torch.is_grad_enabled() and self.pos_embed.requires_grad:
            pos = interpolate_pos_embed(self.pos_embed, h0, w0, self.interpolate_offset, self.interpolate_antialias)
            return pos.to(x.dtype)
        key = (h0, w0, x.dtype, self.pos_embed.device, self.pos_embed.data_ptr(), self.pos_embed._version)
        pos = self._pos_cache.get(key)
        if pos is None:
            if len(self._pos_cache) > 32:
                self._pos_cache.clear()
            with torch.no_grad():
                pos = interpolate_pos_embed(
                    self.pos_embed, h0, w0, self.interpolate_offset, self.interpolate_antialias
                ).to(x.dtype)
            self._pos_cache[key] = pos
        return pos

    def prepare_tokens_with_masks(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            # Masked patches become the mask token before the pos-embed, so they keep their position.
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.interpolate_pos_encoding(x, h, w)
        if self.register_tokens is not None:
            # Registers go between CLS and patches, after the pos-embed: they have no position.
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        return x

    # ----------------------------------------------------------------- forward
    def forward_features(
        self, x: torch.Tensor | list[torch.Tensor], masks: torch.Tensor | list | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if isinstance(x, list):
            mask_list = masks if isinstance(masks, list) else [masks] * len(x)
            return [self.forward_features(xi, mi) for xi, mi in zip(x, mask_list, strict=True)]
        tokens = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            tokens = blk(tokens)
        x_norm = self.norm(tokens)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : 1 + r],
            "x_norm_patchtokens": x_norm[:, 1 + r :],
            "x_prenorm": tokens,
            "masks": masks,
        }

    def forward(self, x: torch.Tensor, is_training: bool = False):
        out = self.forward_features(x)
        if is_training:
            return out
        return self.head(out["x_norm_clstoken"])

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | list[int] | tuple[int, ...] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last n blocks (int) or of the given 0-based blocks (list), patch tokens only."""
        depth = len(self.blocks)
        take = list(range(depth - n, depth)) if isinstance(n, int) else [i if i >= 0 else depth + i for i in n]
        if not take or min(take) < 0 or max(take) >= depth:
            raise ValueError(f"block indices {n!r} out of range for a {depth}-block model")
        b, _, h, w = x.shape
        tokens = self.prepare_tokens_with_masks(x)
        outputs = []
        wanted = set(take)
        for i, blk in enumerate(self.blocks[: max(take) + 1]):
            tokens = blk(tokens)
            if i in wanted:
                outputs.append(tokens)
        if norm:
            outputs = [self.norm(o) for o in outputs]
        class_tokens = [o[:, 0] for o in outputs]
        outputs = [o[:, 1 + self.num_register_tokens :] for o in outputs]
        if reshape:
            p = self.patch_size
            outputs = [o.reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2).contiguous() for o in outputs]
        if return_class_token:
            return tuple(zip(outputs, class_tokens, strict=True))
        return tuple(outputs)
