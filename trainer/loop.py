"""The training loop: iterations, checkpoints, the NaN guard, stop requests, DDP, high-res (trainer/train.py
starts it on a run folder).

One iteration (meta_arch.py's docstring), with the schedules of trainer/schedules.py indexed by iteration:
lr/wd/last-layer lr applied to the AdamW groups, forward and backward (bf16 autocast where the device has fast
bf16), per-submodule gradient clipping, the optimizer step, the EMA teacher update. The batches are a pure
function of (seed, rank, iteration) (trainer/data.py) and a checkpoint holds the rest of the state
(trainer/training_state.py), so a resumed run repeats an uninterrupted one step for step.

Stopping. SIGINT/SIGTERM or the caller's `cancel()` set a flag (trainer/distributed.py); the current step
finishes, a checkpoint is written, the run's events end with status "interrupted", and `Trainer.fit` raises
`engine.progress.Cancelled`; a second signal aborts at once (the last checkpoint stays). A non-finite loss or
gradient stops the run before the optimizer step, with a message naming the step and the losses. The newest
checkpoint is then the last good state: checkpoints are written only with finite weights, and one written from
the very weights that gave the non-finite loss (finite but ruined) is set aside as step_N.nan.pt.

High resolution. With `high_res.enabled`, `cfg.for_high_res()` continues from the current weights and optimizer
for its own iterations (bigger crops, every schedule compressed, a lower lr; paper B.2). The position embedding
keeps its size and is interpolated to the larger grid at each forward pass, so parameters and AdamW state carry
over unchanged.

Several GPUs: under `torchrun` the SSLMetaArch is wrapped in DistributedDataParallel (only student parameters
require grad, so only they are reduced), and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from engine.progress import Cancelled, Progress, ProgressFn
from trainer.config import TrainConfig
from trainer.data import TRAIN_STREAM, ImageFolderDataset, IterationBatches, make_dataset, make_iteration_loader
from trainer.distributed import DistInfo, StopFlag, configure_cpu_threads, data_workers
from trainer.run_dir import Run
from trainer.training_state import (
    build_meta,
    checkpoint_state,
    load_model_state,
    seed_everything,
    set_rng_state,
)

__all__ = ["LOSS_NAMES", "TrainSummary", "Trainer"]

# SSLMetaArch's loss keys -> the short names written to events.jsonl.
LOSS_NAMES = {
    "total_loss": "total",
    "dino_local_crops_loss": "dino_local",
    "dino_global_crops_loss": "dino_global",
    "koleo_loss": "koleo",
    "ibot_loss": "ibot",
}

LogFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainSummary:
    """How `train` ended. status: done | stopped (reached `stop_at`) | nan. (A stop request raises Cancelled.)"""

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


def _phases(cfg: TrainConfig) -> list[tuple[str, TrainConfig, int, int]]:
    """(name, config, first iteration, end iteration) of the main phase and the optional high-res phase."""
    main_end = cfg.optim.total_iters
    out = [("main", cfg, 0, main_end)]
    if cfg.high_res.enabled:
        hr = cfg.for_high_res()
        out.append(("high_res", hr, main_end, main_end + hr.optim.total_iters))
    return out


# ------------------------------------------------------------------------------------------------ training
class Trainer:
    """One run's training: setup (models, optimizer, checkpoint state), the phases' step loop, evaluation."""

    def __init__(self, cfg: TrainConfig, run: Run, ckpt: dict[str, Any] | None, images: ImageFolderDataset,
                 stop: StopFlag, log: LogFn | None, log_every: int, checkpoint_every: int | None,
                 stop_at: int | None, eval_data: str | os.PathLike | None, allow_download: bool,
                 ddp: DistInfo, progress: ProgressFn | None = None) -> None:
        self.cfg, self.run, self.ckpt, self.stop, self.log_fn = cfg, run, ckpt, stop, log
        self.resume = ckpt is not None
        self.images = images
        self.log_every = max(1, log_every)
        self.checkpoint_every = checkpoint_every if checkpoint_every else cfg.optim.iters_per_epoch
        self.stop_at = stop_at
        self.eval_data = eval_data
        self.allow_download = allow_download
        self.ddp = ddp
        self.progress = progress
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
        self.workers = data_workers(cfg.data.num_workers, self.device.type, ddp.world_size)
        self.threads = None
        if self.device.type == "cpu":
            self.threads = configure_cpu_threads(self.workers, ddp.world_size, cfg.threads)
        ckpt, self.ckpt = self.ckpt, None  # released once loaded: a large model's state is big
        if ckpt is not None and ckpt.get("world_size", 1) != ddp.world_size:
            self.note(f"the checkpoint was written by {ckpt.get('world_size', 1)} processes and this run has "
                      f"{ddp.world_size}: the data stream and the lr scaling change from here on")
        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.meta = build_meta(cfg, self.device, ckpt, self.allow_download, len(self.images)).train()
        from trainer.param_groups import build_optimizer

        self.optimizer = build_optimizer(self.meta.student, cfg.optim)
        self.scaler = None
        if getattr(self.meta, "autocast_dtype", None) == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.step = 0
        if ckpt is not None:
            load_model_state(self.meta, ckpt)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            self.step = int(ckpt["step"])
            rng = ckpt.get("rng") or []
            if len(rng) == ddp.world_size:
                set_rng_state(rng[ddp.rank], self.device)
            else:
                seed_everything(cfg.seed + ddp.rank + self.step)
            if ckpt.get("config") != cfg.to_dict():
                self.note(f"{Run.CONFIG} differs from the config stored in the checkpoint; continuing with "
                          f"{Run.CONFIG}")
        else:
            seed_everything(cfg.seed + ddp.rank)  # stochastic depth differs per rank
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
        return checkpoint_state(self.meta, self.optimizer, self.scaler, self.cfg, self.step,
                                self._phase_name(self.step), self.ddp, self.device, len(self.images))

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
            "workers": self.workers,
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
                                               0, self.workers)
            self.meta.fit_prototypes(iter(fit_loader), log=lambda m: self.note(m))
            del fit_loader
            if self._stop_requested_anywhere():  # a collective under DDP: every rank asks
                return self._interrupt()
        batches = IterationBatches(self.images, cfg, ddp.rank, ddp.world_size)
        loader = make_iteration_loader(batches, self.step, self.workers,
                                       pin_memory=self.device.type == "cuda")
        data = iter(loader)
        per_step_images = cfg.optim.batch_size_per_device * ddp.world_size
        window_start, window_steps = time.perf_counter(), 0
        self.t_begin = window_start
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
                if self.progress is not None:
                    self.progress(Progress(self.step, self.total, elapsed=time.perf_counter() - self.t_begin,
                                           phase="train"))
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
        """Checkpoint, log the end, raise Cancelled (or stop as a NaN when the weights are no longer finite)."""
        if not self._checkpoint_if_finite():
            return self._nan_stop(self.step, None, {}, weights=True)
        msg = (f"interrupted ({self.stop.reason}) after step {self.step} of {self.total}; checkpoint saved, "
               f"--resume continues")
        self.emit({"event": "end", "status": "interrupted", "step": self.step, "message": msg})
        raise Cancelled(msg)

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
