"""Architecture description of a DINOv2 backbone, and the eight official ones.

A config is what `load_backbone` infers from a checkpoint's tensors; it is also stored inside Dinoscope's own
checkpoints so that training-only settings (drop-path, LayerScale init) survive a round trip.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from numbers import Integral, Real
from typing import Any


def swiglu_hidden_features(dim: int, mlp_ratio: float = 4.0) -> int:
    """Hidden width of DINOv2's SwiGLU: 2/3 of the MLP width, rounded up to a multiple of 8 (6144 -> 4096)."""
    hidden = int(dim * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8


MAX_GRID = 256
"""Largest pos-embed grid accepted (official models: 37 x 37). 256 x 256 positions still fit in ~400 MB at ViT-g
width; a hostile checkpoint declaring 2600 x 2600 would need ~10 GB the moment it is interpolated."""

# (field, smallest, largest) for the integer fields: generous bounds around every real DINOv2 (ViT-g: 1536 wide,
# 40 deep, 24 heads), tight enough that no value can ask for an absurd allocation.
_INT_RANGES = (
    ("embed_dim", 1, 16384),
    ("depth", 1, 512),
    ("num_heads", 1, 1024),
    ("patch_size", 1, 1024),
    ("img_size", 1, 1024 * MAX_GRID),
    ("ffn_hidden", 1, 16 * 16384),
    ("num_register_tokens", 0, 1024),
)
_BOOL_FIELDS = ("qkv_bias", "proj_bias", "ffn_bias", "interpolate_antialias", "drop_path_uniform")


class ConfigValueError(ValueError):
    """A backbone config value that no DINOv2 can have (loaders add the file's name to the message)."""


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

    def __post_init__(self) -> None:
        """Every value is checked when a config is made, so a stored config with num_heads 0, a NaN drop-path or
        a 1e308 offset is refused with one sentence instead of failing later inside torch."""
        for name, low, high in _INT_RANGES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or not low <= value <= high:
                raise ConfigValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigValueError(f"num_heads ({self.num_heads}) must divide embed_dim ({self.embed_dim})")
        if self.img_size < self.patch_size or self.grid_size > MAX_GRID:
            raise ConfigValueError(
                f"img_size {self.img_size} with patch_size {self.patch_size} makes a {self.grid_size} x "
                f"{self.grid_size} position grid; it must be 1 to {MAX_GRID} patches wide")
        if self.ffn_layer not in ("mlp", "swiglu"):
            raise ConfigValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {self.ffn_layer!r}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _check_real("interpolate_offset", self.interpolate_offset, 0.0, 1.0)
        _check_real("drop_path_rate", self.drop_path_rate, 0.0, 0.99)
        if self.init_values is not None:
            _check_real("init_values", self.init_values, -1e4, 1e4)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        if not isinstance(d, dict):
            raise ConfigValueError(f"the backbone config must be a mapping of names to values, not a "
                                   f"{type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigValueError(f"unknown backbone config keys: {sorted(map(str, unknown))}")
        return cls(**d)

    def with_(self, **changes: Any) -> BackboneConfig:
        return replace(self, **changes)


def _check_real(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not low <= value <= high:
        raise ConfigValueError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")


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
