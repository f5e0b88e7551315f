"""Architecture description of a DINOv2 backbone, and the eight official ones.

A config is what `load_backbone` infers from a checkpoint's tensors; it is also stored inside Dinoscope's own
checkpoints so that training-only settings (drop-path, LayerScale init) survive a round trip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from engine.models.layers.mlp import swiglu_hidden_features


@dataclass(frozen=True)
class BackboneConfig:
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 14
    img_size: int = 518  # native size: sets the pos_embed grid (518 // 14 = 37)
    ffn_layer: str = "mlp"  # "mlp" (GELU) or "swiglu" (ViT-g)
    ffn_hidden: int = 1536
    num_register_tokens: int = 0
    init_values: float | None = 1.0  # LayerScale present when truthy; checkpoints overwrite the value
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    # Official pos-embed interpolation differs per family: plain models use scale_factor with a +0.1 offset and
    # no antialias; register models use an explicit size with antialias (DINOV2_SPEC.md 1.2).
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    drop_path_rate: float = 0.0
    drop_path_uniform: bool = True

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown backbone config keys: {sorted(unknown)}")
        return cls(**d)

    def with_(self, **changes: Any) -> BackboneConfig:
        return replace(self, **changes)


def family_interpolation(num_register_tokens: int) -> dict[str, Any]:
    """The interpolation flags the official hub uses for plain vs register models."""
    if num_register_tokens:
        return {"interpolate_offset": 0.0, "interpolate_antialias": True}
    return {"interpolate_offset": 0.1, "interpolate_antialias": False}


def _arch(embed_dim: int, depth: int, ffn_layer: str = "mlp", registers: int = 0) -> BackboneConfig:
    hidden = swiglu_hidden_features(embed_dim) if ffn_layer == "swiglu" else 4 * embed_dim
    return BackboneConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // 64,
        ffn_layer=ffn_layer,
        ffn_hidden=hidden,
        num_register_tokens=registers,
        **family_interpolation(registers),
    )


ARCHS: dict[str, BackboneConfig] = {
    "vits14": _arch(384, 12),
    "vitb14": _arch(768, 12),
    "vitl14": _arch(1024, 24),
    "vitg14": _arch(1536, 40, "swiglu"),
}
# Official zoo names, as torch.hub spells them.
OFFICIAL_CONFIGS: dict[str, BackboneConfig] = {}
for _short, _cfg in ARCHS.items():
    OFFICIAL_CONFIGS[f"dinov2_{_short}"] = _cfg
    OFFICIAL_CONFIGS[f"dinov2_{_short}_reg"] = _cfg.with_(num_register_tokens=4, **family_interpolation(4))
