"""dino.txt: DINOv2 ViT-L/14-reg plus a vision head and a text transformer that share one 2048-d space.

Module and parameter names follow the official files, so the vision-head file loads strictly into
`DinoTxt.visual_model.head` and the text-encoder file into `DinoTxt.text_model`. The backbone is our own
`DinoVisionTransformer` (its last normed layer equals the official `get_intermediate_layers(n=1)` output).
`DinoTxtImageEncoder` wraps the image side in the shape the Extractor and the indexer expect of a backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.layers import Attention, LayerScale, Mlp
from engine.models.vision_transformer import DinoVisionTransformer

LOGIT_SCALE = math.log(1 / 0.07)  # the official init; the released files do not hold a trained value
HEAD_DIM = 64  # heads are not stored in the files: both towers use 64-wide heads (1280/20, 1024/16)


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 1280
    depth: int = 24
    heads: int = 20
    ffn_hidden: int = 5120
    embed_dim: int = 2048


@dataclass(frozen=True)
class VisionHeadConfig:
    width: int = 1024
    blocks: int = 2
    heads: int = 16
    ffn_hidden: int = 2752  # SwiGLU, int(4·1024·2/3) rounded up to a multiple of 64
    projection: int | None = None  # output width of the optional linear projection (none in the release)

    @property
    def half_dim(self) -> int:
        return self.projection or self.width


# ---------------------------------------------------------------------------------------------- vision head
class AlignedSwiGLU(nn.Module):
    """SwiGLU with separate gate (w1) and value (w2) projections, as `SwiGLUFFNAligned` stores them."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class HeadBlock(nn.Module):
    """The head's pre-norm block: no qkv bias, LayerNorm eps 1e-5, LayerScale, SwiGLU feed-forward."""

    def __init__(self, dim: int, heads: int, ffn_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias=False)
        self.ls1 = LayerScale(dim, 1e-5)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = AlignedSwiGLU(dim, ffn_hidden)
        self.ls2 = LayerScale(dim, 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionHead(nn.Module):
    def __init__(self, c: VisionHeadConfig) -> None:
        super().__init__()
        self.config = c
        self.block_list = nn.ModuleList(HeadBlock(c.width, c.heads, c.ffn_hidden) for _ in range(c.blocks))
        self.ln_final = nn.LayerNorm(c.width)
        self.linear_projection = nn.Linear(c.width, c.projection, bias=False) if c.projection else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.block_list:
            tokens = block(tokens)
        return self.linear_projection(self.ln_final(tokens))


class VisionTower(nn.Module):
    """Frozen backbone -> [CLS, registers, patches] -> head; returns the head's CLS and patch tokens."""

    def __init__(self, backbone: DinoVisionTransformer, head: VisionHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def class_and_patch_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone.forward_features(images)
        r = self.backbone.num_register_tokens
        tokens = torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_regtokens"], out["x_norm_patchtokens"]], 1)
        tokens = self.head(tokens)
        return tokens[:, 0], tokens[:, 1 + r :]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cls, patches = self.class_and_patch_tokens(images)
        return torch.cat([cls, patches.mean(dim=1)], dim=-1)


# ---------------------------------------------------------------------------------------------- text tower
class CausalAttention(nn.Module):
    """Fused qkv without bias, causal SDPA: each token sees itself and the tokens before it."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TextBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_hidden: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = CausalAttention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim)
        self.feed_forward = Mlp(dim, ffn_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class TextTransformer(nn.Module):
    def __init__(self, c: TextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.positional_embedding = nn.Parameter(torch.zeros(c.context_length, c.width))
        self.blocks = nn.ModuleList(TextBlock(c.width, c.heads, c.ffn_hidden) for _ in range(c.depth))
        self.ln_final = nn.LayerNorm(c.width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)


class TextHead(nn.Module):
    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.linear_projection = nn.Linear(width, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_projection(x)


class TextTower(nn.Module):
    """Token ids -> the projected output at the end-of-text token (the position of the largest id)."""

    def __init__(self, c: TextConfig) -> None:
        super().__init__()
        self.config = c
        self.backbone = TextTransformer(c)
        self.head = TextHead(c.width, c.embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2:
            raise ValueError(f"token ids must be (batch, length), got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.config.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the context length {self.config.context_length}")
        end = ids.argmax(dim=-1)
        # Attention is causal, so nothing after the last end token can change it: drop the padding columns.
        ids = ids[:, : int(end.max()) + 1]
        tokens = self.head(self.backbone(ids))
        return tokens[torch.arange(len(ids), device=ids.device), end]


# ---------------------------------------------------------------------------------------------- the model
class DinoTxt(nn.Module):
    def __init__(self, backbone: DinoVisionTransformer, head: VisionHead, text: TextTower) -> None:
        super().__init__()
        self.visual_model = VisionTower(backbone, head)
        self.text_model = text
        self.logit_scale = nn.Parameter(torch.tensor([LOGIT_SCALE]), requires_grad=False)
        self.source = "dino.txt"

    @property
    def embed_dim(self) -> int:
        return self.text_model.config.embed_dim

    @property
    def patch_size(self) -> int:
        return self.visual_model.backbone.patch_size

    def get_visual_class_and_patch_tokens(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.visual_model.class_and_patch_tokens(image)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """[head CLS, mean of head patch tokens]: the first half is global, the second local."""
        features = self.visual_model(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Its first half aligns with the image's CLS half, its second half with the patch tokens."""
        features = self.text_model(token_ids)
        return F.normalize(features, dim=-1) if normalize else features

    def image_encoder(self) -> DinoTxtImageEncoder:
        return DinoTxtImageEncoder(self.visual_model, source=self.source)


class DinoTxtImageEncoder(nn.Module):
    """The image side dressed as a backbone: `forward_features` gives `encode_image` as the 'CLS' vector.

    Its patch tokens are the head's, placed in the patch half of a 2048-d vector with zeros in the global half,
    so pooled region vectors have the library's width and compare with the text embedding's patch half.
    """

    def __init__(self, tower: VisionTower, source: str) -> None:
        super().__init__()
        self.tower = tower
        self.source = source
        self.patch_size = tower.backbone.patch_size
        self.num_register_tokens = tower.backbone.num_register_tokens
        self.embed_dim = 2 * tower.head.config.half_dim

    @property
    def blocks(self) -> list[nn.Module]:
        """Every block with LayerScale, so `fold_layerscale` speeds up the head too."""
        return [*self.tower.backbone.blocks, *self.tower.head.block_list]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cls, patches = self.tower.class_and_patch_tokens(x)
        image = torch.cat([cls, patches.mean(dim=1)], dim=-1)
        return {
            "x_norm_clstoken": image,
            "x_norm_regtokens": image.new_zeros(len(x), 0, self.embed_dim),
            "x_norm_patchtokens": torch.cat([torch.zeros_like(patches), patches], dim=-1),
        }

    def get_intermediate_layers(self, x: torch.Tensor, n: int | list[int] | tuple[int, ...] = 1,
                                reshape: bool = False, return_class_token: bool = False,
                                norm: bool = True) -> tuple:
        """The backbone API for viewers (patch maps, PCA): only the head's output, the last 'layer', exists."""
        if n not in (1, [-1], (-1,)):
            raise ValueError("dino.txt's image encoder gives its head's tokens only (n=1)")
        out = self.forward_features(x)
        patches = out["x_norm_patchtokens"]
        if reshape:
            p = self.patch_size
            patches = patches.reshape(len(x), x.shape[-2] // p, x.shape[-1] // p, -1).permute(0, 3, 1, 2)
        return ((patches, out["x_norm_clstoken"]),) if return_class_token else (patches,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["x_norm_clstoken"]
