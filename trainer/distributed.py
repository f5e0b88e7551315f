"""The training process and its peers: ranks under torchrun, CPU threads and data workers, stop requests.

Several GPUs: under `torchrun` (RANK/WORLD_SIZE/LOCAL_RANK set) the process group is initialised (NCCL on CUDA,
gloo on CPU) and every rank reads its own shard of the data stream; only rank 0 writes files.

Stopping speaks the one vocabulary of engine.progress: a `cancel()` callback, polled once per step, and
SIGINT/SIGTERM (which a terminal's Ctrl-C or the GUI's Stop send to the trainer's own process) both set one
flag; the loop finishes the step, saves a checkpoint and raises `engine.progress.Cancelled`.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from engine.progress import CancelFn

__all__ = ["DistInfo", "StopFlag", "configure_cpu_threads", "physical_cores", "setup_distributed"]


@dataclass
class DistInfo:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when `setup_distributed` created the process group (and must destroy it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (a single process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and (device_name == "auto" or device_name.startswith("cuda"))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    return DistInfo(rank, dist.get_world_size(), local, owns)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core count once); the usable CPUs when the
    topology cannot be read (not Linux)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "physical_package_id") as pkg, open(base + "core_id") as core:
                cores.add((pkg.read().strip(), core.read().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


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
    per_rank = max(1, _usable_cpus() // max(1, world_size))
    n = max(1, per_rank - num_workers - (1 if per_rank > 2 else 0))
    torch.set_num_threads(n)
    return n


class StopFlag:
    """SIGINT/SIGTERM (main thread only) and an optional `cancel()` callback, read once per step."""

    def __init__(self, cancel: CancelFn | None) -> None:
        self.cancel = cancel
        self.signum: int | None = None
        self.cancelled = False
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
        if self.signum is None and not self.cancelled and self.cancel is not None and self.cancel():
            self.cancelled = True
        return self.signum is not None or self.cancelled

    @property
    def reason(self) -> str:
        if self.signum is not None:
            return signal.Signals(self.signum).name
        return "cancelled"
