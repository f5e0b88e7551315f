"""The official DINOv2 backbones: names, download URLs, and the local cache.

Files keep their official names, so a checkpoint fetched by hand (or already in torch.hub's cache) is found.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from engine import data_home
from engine.models.config import OFFICIAL_CONFIGS, BackboneConfig
from engine.models.download import DownloadResult, ProgressFn, download_file
from engine.progress import Progress

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


# ------------------------------------------------------------------------------------------- dino.txt
# dino.txt (Apache-2.0): the frozen ViT-L/14-reg backbone above plus two more files in the same folder.
DINOTXT = "dinov2_vitl14_reg4_dinotxt"
DINOTXT_HUB_NAME = "dinov2_vitl14_reg4_dinotxt_tet1280d20h24l"  # torch.hub's name, accepted as an alias


@dataclass(frozen=True)
class TextModelEntry:
    name: str
    backbone: str  # zoo name of the frozen backbone
    folder: str
    vision_head: str
    text_encoder: str
    head_params: int  # the vision head's parameters
    text_params: int  # the text encoder's

    @property
    def params(self) -> int:
        """Backbone + vision head + text encoder (tests/test_dinotxt_model.py checks the count)."""
        return ZOO[self.backbone].params + self.head_params + self.text_params

    @property
    def approx_bytes(self) -> int:
        return 4 * self.params

    def role_bytes(self) -> dict[str, int]:
        """role -> approximate size of its official file (float32 weights)."""
        return {"backbone": ZOO[self.backbone].approx_bytes, "vision_head": 4 * self.head_params,
                "text_encoder": 4 * self.text_params}

    def filenames(self) -> dict[str, str]:
        """role -> official file name; the roles are backbone, vision_head, text_encoder."""
        return {"backbone": entry(self.backbone).filename, "vision_head": self.vision_head,
                "text_encoder": self.text_encoder}


TEXT_MODELS: dict[str, TextModelEntry] = {
    DINOTXT: TextModelEntry(
        name=DINOTXT,
        backbone="dinov2_vitl14_reg",
        folder="dinov2_vitl14",
        vision_head=f"{DINOTXT_HUB_NAME}_vision_head.pth",
        text_encoder=f"{DINOTXT_HUB_NAME}_text_encoder.pth",
        head_params=25_326_336,
        text_params=538_131_200,
    ),
}


def text_entry(name: str) -> TextModelEntry:
    key = DINOTXT if name == DINOTXT_HUB_NAME else name
    try:
        return TEXT_MODELS[key]
    except KeyError:
        raise KeyError(f"unknown text model {name!r}; the zoo has: {', '.join(TEXT_MODELS)}") from None


def text_model_url(name: str, role: str) -> str:
    e = text_entry(name)
    if role == "backbone":
        return url(e.backbone)
    return f"{base_url()}/{e.folder}/{e.filenames()[role]}"


def _local_file(filename: str) -> Path | None:
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    for p in (data_home.models_dir() / filename, torch_home / "hub" / "checkpoints" / filename):
        if p.is_file() and p.stat().st_size > 0:
            return p
    return None


def text_model_paths(name: str) -> dict[str, Path | None]:
    """role -> the file on disk (Dinoscope's cache or torch.hub's), or None where it is not downloaded."""
    e = text_entry(name)
    return {role: (local_path(e.backbone) if role == "backbone" else _local_file(fn))
            for role, fn in e.filenames().items()}


_TEXT_DOWNLOAD = threading.Lock()  # the window may start it twice (Models dialog, text indexing): one writer


def download_text_model(name: str, progress: ProgressFn | None = None, cancel=None) -> dict[str, Path]:
    """Fetch the files not downloaded yet (each resumable); progress counts bytes over all of them. A second
    caller waits for the first and then finds the files on disk."""
    with _TEXT_DOWNLOAD:
        return _download_text_model(name, progress, cancel)


def _download_text_model(name: str, progress: ProgressFn | None, cancel) -> dict[str, Path]:
    e = text_entry(name)
    paths = text_model_paths(name)
    done_before = 0
    for role, path in list(paths.items()):
        if path is not None:
            continue
        if role == "backbone":
            step = (lambda p, base=done_before: progress(replace(p, done=base + p.done, total=None))) if progress \
                else None
            paths[role] = download(e.backbone, progress=step, cancel=cancel)
        else:
            dest = data_home.models_dir() / e.filenames()[role]
            source = text_model_url(name, role)
            step = (lambda p, base=done_before: progress(replace(p, done=base + p.done, total=None))) if progress \
                else None
            result = download_file(source, dest, progress=step, cancel=cancel)
            meta = {"url": source, "size": result.size, "sha256": result.sha256}
            dest.with_name(dest.name + ".json").write_text(json.dumps(meta, indent=2))
            paths[role] = result.path
        done_before += paths[role].stat().st_size
    if progress is not None:
        progress(Progress(done_before, done_before, phase="download"))
    return {role: p for role, p in paths.items() if p is not None}


def text_download_bytes(name: str) -> int:
    """About how many bytes are still to download: the files of the three not on disk yet."""
    sizes = text_entry(name).role_bytes()
    return sum(sizes[role] for role, path in text_model_paths(name).items() if path is None)


def text_model_status(name: str) -> str:
    """'downloaded' (all three files), 'partial' (some files, or an interrupted download that can resume) or
    'not downloaded'."""
    paths = text_model_paths(name)
    if all(p is not None for p in paths.values()):
        return "downloaded"
    e = text_entry(name)
    parts = [data_home.models_dir() / (fn + ".part") for fn in e.filenames().values()]
    return "partial" if any(paths.values()) or any(p.is_file() for p in parts) else "not downloaded"
