"""`train`: start, resume or replace a training run in a folder, then hand it to the loop (trainer/loop.py).

Everything that can be wrong with the request (the config, the data, the labelled eval folder, a folder that
already holds a run, a checkpoint that cannot be read, a model that cannot be fetched) fails here before the run
folder is touched.
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch
import torch.distributed as dist

from engine.progress import CancelFn, ProgressFn
from trainer.config import ConfigError, TrainConfig
from trainer.data import make_dataset
from trainer.distributed import StopFlag, setup_distributed
from trainer.loop import LogFn, Trainer, TrainSummary
from trainer.run_dir import Run, RunError

__all__ = ["TrainSummary", "train"]


def train(
    cfg: TrainConfig | None,
    run_dir: str | os.PathLike,
    resume: bool = False,
    init: str | os.PathLike | None = None,
    cancel: CancelFn | None = None,
    log: LogFn | None = None,
    *,
    progress: ProgressFn | None = None,
    eval_data: str | os.PathLike | None = None,
    log_every: int = 10,
    checkpoint_every: int | None = None,
    keep: int = 3,
    stop_at: int | None = None,
    allow_download: bool = True,
    overwrite: bool = False,
) -> TrainSummary:
    """Train (or continue) the run in `run_dir`; returns how it ended.

    cfg: the config of a new run; with `resume=True` it may be None (the run's config.yaml is used) and
    otherwise must equal it. init: a backbone source (zoo name or checkpoint) both networks start from; it is
    recorded as `model.pretrained`. log: called with every event written to events.jsonl (rank 0).
    cancel / progress: engine.progress's callbacks; cancel() is polled once per step, progress gets
    Progress(step, total) after each. On cancel() or SIGINT/SIGTERM the step finishes, a checkpoint is saved and
    `engine.progress.Cancelled` is raised (its message says where the run stopped).
    checkpoint_every: iterations between checkpoints (default one epoch); the newest `keep` are kept.
    stop_at: stop with a checkpoint once this many steps are done (status "stopped"; resume continues).
    eval_data: a labelled folder (one sub-folder per class) evaluated by k-NN and a linear probe at the end.
    overwrite: a new run may replace the run files already in `run_dir` (without it, any of them is an error:
    a finished run whose checkpoints/ was deleted still holds its trained model, config and log).
    Temp files that killed writes left in the run folder are removed at the start.

    Raises ConfigError / RunError / FileNotFoundError / ValueError for a bad config, run folder or data, before
    any training step.
    """
    run = Run(run_dir, keep=keep)
    ddp = setup_distributed(cfg.device if cfg is not None else "auto")
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
            existing = run.run_files()
            if existing and not overwrite:
                what = "a run" if run.has_run() else "a run's files without a checkpoint to resume from"
                raise RunError(
                    f"{run.root} already holds {what} ({', '.join(p.name for p in existing[:4])}"
                    f"{', ...' if len(existing) > 4 else ''}); resume it with --resume, replace it with "
                    "--overwrite, or choose another folder")
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
        stop = StopFlag(cancel)
        trainer = Trainer(cfg, run, ckpt, images, stop, log, log_every, checkpoint_every, stop_at, eval_data,
                           allow_download, ddp, progress)
        del ckpt
        threads = torch.get_num_threads()
        stop.install()
        try:
            trainer.setup()  # builds (and may download) the models: a failure here leaves the folder as it was
            if ddp.main:
                run.root.mkdir(parents=True, exist_ok=True)
                leftovers = run.remove_temp_files()
                if leftovers:
                    trainer.note(f"removed {len(leftovers)} temp file(s) of unfinished writes: "
                                 f"{', '.join(p.name for p in leftovers)}")
                if overwrite and not resume:
                    replaced = run.remove_run_files()
                    if replaced:
                        trainer.note(f"--overwrite: replaced the previous run's {len(replaced)} file(s)")
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
