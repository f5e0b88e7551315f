"""The training loop: iterations, checkpoints with a bit-for-bit resume, the NaN guard, signals, DDP, high-res.

One iteration (meta_arch.py's docstring), with the schedules of trainer/schedules.py indexed by iteration:
lr/wd/last-layer lr applied to the AdamW groups, forward and backward (bf16 autocast on CUDA), per-submodule
gradient clipping, the optimizer step, the EMA teacher update.

Determinism. Batch `it` of rank `r` is a pure function of (seed, r, it): `IterationBatches` picks its images from
InfiniteSampler's permutation stream and seeds the crops and iBOT masks from SeedSequence(seed, r, it). So neither
the number of DataLoader workers, nor which worker builds a batch, nor a restart changes the data; and the global
RNGs of the training process are touched only by the model (stochastic depth). A checkpoint holds everything else:
student, teacher, heads, centres, AdamW state, the iteration (the sampler and schedule position), every RNG state
(python, numpy, torch, CUDA; per rank under DDP) and the config. Resuming on the CPU therefore gives the same
per-step losses as an uninterrupted run, with any `data.num_workers`, as long as the intra-op thread count is the
same (matrix products may sum in another order with other thread counts; on the CPU it follows the worker count,
see `configure_cpu_threads`, unless OMP_NUM_THREADS is set). On a GPU, cuDNN/cuBLAS kernel choices make it close
but not bitwise.

Stopping. SIGINT/SIGTERM (or `stop_event`) set a flag; the current step finishes, a checkpoint is written and
`train` returns status "interrupted"; a second signal aborts at once (the last checkpoint stays). A non-finite
loss or gradient stops the run before the optimizer step, with a message naming the step and the losses. The
newest checkpoint is then the last good state: checkpoints are written only with finite weights, and one written
from the very weights that gave the non-finite loss (finite but ruined) is set aside as step_N.nan.pt.

High resolution. With `high_res.enabled`, `cfg.for_high_res()` continues from the current weights and optimizer
for its own iterations (bigger crops, every schedule compressed, a lower lr; paper B.2). The position embedding
keeps its size and is interpolated to the larger grid at each forward pass, so parameters and AdamW state carry
over unchanged.

Several GPUs: under `torchrun` (RANK/WORLD_SIZE/LOCAL_RANK set) the process group is initialised (NCCL on CUDA,
gloo on CPU), the SSLMetaArch is wrapped in DistributedDataParallel (only student parameters require grad, so
only they are reduced), every rank reads its own shard of the data stream, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.config import ConfigError, TrainConfig
from trainer.data import ImageFolderDataset, MultiCropCollator, collate_multicrop, make_dataset
from trainer.run_dir import Run, RunError

__all__ = [
    "LOSS_NAMES",
    "IterationBatches",
    "TrainSummary",
    "configure_cpu_threads",
    "make_iteration_loader",
    "train",
]

# SSLMetaArch's loss keys -> the short names written to events.jsonl.
LOSS_NAMES = {
    "total_loss": "total",
    "dino_local_crops_loss": "dino_local",
    "dino_global_crops_loss": "dino_global",
    "koleo_loss": "koleo",
    "ibot_loss": "ibot",
}
TRAIN_STREAM = 0  # SeedSequence stream of the training batches; distillation fits its prototypes on stream 1

LogFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainSummary:
    """How `train` ended. status: done | stopped (reached `stop_at`) | interrupted (signal/stop_event) | nan."""

    status: str
    step: int
    total_steps: int
    run_dir: str
    checkpoint: str | None
    message: str
    losses: dict[str, float] = field(default_factory=dict)
    eval: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ data
class IterationBatches(Dataset):
    """Map-style dataset whose item `it` is the whole collated batch of iteration `it` for one rank.

    Images: rank r's k-th sample is position r + k·world of the stream that InfiniteSampler draws (pass p is
    randperm(size) seeded with seed + p), so ranks see disjoint images, as with `trainer.data.make_loader`.
    Randomness: crops from a torch seed and masks from a `random.Random`, both from SeedSequence(seed, rank, it,
    stream); the caller's global torch RNG is saved and restored around the crops.
    """

    def __init__(self, images: ImageFolderDataset, cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                 stream: int = TRAIN_STREAM) -> None:
        self.images = images
        self.batch_size = cfg.optim.batch_size_per_device
        self.rank, self.world_size = rank, world_size
        self.seed = cfg.seed
        self.stream = stream
        self.collator = MultiCropCollator(cfg)
        self._perms: dict[int, torch.Tensor] = {}  # the last two passes (a batch may straddle two)

    def _perm(self, p: int) -> torch.Tensor:
        perm = self._perms.get(p)
        if perm is None:
            g = torch.Generator().manual_seed(self.seed + p)
            perm = torch.randperm(len(self.images), generator=g)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[p] = perm
        return perm

    def indices(self, it: int) -> list[int]:
        size = len(self.images)
        out = []
        for k in range(it * self.batch_size, (it + 1) * self.batch_size):
            p, offset = divmod(self.rank + k * self.world_size, size)
            out.append(int(self._perm(p)[offset]))
        return out

    def __getitem__(self, it: int) -> dict[str, Any]:
        if it < 0:
            raise IndexError("iterations are numbered from 0")
        torch_seed, py_seed = np.random.SeedSequence((self.seed, self.rank, it, self.stream)).generate_state(
            2, dtype=np.uint64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch_seed))
            samples = [self.images[i] for i in self.indices(it)]
        rng = random.Random(int(py_seed))
        c = self.collator
        c.generator.rng = rng
        batch = collate_multicrop(samples, c.generator, c.ratio, c.probability, c.dtype, rng=rng)
        batch["iteration"] = it
        return batch


class _Count(Sampler[int]):
    """start, start+1, ... forever."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _worker_init(_worker_id: int) -> None:
    # One thread per worker (they decode and augment one sample at a time), and Ctrl-C goes to the main process
    # alone: it finishes the step and saves, while the workers keep feeding it.
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def make_iteration_loader(batches: IterationBatches, start: int, num_workers: int,
                          pin_memory: bool = False) -> DataLoader:
    """DataLoader over IterationBatches from iteration `start`; it draws no number from the global RNG."""
    return DataLoader(
        batches,
        batch_size=None,
        sampler=_Count(start),
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        prefetch_factor=2 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(0),  # DataLoader's base seed; unused by IterationBatches
    )


# ------------------------------------------------------------------------------------------------ process
def configure_cpu_threads(num_workers: int, world_size: int = 1) -> int:
    """Intra-op threads for CPU training: the cores the data workers (and other ranks) leave, less one for the
    rest of the machine (the GUI, the desktop) when there are more than two. OMP_NUM_THREADS, when set, wins.

    More compute threads than free cores is far worse than fewer: OpenMP threads spin at every barrier while one
    of them waits for a core. On the 2-core development machine (tiny-cpu, batch 16, bench/train_step.py and the
    CLI): idle, 2 threads ran 27 img/s against 18 with 1 thread (one data worker either way); busy with other
    jobs, 2 threads took 4-5 s a step against 0.9-1.4 s with 1. One thread per spare core is the safe choice.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    per_rank = max(1, cores // max(1, world_size))
    n = max(1, per_rank - num_workers - (1 if per_rank > 2 else 0))
    torch.set_num_threads(n)
    return n


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _setup_distributed(device_name: str) -> _Dist:
    """Join the process group torchrun describes in the environment (a single process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and (device_name == "auto" or device_name.startswith("cuda"))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    return _Dist(rank, dist.get_world_size(), local, owns)


class _StopFlag:
    """SIGINT/SIGTERM (main thread only) and an optional threading.Event, read once per step."""

    def __init__(self, event: threading.Event | None) -> None:
        self.event = event
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # the second signal: stop now, the last checkpoint stays
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None or (self.event is not None and self.event.is_set())

    @property
    def reason(self) -> str:
        if self.signum is not None:
            return signal.Signals(self.signum).name
        return "stop requested"


def _rng_state(device: torch.device) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------ model
def _build_meta(cfg: TrainConfig, device: torch.device, ckpt: dict[str, Any] | None, allow_download: bool,
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


def _load_model_state(meta: torch.nn.Module, ckpt: dict[str, Any]) -> None:
    meta.student.load_state_dict(ckpt["student"])
    meta.teacher.load_state_dict(ckpt["teacher"])
    buffers = dict(meta.named_buffers(recurse=False))
    for name, value in ckpt.get("buffers", {}).items():
        if name not in buffers:
            raise RunError(f"the checkpoint has a buffer {name!r} this model does not")
        buffers[name].copy_(value)


def _phases(cfg: TrainConfig) -> list[tuple[str, TrainConfig, int, int]]:
    """(name, config, first iteration, end iteration) of the main phase and the optional high-res phase."""
    main_end = cfg.optim.total_iters
    out = [("main", cfg, 0, main_end)]
    if cfg.high_res.enabled:
        hr = cfg.for_high_res()
        out.append(("high_res", hr, main_end, main_end + hr.optim.total_iters))
    return out


# ------------------------------------------------------------------------------------------------ training
class _Trainer:
    def __init__(self, cfg: TrainConfig, run: Run, ckpt: dict[str, Any] | None, images: ImageFolderDataset,
                 stop: _StopFlag, log: LogFn | None, log_every: int, checkpoint_every: int | None,
                 stop_at: int | None, eval_data: str | os.PathLike | None, allow_download: bool,
                 ddp: _Dist) -> None:
        self.cfg, self.run, self.ckpt, self.stop, self.log_fn = cfg, run, ckpt, stop, log
        self.resume = ckpt is not None
        self.images = images
        self.log_every = max(1, log_every)
        self.checkpoint_every = checkpoint_every if checkpoint_every else cfg.optim.iters_per_epoch
        self.stop_at = stop_at
        self.eval_data = eval_data
        self.allow_download = allow_download
        self.ddp = ddp
        self.phases = _phases(cfg)
        self.total = self.phases[-1][3]
        self.skipped_files: set[str] = set()
        self.started = False
        self.pending: list[dict[str, Any]] = []

    # ---------------------------------------------------------------------------------- logging
    def emit(self, event: dict[str, Any]) -> None:
        if not self.ddp.main:
            return
        record = self.run.events.write(event)
        if self.log_fn is not None:
            self.log_fn(record)

    # ---------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, ddp = self.cfg, self.ddp
        from engine.device import pick_device

        if ddp.active and torch.cuda.is_available() and (cfg.device == "auto" or cfg.device.startswith("cuda")):
            self.device = torch.device("cuda", ddp.local_rank)
        else:
            self.device = pick_device(cfg.device)
        self.threads = None
        if self.device.type == "cpu":
            self.threads = configure_cpu_threads(cfg.data.num_workers, ddp.world_size)
        ckpt, self.ckpt = self.ckpt, None  # released once loaded: a large model's state is big
        if ckpt is not None and ckpt.get("world_size", 1) != ddp.world_size:
            self.note(f"the checkpoint was written by {ckpt.get('world_size', 1)} processes and this run has "
                      f"{ddp.world_size}: the data stream and the lr scaling change from here on")
        _seed_everything(cfg.seed)  # the same initial weights on every rank
        self.meta = _build_meta(cfg, self.device, ckpt, self.allow_download, len(self.images)).train()
        from trainer.param_groups import build_optimizer

        self.optimizer = build_optimizer(self.meta.student, cfg.optim)
        self.scaler = None
        if getattr(self.meta, "autocast_dtype", None) == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.step = 0
        if ckpt is not None:
            _load_model_state(self.meta, ckpt)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            self.step = int(ckpt["step"])
            rng = ckpt.get("rng") or []
            if len(rng) == ddp.world_size:
                _set_rng_state(rng[ddp.rank], self.device)
            else:
                _seed_everything(cfg.seed + ddp.rank + self.step)
            if ckpt.get("config") != cfg.to_dict():
                self.note(f"{Run.CONFIG} differs from the config stored in the checkpoint; continuing with "
                          f"{Run.CONFIG}")
        else:
            _seed_everything(cfg.seed + ddp.rank)  # stochastic depth differs per rank
        self.model: torch.nn.Module = self.meta
        if ddp.active:
            import inspect

            from torch.nn.parallel import DistributedDataParallel

            # The centres are all-reduced by the losses already: no buffer broadcast before every forward.
            params = inspect.signature(DistributedDataParallel).parameters
            no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {
                "broadcast_buffers": False}
            self.model = DistributedDataParallel(
                self.meta,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=not getattr(self.meta, "uses_every_parameter", self.meta.do_ibot),
                **no_sync,
            )

    def note(self, message: str) -> None:
        """An event for the log; held back until the run folder is prepared when the loop has not started."""
        event = {"event": "note", "step": getattr(self, "step", 0), "message": message}
        if self.started:
            self.emit(event)
        else:
            self.pending.append(event)

    # ---------------------------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        meta = self.meta
        rng = _rng_state(self.device)
        if self.ddp.active:
            gathered: list[Any] = [None] * self.ddp.world_size
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        return {
            "step": self.step,
            "phase": self._phase_name(self.step),
            "world_size": self.ddp.world_size,
            "config": self.cfg.to_dict(),
            "backbone_config": meta.teacher["backbone"].config.to_dict(),
            "student": meta.student.state_dict(),
            "teacher": meta.teacher.state_dict(),
            "buffers": {k: v for k, v in meta.named_buffers(recurse=False)},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rngs,
            "data": {"position": self.step, "seed": self.cfg.seed, "dataset_size": len(self.images)},
            "kind": getattr(meta, "kind", "ssl"),
        }

    def _weights_finite(self) -> bool:
        params = [p for p in self.meta.student.parameters()] + [p for p in self.meta.teacher.parameters()]
        ok = torch.stack([torch.isfinite(p).all() for p in params]).all()
        return bool(ok)

    def save_checkpoint(self) -> Path | None:
        state = self._state()  # a collective under DDP: every rank takes part
        path = None
        if self.ddp.main:
            path = self.run.save_checkpoint(state, self.step, teacher_backbone=self.meta.teacher["backbone"])
            self.last_checkpoint = path
            self.emit({"event": "checkpoint", "step": self.step, "path": str(path)})
        if self.ddp.active:
            dist.barrier()
        return path

    def _phase_name(self, step: int) -> str:
        for name, _cfg, start, end in self.phases:
            if start <= step < end:
                return name
        return self.phases[-1][0]

    # ---------------------------------------------------------------------------------- the loop
    def fit(self) -> TrainSummary:
        self.last_checkpoint = self.run.latest_checkpoint() if self.resume else None
        self.last_losses: dict[str, float] = {}
        self.emit({
            "event": "resume" if self.resume else "start",
            "step": self.step,
            "total_steps": self.total,
            "preset": self.cfg.preset,
            "device": str(self.device),
            "precision": str(getattr(self.meta, "autocast_dtype", None) or "fp32").replace("torch.", ""),
            "world_size": self.ddp.world_size,
            "threads": self.threads,
            "workers": self.cfg.data.num_workers,
            "params": {k: sum(p.numel() for p in m.parameters() if p.requires_grad)
                       for k, m in self.meta.student.items()},
        })
        self.started = True
        for event in self.pending:
            self.emit(event)
        self.pending.clear()
        for name, phase_cfg, first, end in self.phases:
            if self.step >= end:
                continue
            result = self._run_phase(name, phase_cfg, first, end)
            if result is not None:
                return result
        evaluation = self.evaluate() if self.eval_data else None
        msg = f"finished {self.total} steps"
        self.emit({"event": "end", "status": "done", "step": self.step, "message": msg})
        return self.summary("done", msg, evaluation)

    def summary(self, status: str, message: str, evaluation: dict[str, Any] | None = None) -> TrainSummary:
        return TrainSummary(status, self.step, self.total, str(self.run.root),
                            str(self.last_checkpoint) if self.last_checkpoint else None, message,
                            dict(self.last_losses), evaluation)

    def _run_phase(self, name: str, cfg: TrainConfig, first: int, end: int) -> TrainSummary | None:
        from trainer.param_groups import apply_optim_schedule
        from trainer.schedules import build_schedules

        ddp = self.ddp
        if cfg is not self.cfg:  # the high-res phase crops (and decodes) at other sizes
            self.images = make_dataset(cfg)
        self.meta.cfg = cfg
        schedules = build_schedules(cfg, ddp.world_size)
        if getattr(self.meta, "needs_fit", False):
            # every rank fits on rank 0's stream (and rank 0's prototypes are broadcast anyway)
            fit_loader = make_iteration_loader(IterationBatches(self.images, cfg, 0, 1, stream=TRAIN_STREAM + 1),
                                               0, cfg.data.num_workers)
            self.meta.fit_prototypes(iter(fit_loader), log=lambda m: self.note(m))
            del fit_loader
            if self._stop_requested_anywhere():  # a collective under DDP: every rank asks
                return self._interrupt()
        batches = IterationBatches(self.images, cfg, ddp.rank, ddp.world_size)
        loader = make_iteration_loader(batches, self.step, cfg.data.num_workers,
                                       pin_memory=self.device.type == "cuda")
        data = iter(loader)
        per_step_images = cfg.optim.batch_size_per_device * ddp.world_size
        window_start, window_steps = time.perf_counter(), 0
        try:
            while self.step < end:
                batch = next(data)
                if batch["failed"]:
                    self._report_skipped(batch["failed"])
                s = schedules.at(self.step - first)
                apply_optim_schedule(self.optimizer, s["lr"], s["wd"], s["last_layer_lr"])
                self.optimizer.zero_grad(set_to_none=True)
                losses = self.model(batch, teacher_temp=s["teacher_temp"])
                total = losses["total_loss"]
                (self.scaler.scale(total) if self.scaler is not None else total).backward()
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                norms = self.meta.clip_gradients(self.cfg.optim.clip_grad)
                values = torch.stack([losses[k].detach().float() for k in LOSS_NAMES])
                finite = bool(torch.isfinite(values).all())
                if self.scaler is None:  # fp16 overflows are the scaler's business, not a failure
                    finite = finite and all(math.isfinite(v) for v in norms.values())
                flags = torch.tensor([0.0 if finite else 1.0, 1.0 if self.stop.requested else 0.0],
                                     device=self.device)
                if ddp.active:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                if flags[0] > 0:
                    return self._nan_stop(self.step + 1, values, norms)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.meta.update_teacher(s["momentum"])
                self.step += 1
                window_steps += 1
                if self.step % self.log_every == 0 or self.step == end or flags[1] > 0:
                    now = time.perf_counter()
                    self._log_step(name, cfg, s, values, norms, window_steps, now - window_start,
                                   per_step_images)
                    window_start, window_steps = time.perf_counter(), 0
                if flags[1] > 0:
                    return self._interrupt()
                if self.stop_at is not None and self.step >= self.stop_at and self.step < self.total:
                    if not self._checkpoint_if_finite():
                        return self._nan_stop(self.step, values, norms, weights=True)
                    msg = f"stopped at step {self.step} as asked; --resume continues"
                    self.emit({"event": "end", "status": "stopped", "step": self.step, "message": msg})
                    return self.summary("stopped", msg)
                if self.step % self.checkpoint_every == 0 and self.step < self.total:
                    if not self._checkpoint_if_finite():
                        return self._nan_stop(self.step, values, norms, weights=True)
                    window_start = time.perf_counter()  # the save is not a training step's time
        finally:
            del data
        if self.step == self.total and not self._checkpoint_if_finite():
            return self._nan_stop(self.step, values, norms, weights=True)
        return None

    def _stop_requested_anywhere(self) -> bool:
        if not self.ddp.active:
            return self.stop.requested
        flag = torch.tensor([1.0 if self.stop.requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag[0] > 0)

    def _checkpoint_if_finite(self) -> bool:
        """Save unless the weights hold a NaN/inf; False then, and the previous checkpoint stays the newest."""
        ok = torch.tensor([1.0 if self._weights_finite() else 0.0], device=self.device)
        if self.ddp.active:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok[0] < 1:
            return False
        self.save_checkpoint()
        return True

    def _interrupt(self) -> TrainSummary:
        if not self._checkpoint_if_finite():
            return self._nan_stop(self.step, None, {}, weights=True)
        msg = (f"interrupted ({self.stop.reason}) after step {self.step} of {self.total}; checkpoint saved, "
               f"--resume continues")
        self.emit({"event": "end", "status": "interrupted", "step": self.step, "message": msg})
        return self.summary("interrupted", msg)

    def _nan_stop(self, step: int, values: torch.Tensor | None, norms: dict[str, float],
                  weights: bool = False) -> TrainSummary:
        parts = []
        if values is not None:
            parts = [f"{short}={v:.6g}" for short, v in zip(LOSS_NAMES.values(), values.tolist(), strict=True)]
        bad_norms = [f"{k}={v:.3g}" for k, v in norms.items() if not math.isfinite(v)]
        what = "the weights are no longer finite" if weights else "the loss is not finite"
        aside = None
        if not weights and self.ddp.main and self.last_checkpoint is not None:
            # A checkpoint of the weights that just gave this loss is finite but no good: set it aside.
            ckpts = self.run.checkpoints()
            if ckpts and ckpts[-1][0] == step - 1:
                aside = self.run.set_aside(step - 1)
                self.last_checkpoint = self.run.latest_checkpoint()
        last = self.last_checkpoint
        keep = (f"the last good checkpoint is {last}" if last else "no good checkpoint had been written")
        if aside is not None:
            keep += f" ({aside.name}, written from the weights that gave this loss, was set aside)"
        msg = (f"training stopped at step {step}: {what} ({', '.join(parts) or 'no losses'}"
               f"{'; gradient norms ' + ', '.join(bad_norms) if bad_norms else ''}); {keep}. "
               f"Lower optim.base_lr or raise optim.warmup_epochs, then start again or resume.")
        if values is not None:
            self.last_losses = dict(zip(LOSS_NAMES.values(), values.tolist(), strict=True))
        self.emit({"event": "end", "status": "nan", "step": step, "message": msg,
                   "losses": dict(self.last_losses)})
        return self.summary("nan", msg)

    def _log_step(self, phase: str, cfg: TrainConfig, s: dict[str, float], values: torch.Tensor,
                  norms: dict[str, float], steps: int, seconds: float, per_step_images: int) -> None:
        if self.ddp.active:  # the mean over ranks
            values = values.clone()
            dist.all_reduce(values)
            values /= self.ddp.world_size
        self.last_losses = dict(zip(LOSS_NAMES.values(), values.tolist(), strict=True))
        step_time = seconds / max(1, steps)
        mem = None
        if self.device.type == "cuda":
            mem = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        self.emit({
            "event": "train",
            "step": self.step,
            "epoch": (self.step - 1) // self.cfg.optim.iters_per_epoch,
            "phase": phase,
            "losses": dict(self.last_losses),
            "lr": s["lr"],
            "wd": s["wd"],
            "momentum": s["momentum"],
            "teacher_temp": s["teacher_temp"],
            "last_layer_lr": s["last_layer_lr"],
            "grad_norm": norms,
            "images_per_s": per_step_images / step_time if step_time > 0 else None,
            "step_time": step_time,
            "gpu_mem_gb": mem,
            "total_steps": self.total,
        })

    def _report_skipped(self, failed: list[tuple[str, str]]) -> None:
        for path, message in failed:
            if path not in self.skipped_files:
                self.skipped_files.add(path)
                self.emit({"event": "skipped", "step": self.step, "path": path, "message": message})

    # ---------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, Any] | None:
        result = None
        if self.ddp.main:
            from trainer.evaluate import evaluate_backbone

            backbone = copy.deepcopy(self.meta.teacher["backbone"]).eval()
            dtype = getattr(self.meta, "autocast_dtype", None)  # features at the training precision
            precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
            result = evaluate_backbone(backbone, self.eval_data, device=self.device, precision=precision)
            self.emit({"event": "eval", "step": self.step, **result})
        if self.ddp.active:
            dist.barrier()
        return result


def train(
    cfg: TrainConfig | None,
    run_dir: str | os.PathLike,
    resume: bool = False,
    init: str | os.PathLike | None = None,
    stop_event: threading.Event | None = None,
    log: LogFn | None = None,
    *,
    eval_data: str | os.PathLike | None = None,
    log_every: int = 10,
    checkpoint_every: int | None = None,
    keep: int = 3,
    stop_at: int | None = None,
    allow_download: bool = True,
) -> TrainSummary:
    """Train (or continue) the run in `run_dir`; returns how it ended.

    cfg: the config of a new run; with `resume=True` it may be None (the run's config.yaml is used) and
    otherwise must equal it. init: a backbone source (zoo name or checkpoint) both networks start from; it is
    recorded as `model.pretrained`. log: called with every event written to events.jsonl (rank 0).
    checkpoint_every: iterations between checkpoints (default one epoch); the newest `keep` are kept.
    stop_at: stop with a checkpoint once this many steps are done (status "stopped"; resume continues).
    eval_data: a labelled folder (one sub-folder per class) evaluated by k-NN and a linear probe at the end.

    Raises ConfigError / RunError / FileNotFoundError / ValueError for a bad config, run folder or data, before
    any training step.
    """
    run = Run(run_dir, keep=keep)
    ddp = _setup_distributed(cfg.device if cfg is not None else "auto")
    try:
        if resume:
            saved = run.load_config()
            if cfg is not None and cfg.to_dict() != saved.to_dict():
                raise ConfigError(
                    f"{run.root}: --resume continues with the run's saved {Run.CONFIG}; the given config differs "
                    "(edit that file to change settings of the run)"
                )
            cfg = saved
            if run.latest_checkpoint() is None:
                raise RunError(f"{run.root}: no checkpoint to resume from (checkpoints/ is empty)")
        else:
            if cfg is None:
                raise ConfigError("a new run needs a config")
            if run.has_run():
                raise RunError(f"{run.root} already holds a run; resume it or choose another folder")
            cfg = copy.deepcopy(cfg)
            if init is not None:
                cfg.model.pretrained = os.fspath(init)
        cfg.validate()
        if not cfg.data.source:
            raise ConfigError("data.source is empty: give a folder of images, a file list or a library")
        images = make_dataset(cfg)  # fails on missing or empty data before anything is written
        if eval_data is not None:
            from trainer.evaluate import labelled_splits

            labelled_splits(eval_data)  # a bad labelled folder fails now, not after the training
        ckpt = run.load_checkpoint() if resume else None
        step = int(ckpt["step"]) if ckpt is not None else 0
        stop = _StopFlag(stop_event)
        trainer = _Trainer(cfg, run, ckpt, images, stop, log, log_every, checkpoint_every, stop_at, eval_data,
                           allow_download, ddp)
        del ckpt
        threads = torch.get_num_threads()
        stop.install()
        try:
            trainer.setup()  # builds (and may download) the models: a failure here leaves the folder as it was
            if ddp.main:
                run.root.mkdir(parents=True, exist_ok=True)
                if resume:
                    run.events.truncate_after(step)  # the steps after the checkpoint are done again
                else:
                    run.save_config(cfg)
                    run.events.path.unlink(missing_ok=True)
            if ddp.active:
                dist.barrier()
            return trainer.fit()
        finally:
            stop.restore()
            torch.set_num_threads(threads)
    finally:
        if ddp.owns_group and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
