"""`load_vit`: every way a user holds plain DINOv2 ViT weights (zoo name, official or Hugging Face files, a Dinoscope
checkpoint), loaded strictly into our ViT. `engine.models.loader.load_backbone` is the entry point for any source."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.models import zoo
from engine.models.checkpoint import (
    CheckpointError,
    extract_backbone_state_dict,
    infer_config,
    read_hf_folder,
    read_tensor_file,
)
from engine.models.config import BackboneConfig
from engine.models.download import ProgressFn
from engine.models.vision_transformer import DinoVisionTransformer

Source = str | os.PathLike


def build_backbone(config: BackboneConfig | str) -> DinoVisionTransformer:
    """A randomly initialised backbone, from a config or an official name such as 'dinov2_vits14'."""
    if isinstance(config, str):
        config = zoo.entry(config).config
    return DinoVisionTransformer(config)


def load_state(source: Source, progress: ProgressFn | None = None, allow_download: bool = True):
    """Resolve a source to (official-key state dict, config or None, description)."""
    if isinstance(source, str) and source in zoo.ZOO:
        path = zoo.local_path(source)
        if path is None:
            if not allow_download:
                raise CheckpointError(
                    f"{source} is not downloaded; run `python -m app models download {source}` "
                    f"or save {zoo.url(source)} as {zoo.cache_path(source)}"
                )
            path = zoo.download(source, progress=progress)
        sd, cfg = extract_backbone_state_dict(read_tensor_file(path), str(path))
        return sd, cfg, source
    path = Path(source).expanduser()
    if path.is_dir():
        raw, _hf_config = read_hf_folder(path)
        sd, cfg = extract_backbone_state_dict(raw, str(path))
        return sd, cfg, str(path)
    if path.is_file():
        sd, cfg = extract_backbone_state_dict(read_tensor_file(path), str(path))
        return sd, cfg, str(path)
    if isinstance(source, str) and source.startswith("dinov2_"):
        raise CheckpointError(f"unknown model {source!r}; the zoo has: {', '.join(zoo.ZOO)}")
    raise CheckpointError(f"{source}: no such file or folder, and not a zoo name ({', '.join(zoo.ZOO)})")


def load_vit(
    source: Source,
    device: str | torch.device = "cpu",
    *,
    progress: ProgressFn | None = None,
    allow_download: bool = True,
) -> DinoVisionTransformer:
    """Build the backbone a checkpoint describes and load it strictly, in eval mode on `device`.

    `source` is a zoo name (dinov2_vits14, dinov2_vitg14_reg, ...), an official .pth, an official training
    checkpoint (teacher, block-chunked keys), a Hugging Face folder / .safetensors / .bin (Dinov2Model,
    Dinov2WithRegistersModel, or the classification models' `dinov2.` backbone), or a Dinoscope checkpoint.
    """
    sd, stored, origin = load_state(source, progress=progress, allow_download=allow_download)
    inferred = infer_config(sd, origin)
    config = inferred
    if stored:
        try:
            config = BackboneConfig.from_dict(stored)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{origin}: its stored backbone config is invalid: {e}") from None
        shape_fields = ("embed_dim", "depth", "patch_size", "img_size", "ffn_layer", "ffn_hidden",
                        "num_register_tokens")
        for f in shape_fields:
            if getattr(config, f) != getattr(inferred, f):
                raise CheckpointError(
                    f"{origin}: its config says {f}={getattr(config, f)!r} but the weights have "
                    f"{getattr(inferred, f)!r}"
                )
    with torch.device("meta"):
        model = DinoVisionTransformer(config)
    missing, unexpected = _strict_keys(model, sd)
    if missing or unexpected:
        parts = [_describe_keys("missing", missing), _describe_keys("unexpected", unexpected)]
        parts = [p for p in parts if p]
        raise CheckpointError(f"{origin}: does not match a DINOv2 backbone: " + "; ".join(parts))
    _check_shapes(model, sd, origin)
    # Half-precision files (fp16 Hugging Face exports, Dinoscope's bundled demo model) are upcast: the weights
    # live in float32 and the Extractor picks the compute precision (bf16 autocast where the device has it).
    sd = {k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    model.source = origin
    return model.to(device).eval()


def _describe_keys(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = " ..." if len(keys) > 8 else ""
    return f"{what} {len(keys)} key(s): {', '.join(keys[:8])}{more}"


def _strict_keys(model: torch.nn.Module, sd: dict) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    given = set(sd)
    return sorted(expected - given), sorted(given - expected)


def _check_shapes(model: torch.nn.Module, sd: dict, origin: str) -> None:
    for k, v in model.state_dict().items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{origin}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
