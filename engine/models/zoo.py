"""The official DINOv2 backbones: names, download URLs, and the local cache.

Files keep their official names, so a checkpoint fetched by hand (or already in torch.hub's cache) is found.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from engine import data_home
from engine.models.config import OFFICIAL_CONFIGS, BackboneConfig
from engine.models.download import DownloadResult, ProgressFn, download_file

DEFAULT_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"

# Parameter counts (verified, DINOV2_SPEC.md §9); fp32 files are ~4 bytes a parameter.
_PARAMS = {"vits14": 22_056_576, "vitb14": 86_580_480, "vitl14": 304_368_640, "vitg14": 1_136_480_768}


@dataclass(frozen=True)
class ZooEntry:
    name: str  # torch.hub name, e.g. dinov2_vits14_reg
    config: BackboneConfig
    filename: str  # e.g. dinov2_vits14_reg4_pretrain.pth
    folder: str  # e.g. dinov2_vits14
    params: int

    @property
    def approx_bytes(self) -> int:
        return 4 * self.params


def _entry(name: str, cfg: BackboneConfig) -> ZooEntry:
    arch = name.split("_")[1]  # vits14
    regs = cfg.num_register_tokens
    filename = f"dinov2_{arch}{f'_reg{regs}' if regs else ''}_pretrain.pth"
    return ZooEntry(name, cfg, filename, f"dinov2_{arch}", _PARAMS[arch] + 4 * cfg.embed_dim * (regs > 0))


ZOO: dict[str, ZooEntry] = {name: _entry(name, cfg) for name, cfg in OFFICIAL_CONFIGS.items()}


def base_url() -> str:
    """DINOSCOPE_ZOO_URL points at a mirror (or a test server) with the official folder layout."""
    return os.environ.get("DINOSCOPE_ZOO_URL", DEFAULT_BASE_URL).rstrip("/")


def entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; the zoo has: {', '.join(ZOO)}") from None


def url(name: str) -> str:
    e = entry(name)
    return f"{base_url()}/{e.folder}/{e.filename}"


def cache_path(name: str) -> Path:
    return data_home.models_dir() / entry(name).filename


def _torch_hub_path(name: str) -> Path:
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return torch_home / "hub" / "checkpoints" / entry(name).filename


def local_path(name: str) -> Path | None:
    """The checkpoint on disk, in Dinoscope's cache or torch.hub's, or None."""
    for p in (cache_path(name), _torch_hub_path(name)):
        if p.is_file() and p.stat().st_size > 0:
            return p
    return None


def download(name: str, progress: ProgressFn | None = None, cancel=None) -> Path:
    """Fetch one zoo checkpoint into the cache (resuming a partial file) and record its size and sha256."""
    dest = cache_path(name)
    result: DownloadResult = download_file(url(name), dest, progress=progress, cancel=cancel)
    meta = {"url": url(name), "size": result.size, "sha256": result.sha256}
    dest.with_name(dest.name + ".json").write_text(json.dumps(meta, indent=2))
    return result.path


def status(name: str) -> str:
    """'downloaded', 'partial' (an interrupted download can resume) or 'not downloaded'."""
    if local_path(name):
        return "downloaded"
    part = cache_path(name).with_name(cache_path(name).name + ".part")
    return "partial" if part.is_file() else "not downloaded"
