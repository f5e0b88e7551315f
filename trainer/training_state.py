"""What a checkpoint holds besides the weights, and how a run gets back to it bit for bit.

A checkpoint holds student, teacher, heads, centres, AdamW state, the iteration (the sampler and schedule position),
every RNG state (python, numpy, torch, CUDA; per rank under DDP) and the config. With the data stream a pure
function of (seed, rank, iteration) (trainer/data.py), resuming on the CPU gives the same per-step losses as an
uninterrupted run, with any `data.num_workers`, as long as the intra-op thread count is the same (matrix products
may sum in another order with other thread counts; see `trainer.distributed.configure_cpu_threads`, unless
OMP_NUM_THREADS is set). On a GPU, cuDNN/cuBLAS kernel choices make it close but not bitwise.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainer.config import TrainConfig
from trainer.distributed import DistInfo
from trainer.run_dir import RunError

__all__ = ["build_meta", "checkpoint_state", "load_model_state", "rng_state", "seed_everything", "set_rng_state"]


def rng_state(device: torch.device) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_meta(cfg: TrainConfig, device: torch.device, ckpt: dict[str, Any] | None, allow_download: bool,
                n_images: int):
    """SSLMetaArch (EMA teacher) or DistillMetaArch (frozen teacher), fresh or shaped like a checkpoint."""
    from trainer.meta_arch import SSLMetaArch, autocast_dtype

    if cfg.teacher.distill_from:
        from trainer.distill import DistillMetaArch

        return DistillMetaArch.build(cfg, device, checkpoint=ckpt, allow_download=allow_download,
                                     n_images=n_images)
    if ckpt is None:
        return SSLMetaArch.from_config(cfg, device=device, allow_download=allow_download)
    from engine.models import BackboneConfig, DinoVisionTransformer

    arch = DinoVisionTransformer(BackboneConfig.from_dict(ckpt["backbone_config"]))
    meta = SSLMetaArch(cfg, init_backbone=arch).to(device)
    meta.autocast_dtype = autocast_dtype(cfg.precision, device)
    return meta


def load_model_state(meta: torch.nn.Module, ckpt: dict[str, Any]) -> None:
    meta.student.load_state_dict(ckpt["student"])
    meta.teacher.load_state_dict(ckpt["teacher"])
    buffers = dict(meta.named_buffers(recurse=False))
    for name, value in ckpt.get("buffers", {}).items():
        if name not in buffers:
            raise RunError(f"the checkpoint has a buffer {name!r} this model does not")
        buffers[name].copy_(value)


def checkpoint_state(meta: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, cfg: TrainConfig,
                     step: int, phase: str, ddp: DistInfo, device: torch.device, n_images: int) -> dict[str, Any]:
    """Everything a resume needs; a collective under DDP (every rank's RNG state is gathered)."""
    rng = rng_state(device)
    if ddp.active:
        gathered: list[Any] = [None] * ddp.world_size
        dist.all_gather_object(gathered, rng)
        rngs = gathered
    else:
        rngs = [rng]
    return {
        "step": step,
        "phase": phase,
        "world_size": ddp.world_size,
        "config": cfg.to_dict(),
        "backbone_config": meta.teacher["backbone"].config.to_dict(),
        "student": meta.student.state_dict(),
        "teacher": meta.teacher.state_dict(),
        "buffers": {k: v for k, v in meta.named_buffers(recurse=False)},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rngs,
        "data": {"position": step, "seed": cfg.seed, "dataset_size": n_images},
        "kind": getattr(meta, "kind", "ssl"),
    }
