"""`load_dinotxt`: dino.txt from the zoo or from a folder holding its three official files.

Every shape is read off the tensors (so a reduced model with the official key names loads too), every file is
read with `weights_only=True` and loaded strictly, and each error names the file at fault.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from engine.models import zoo
from engine.models.checkpoint import CheckpointError, read_tensor_file
from engine.models.dinotxt import (
    HEAD_DIM,
    DinoTxt,
    DinoTxtImageEncoder,
    TextConfig,
    TextTower,
    VisionHead,
    VisionHeadConfig,
    VisionTower,
)
from engine.models.download import ProgressFn

Source = str | os.PathLike
ROLES = ("backbone", "vision_head", "text_encoder")
_WHAT = {"backbone": "the DINOv2 ViT-L/14-reg backbone", "vision_head": "the dino.txt vision head",
         "text_encoder": "the dino.txt text encoder"}


def official_filenames() -> dict[str, str]:
    return zoo.text_entry(zoo.DINOTXT).filenames()


def is_dinotxt_source(source: Source) -> bool:
    """The zoo name (or torch.hub's), or a folder holding at least one of dino.txt's own two files."""
    if isinstance(source, str) and source in (zoo.DINOTXT, zoo.DINOTXT_HUB_NAME):
        return True
    path = Path(source).expanduser()
    names = official_filenames()
    return path.is_dir() and any((path / names[r]).is_file() for r in ("vision_head", "text_encoder"))


def resolve_files(source: Source, progress: ProgressFn | None = None, allow_download: bool = True,
                  roles: tuple[str, ...] = ROLES) -> tuple[dict[str, Path], str]:
    """(role -> file, origin) for the zoo name or a folder; a missing file is named in the error."""
    if isinstance(source, str) and source in (zoo.DINOTXT, zoo.DINOTXT_HUB_NAME):
        paths = zoo.text_model_paths(source)
        if any(paths[r] is None for r in ROLES):
            if not allow_download:
                missing = [zoo.text_model_url(source, r) for r in ROLES if paths[r] is None]
                raise CheckpointError(f"{zoo.DINOTXT} is not downloaded; run `python -m app index --model "
                                      f"{zoo.DINOTXT}` or save {', '.join(missing)} under "
                                      f"{zoo.data_home.models_dir()}")
            paths = zoo.download_text_model(source, progress=progress)
        return {r: paths[r] for r in roles}, zoo.DINOTXT
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{source}: no such folder, and not the zoo name {zoo.DINOTXT}")
    names = official_filenames()
    missing = [f"{names[r]} ({_WHAT[r]})" for r in ROLES if not (folder / names[r]).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: a dino.txt folder needs three files; missing {', '.join(missing)}")
    return {r: folder / names[r] for r in roles}, str(folder)


# ------------------------------------------------------------------------------------------ shapes
def _block_count(sd: dict, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    ids = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    return max(ids) + 1 if ids else 0


def _require(sd: dict, keys: tuple[str, ...], path: Path, role: str) -> None:
    for key in keys:
        if key not in sd:
            raise CheckpointError(f"{path}: not {_WHAT[role]} (it has no {key!r}; is it one of the other "
                                  f"dino.txt files, or from another model?)")


def head_config(sd: dict, path: Path) -> VisionHeadConfig:
    _require(sd, ("ln_final.weight", "block_list.0.norm1.weight", "block_list.0.mlp.w1.weight"), path,
             "vision_head")
    width = sd["ln_final.weight"].shape[0]
    proj = sd.get("linear_projection.weight")
    return VisionHeadConfig(width=width, blocks=_block_count(sd, "block_list."), heads=max(1, width // HEAD_DIM),
                            ffn_hidden=sd["block_list.0.mlp.w1.weight"].shape[0],
                            projection=None if proj is None else proj.shape[0])


def text_config(sd: dict, path: Path) -> TextConfig:
    _require(sd, ("backbone.token_embedding.weight", "backbone.positional_embedding",
                  "backbone.blocks.0.feed_forward.fc1.weight", "head.linear_projection.weight"), path,
             "text_encoder")
    vocab, width = sd["backbone.token_embedding.weight"].shape
    return TextConfig(vocab_size=vocab, context_length=sd["backbone.positional_embedding"].shape[0], width=width,
                      depth=_block_count(sd, "backbone.blocks."), heads=max(1, width // HEAD_DIM),
                      ffn_hidden=sd["backbone.blocks.0.feed_forward.fc1.weight"].shape[0],
                      embed_dim=sd["head.linear_projection.weight"].shape[0])


def _load_strict(module: torch.nn.Module, sd: dict, path: Path, role: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = [f"{what} {len(keys)} key(s): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"{path}: does not match {_WHAT[role]}: " + "; ".join(parts))
    for key, t in expected.items():
        if tuple(sd[key].shape) != tuple(t.shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(sd[key].shape)}, expected {tuple(t.shape)}")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    module.load_state_dict(sd, strict=True, assign=True)


def _load_vision(files: dict[str, Path]) -> VisionTower:
    from engine.models.vit_loader import load_vit

    backbone = load_vit(files["backbone"], allow_download=False)
    if not backbone.num_register_tokens:
        raise CheckpointError(f"{files['backbone']}: a backbone without registers; dino.txt's is the ViT-L/14 "
                              "with 4 registers (dinov2_vitl14_reg4_pretrain.pth)")
    sd = read_tensor_file(files["vision_head"])
    cfg = head_config(sd, files["vision_head"])
    if cfg.width != backbone.embed_dim:
        raise CheckpointError(f"{files['backbone']}: a backbone {backbone.embed_dim} wide, but the vision head "
                              f"{files['vision_head'].name} expects {cfg.width} (a file from another model?)")
    with torch.device("meta"):
        head = VisionHead(cfg)
    _load_strict(head, sd, files["vision_head"], "vision_head")
    return VisionTower(backbone, head.eval())


def _load_text(path: Path, image_dim: int) -> TextTower:
    sd = read_tensor_file(path)
    cfg = text_config(sd, path)
    if cfg.embed_dim != image_dim:
        raise CheckpointError(f"{path}: projects text to {cfg.embed_dim} dimensions but the vision head gives "
                              f"{image_dim} (a file from another model?)")
    with torch.device("meta"):
        tower = TextTower(cfg)
    _load_strict(tower, sd, path, "text_encoder")
    return tower.eval()


def load_dinotxt(source: Source, device: str | torch.device = "cpu", *, progress: ProgressFn | None = None,
                 allow_download: bool = True) -> DinoTxt:
    """The whole model (both towers), in eval mode on `device`; `source` is the zoo name or a folder."""
    files, origin = resolve_files(source, progress, allow_download)
    vision = _load_vision(files)
    text = _load_text(files["text_encoder"], 2 * vision.head.config.half_dim)
    model = DinoTxt(vision.backbone, vision.head, text)
    model.source = origin
    model.files = files  # where each part came from (the text side's OpenVINO cache is keyed by its file)
    return model.to(device).eval()


def load_dinotxt_image_encoder(source: Source, *, progress: ProgressFn | None = None,
                               allow_download: bool = True) -> DinoTxtImageEncoder:
    """Only the image side (what indexing needs), without reading the 2 GB text encoder.

    The zoo download still fetches all three files, so text search works afterwards.
    """
    files, origin = resolve_files(source, progress, allow_download)
    return DinoTxtImageEncoder(_load_vision(files), source=origin).eval()
