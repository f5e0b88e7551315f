"""The training process and its peers: ranks under torchrun, CPU threads and data workers, stop requests.

By default a run uses the machine's physical cores: on a CPU the data workers (`data.num_workers`, null = chosen
here) and the compute threads (`threads`, null = the cores the workers leave) together take every physical core;
`--set data.num_workers=N threads=M` overrides either.

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

__all__ = ["DistInfo", "StopFlag", "configure_cpu_threads", "data_workers", "physical_cores", "setup_distributed"]


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


def data_workers(num_workers: int | None, device_type: str, world_size: int = 1) -> int:
    """DataLoader workers: `data.num_workers` when set, else chosen from the machine.

    On a CPU the workers share the physical cores with the model: one per four cores (at least one where there
    are two), the rest compute (see `configure_cpu_threads`). On a GPU the cores have nothing else to do: all
    but one of this rank's CPUs, at most 8.
    """
    if num_workers is not None:
        return num_workers
    if device_type == "cpu":
        cores = max(1, physical_cores() // max(1, world_size))
        return max(1, cores // 4) if cores >= 2 else 0
    return max(1, min(8, _usable_cpus() // max(1, world_size) - 1))


def configure_cpu_threads(num_workers: int, world_size: int = 1, threads: int | None = None) -> int:
    """Set and return the intra-op threads for CPU training: `threads` when given (the config's `threads`), else
    OMP_NUM_THREADS when set, else the physical cores the data workers (and other ranks) leave.

    Threads are counted on physical cores: a hyper-thread sibling adds little to matrix products and OpenMP
    threads spin at every barrier while one of them waits for a core, so more compute threads than free cores is
    far worse than fewer. On the 2-core development machine (tiny-cpu, batch 16, one data worker): busy with other
    jobs, 2 threads took 4-5 s a step against 0.9-1.4 s with 1, so there the default is 1 thread + 1 worker.
    """
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if threads is None:
        cores = max(1, physical_cores() // max(1, world_size))
        threads = max(1, cores - num_workers)
    torch.set_num_threads(threads)
    return threads


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
