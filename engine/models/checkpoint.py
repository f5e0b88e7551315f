"""Checkpoint formats: reading them safely, normalising their keys to the official names, inferring the
architecture from the tensors, and writing Dinoscope's own format and the Hugging Face one.

Every reader refuses to unpickle arbitrary objects (`torch.load(weights_only=True)` or safetensors).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from engine.atomic import atomic_write
from engine.models.config import MAX_GRID, BackboneConfig, ConfigValueError, family_interpolation

FORMAT_TAG = "dinoscope-backbone"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not describe a DINOv2 backbone; the message says why."""


StateDict = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------------ reading
def read_tensor_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a .pth/.pt/.bin (weights only) or .safetensors file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download?)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            msg = "it contains Python objects other than tensors, which Dinoscope refuses to unpickle"
        raise CheckpointError(f"{path}: cannot read the checkpoint: {msg}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    check_stored_sizes(obj, str(path))
    return obj


def _tensors_in(obj: Any, prefix: str = "", depth: int = 0):
    """(key, tensor) of every tensor in a checkpoint's nested dicts (state dicts sit at most a few levels down)."""
    if depth > 4 or not isinstance(obj, dict):
        return
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            yield f"{prefix}{key}", value
        elif isinstance(value, dict):
            yield from _tensors_in(value, f"{prefix}{key}.", depth + 1)


def check_stored_sizes(obj: dict[str, Any], origin: str) -> None:
    """Refuse tensors that declare more values than the file stores, before anything copies them.

    torch.save keeps views as they are: a 5.6 MB tensor with stride 0 can declare a 2600 x 2600 x 384 pos_embed
    that becomes 10 GB the first time it is copied, cast or interpolated. Real checkpoints never overlap their
    tensors, so each tensor's declared bytes, and all of them together, fit in the storage the file holds.
    """
    declared_total = 0
    storages: dict[int, int] = {}
    for key, t in _tensors_in(obj):
        declared = t.numel() * t.element_size()
        storage = t.untyped_storage()
        stored = storage.nbytes()
        if declared > stored:
            raise CheckpointError(
                f"{origin}: {key} declares shape {tuple(t.shape)} ({declared / 1e6:.1f} MB) but the file stores only "
                f"{stored / 1e6:.1f} MB for it (an overlapping or stride-0 view); refusing to expand it")
        declared_total += declared
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), stored)
    stored_total = sum(storages.values())
    if declared_total > stored_total:
        raise CheckpointError(
            f"{origin}: its tensors declare {declared_total / 1e6:.1f} MB over {stored_total / 1e6:.1f} MB of stored "
            "data (views reusing the same bytes); refusing to expand them")


def read_hf_folder(folder: str | os.PathLike) -> tuple[StateDict, dict[str, Any]]:
    """A `save_pretrained` folder: config.json plus model.safetensors (or pytorch_model.bin), maybe sharded."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    config = _read_json(cfg_path) if cfg_path.is_file() else {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, found {type(config).__name__}")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_tensor_file(folder / name), config
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = _read_json(index)
            if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
                raise CheckpointError(f"{index}: has no weight_map object")
            shards = sorted({str(v) for v in weight_map["weight_map"].values()})
            if any(Path(s).name != s for s in shards):
                raise CheckpointError(f"{index}: shard names must be files in the same folder")
            sd: StateDict = {}
            for shard in shards:
                sd.update(read_tensor_file(folder / shard))
            return sd, config
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin in this folder")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from None


# ------------------------------------------------------------------------------------------ key handling
_HF_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),  # transformers>=5 in memory
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc([12])\.", r"blocks.\1.mlp.fc\2."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.w3."),
    (r"^encoder\.layer\.(\d+)\.mlp\.down_proj\.", r"blocks.\1.mlp.w3."),
    (r"^layernorm\.", "norm."),
]
# Files on the Hub spell q/k/v as attention.attention.{query,key,value}; transformers>=5 renames them in
# memory to attention.{q,k,v}_proj and splits SwiGLU's weights_in into gate_proj/up_proj. Both are accepted.
_HF_QKV = re.compile(
    r"^encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$"
)
_HF_GATE_UP = re.compile(r"^encoder\.layer\.(\d+)\.mlp\.(gate_proj|up_proj)\.(weight|bias)$")
_QKV_NAMES = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}


def is_hf_state_dict(sd: StateDict) -> bool:
    return any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd)


def hf_to_official(sd: StateDict) -> StateDict:
    """Rename `transformers` Dinov2Model / Dinov2WithRegistersModel keys and fuse q, k, v into one qkv."""
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    gate_up: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        m = _HF_QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[_QKV_NAMES.get(m.group(2), m.group(2))] = t
            continue
        m = _HF_GATE_UP.match(key)
        if m:
            gate_up.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = t
            continue
        for pat, rep in _HF_RENAMES:
            new, n = re.subn(pat, rep, key)
            if n:
                out[new] = t
                break
        else:
            out[key] = t  # unknown: kept so that strict loading names it
    for (layer, kind), parts in qkv.items():
        missing = {"query", "key", "value"} - set(parts)
        if missing:
            raise CheckpointError(f"encoder.layer.{layer}.attention: missing {sorted(missing)} {kind}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    for (layer, kind), parts in gate_up.items():
        if set(parts) != {"gate_proj", "up_proj"}:
            raise CheckpointError(f"encoder.layer.{layer}.mlp: gate_proj and up_proj {kind} must come together")
        out[f"blocks.{layer}.mlp.w12.{kind}"] = torch.cat([parts["gate_proj"], parts["up_proj"]], dim=0)
    return out


def official_to_hf(sd: StateDict) -> StateDict:
    """The inverse of `hf_to_official`: keys that `transformers` loads into Dinov2(WithRegisters)Model."""
    out: StateDict = {}
    simple = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "pos_embed": "embeddings.position_embeddings",
        "register_tokens": "embeddings.register_tokens",
    }
    for key, t in sd.items():
        if key in simple:
            out[simple[key]] = t
            continue
        if key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + key.split(".")[-1]] = t
            continue
        if key.startswith("norm."):
            out["layernorm." + key.split(".")[-1]] = t
            continue
        m = re.match(r"^blocks\.(\d+)\.(.+)$", key)
        if not m:
            raise CheckpointError(f"cannot map key {key!r} to Hugging Face names")
        i, rest = m.groups()
        p = f"encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            q, k, v = t.chunk(3, dim=0)
            for name, part in zip(("query", "key", "value"), (q, k, v), strict=True):
                out[f"{p}attention.attention.{name}.{kind}"] = part.contiguous()
            continue
        rest = (
            rest.replace("attn.proj.", "attention.output.dense.")
            .replace("ls1.gamma", "layer_scale1.lambda1")
            .replace("ls2.gamma", "layer_scale2.lambda1")
            .replace("mlp.w12.", "mlp.weights_in.")
            .replace("mlp.w3.", "mlp.weights_out.")
        )
        out[p + rest] = t
    return out


_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def unchunk_keys(sd: StateDict) -> StateDict:
    """FSDP training checkpoints group blocks into chunks: `blocks.{chunk}.{i}.` becomes `blocks.{i}.`."""
    if not any(_CHUNKED.match(k) for k in sd):
        return sd
    return {_CHUNKED.sub(r"blocks.\2.", k): v for k, v in sd.items()}


def strip_prefixes(sd: StateDict, prefixes: tuple[str, ...]) -> StateDict:
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def extract_backbone_state_dict(obj: dict[str, Any], origin: str = "checkpoint") -> tuple[StateDict, dict | None]:
    """Find the backbone weights inside any supported container; return them with official keys.

    Returns (state_dict, dinoscope_config_or_None).
    """
    if obj.get("format") == FORMAT_TAG:
        version = obj.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise CheckpointError(f"{origin}: its format version {version!r} is not a number")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{origin}: written by a newer Dinoscope (format {version}); please upgrade")
        for part in ("state_dict", "config"):
            if not isinstance(obj.get(part), dict):
                raise CheckpointError(f"{origin}: its {part!r} is a {type(obj.get(part)).__name__}, not a mapping")
        return dict(obj["state_dict"]), dict(obj["config"])
    sd: dict[str, Any] = obj
    config = None
    # Training checkpoints: official {"teacher": {"backbone.*", "dino_head.*", ...}} or Dinoscope's run format.
    for container in ("teacher", "model", "state_dict"):
        if isinstance(sd.get(container), dict):
            if obj.get("backbone_config") is not None:
                if not isinstance(obj["backbone_config"], dict):
                    raise CheckpointError(f"{origin}: its backbone_config is a "
                                          f"{type(obj['backbone_config']).__name__}, not a mapping")
                config = dict(obj["backbone_config"])
            sd = sd[container]
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{origin}: contains no tensors")
    tensors = strip_prefixes(tensors, ("module.",))
    if any(k.startswith("backbone.") for k in tensors):
        # A training checkpoint also holds heads; the backbone is what we want.
        tensors = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
    if any(k.startswith("dinov2.") for k in tensors):
        # Dinov2ForImageClassification: backbone under "dinov2.", plus a linear classifier we do not use.
        tensors = {k[len("dinov2.") :]: v for k, v in tensors.items() if k.startswith("dinov2.")}
    if is_hf_state_dict(tensors):
        tensors = hf_to_official(tensors)
    tensors = unchunk_keys(tensors)
    return tensors, config


# ------------------------------------------------------------------------------------ architecture
def infer_config(sd: StateDict, origin: str = "checkpoint") -> BackboneConfig:
    """Read depth, width, heads, patch, native size, FFN type, LayerScale and registers off the tensors."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in sd:
            raise CheckpointError(f"{origin}: not a DINOv2 backbone (missing {key!r})")
    if sd["cls_token"].dim() != 3 or sd["pos_embed"].dim() != 3 or sd["patch_embed.proj.weight"].dim() != 4:
        raise CheckpointError(f"{origin}: cls_token, pos_embed or patch_embed.proj.weight has the wrong number of "
                              "dimensions for a DINOv2 backbone")
    embed_dim = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    n_pos = sd["pos_embed"].shape[1] - 1
    if not 1 <= n_pos <= MAX_GRID * MAX_GRID:
        raise CheckpointError(f"{origin}: pos_embed has {n_pos} positions; a DINOv2 backbone has 1 to "
                              f"{MAX_GRID * MAX_GRID} ({MAX_GRID} x {MAX_GRID})")
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise CheckpointError(f"{origin}: pos_embed has {n_pos} positions, not a square grid")
    block_ids = {int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))}
    if not block_ids:
        raise CheckpointError(f"{origin}: has no transformer blocks")
    depth = max(block_ids) + 1
    if "blocks.0.mlp.w12.weight" in sd:
        ffn_layer, ffn_hidden = "swiglu", sd["blocks.0.mlp.w12.weight"].shape[0] // 2
    elif "blocks.0.mlp.fc1.weight" in sd:
        ffn_layer, ffn_hidden = "mlp", sd["blocks.0.mlp.fc1.weight"].shape[0]
    else:
        raise CheckpointError(f"{origin}: block 0 has neither mlp.fc1 nor mlp.w12 weights")
    registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    if embed_dim % 64:
        raise CheckpointError(f"{origin}: width {embed_dim} is not a multiple of the 64-wide DINOv2 heads")
    try:
        return _inferred(embed_dim, depth, patch, grid, ffn_layer, ffn_hidden, registers, sd)
    except ConfigValueError as e:
        raise CheckpointError(f"{origin}: {e}") from None


def _inferred(embed_dim: int, depth: int, patch: int, grid: int, ffn_layer: str, ffn_hidden: int, registers: int,
              sd: StateDict) -> BackboneConfig:
    return BackboneConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // 64,
        patch_size=patch,
        img_size=grid * patch,
        ffn_layer=ffn_layer,
        ffn_hidden=ffn_hidden,
        num_register_tokens=registers,
        init_values=1.0 if "blocks.0.ls1.gamma" in sd else None,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        proj_bias="blocks.0.attn.proj.bias" in sd,
        ffn_bias=("blocks.0.mlp.fc1.bias" in sd) or ("blocks.0.mlp.w12.bias" in sd),
        **family_interpolation(registers),
    )


# -------------------------------------------------------------------------------------------- writing
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temp file, fsync, then rename: a crash never leaves half a checkpoint."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_backbone(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Dinoscope's backbone format: official keys plus the full config, loadable with weights_only=True."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    obj = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "config": model.config.to_dict(), "state_dict": sd}
    return atomic_torch_save(obj, path)


def hf_config_dict(config: BackboneConfig) -> dict[str, Any]:
    """config.json for `transformers` (Dinov2Model, or Dinov2WithRegistersModel when there are registers)."""
    d: dict[str, Any] = {
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        # transformers types mlp_ratio as int; DINOv2's MLPs are 4x and SwiGLU derives its width from 4.
        "mlp_ratio": config.ffn_hidden // config.embed_dim if config.ffn_layer == "mlp" else 4,
        "patch_size": config.patch_size,
        "image_size": config.img_size,
        "num_channels": 3,
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "qkv_bias": config.qkv_bias,
        "hidden_act": "gelu",
        "use_swiglu_ffn": config.ffn_layer == "swiglu",
        "drop_path_rate": 0.0,
        "initializer_range": 0.02,
    }
    if config.num_register_tokens:
        d.update(model_type="dinov2_with_registers", architectures=["Dinov2WithRegistersModel"],
                 num_register_tokens=config.num_register_tokens)
    else:
        d.update(model_type="dinov2", architectures=["Dinov2Model"])
    return d


def save_hf(model: torch.nn.Module, folder: str | os.PathLike) -> Path:
    """Write a folder that `transformers.AutoModel.from_pretrained` opens (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = official_to_hf({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    tmp = folder / ".model.safetensors.tmp"
    save_file(sd, str(tmp))
    os.replace(tmp, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(hf_config_dict(model.config), indent=2))
    return folder
