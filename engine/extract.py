"""Batched feature extraction: images decoded in worker threads while the model runs on the previous batch.

Decoding (Pillow, with reduced-size JPEG decoding) releases the GIL, so threads overlap it with PyTorch's own
threads; on a GPU the model never waits for the CPU as long as decoding keeps up.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine.device import openvino_device, pick_device
from engine.progress import Cancelled, Progress
from engine.runtime import BACKENDS, BackendUnavailable, Runtime, auto_reason, log
from engine.runtime.torch_backend import TorchRuntime

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


@dataclass
class Batch:
    """One model batch: which inputs it holds, their features, and the inputs that could not be read."""

    indices: list[int]
    cls: np.ndarray  # (n, D) float32, L2-normalised
    patch: np.ndarray | None = None  # (n, H·W, D) float16 patch tokens, when asked for
    errors: list[tuple[int, str]] = field(default_factory=list)  # (input index, message)





class Extractor:
    """Runs a backbone in inference mode at the best precision the device has, through the fastest backend.

    precision: "auto" picks bf16 on GPUs and on CPUs with AVX512-BF16/AMX, fp16 on MPS, else fp32; "int8" (CPU
    only) is OpenVINO's post-training quantisation (NNCF, calibrated on `calibration` photos, by default the sample
    library: `engine.runtime.ov_int8`) for the 224-px path, and torch's dynamic quantisation of the linears for
    other sizes, or for all of them when OpenVINO or NNCF cannot run it. The model is copied when its weights must
    change.

    backend: "auto" takes OpenVINO on x86 CPUs when it is installed and converts the model (the 224-px path that
    indexing and queries use), torch otherwise, logging one line that says why; "torch" and "openvino" force one
    (a forced "openvino" that cannot run raises `BackendUnavailable`). The DINOSCOPE_BACKEND environment variable
    replaces "auto". Inputs of any other size (dense overlays, region queries outside the crop) always run on
    torch. `device` also takes OpenVINO device names ("GPU", "GPU.1", "NPU"), which imply the openvino backend.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        workers: int | None = None,
        patch_tokens: bool = False,
        cpu_chunk: int | None = 8,
        backend: str = "auto",
        calibration: torch.Tensor | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        ov_device = openvino_device(device) if isinstance(device, str) else None
        if backend == "auto" and not ov_device:  # an OpenVINO device name already says which backend
            backend = os.environ.get("DINOSCOPE_BACKEND", "auto") or "auto"
            if backend not in BACKENDS:
                raise ValueError(f"DINOSCOPE_BACKEND={backend!r}; choose one of {', '.join(BACKENDS)}")
        if ov_device and backend == "torch":
            raise ValueError(f"{ov_device} is an OpenVINO device; use --backend openvino or auto")
        if ov_device:
            self.device = torch.device("cpu")  # where torch runs the other input sizes
        else:
            self.device = pick_device(str(device)) if not isinstance(device, torch.device) else device
        if backend == "openvino" and self.device.type != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU or an OpenVINO device (GPU, NPU), "
                             f"not {self.device.type}")
        self.patch_size = model.patch_size
        self.embed_dim = model.embed_dim
        self.patch_tokens = patch_tokens
        self.torch_runtime = TorchRuntime(model, self.device, precision, cpu_chunk)
        self.model = self.torch_runtime.model
        self.dtype = self.torch_runtime.dtype
        self.precision = self.torch_runtime.precision
        self.runtime: Runtime = self.torch_runtime
        self.backend_reason = "asked for" if backend == "torch" else ""
        if backend != "torch":
            self._try_openvino(backend, ov_device, precision, model, calibration)
        if precision == "auto" and backend == "auto" and not ov_device and isinstance(device, str):
            _remember_quick(model, self.runtime if self.runtime is not self.torch_runtime else None, device)
        self.backend = self.runtime.name
        if self.backend == "openvino":
            # OpenVINO keeps its speed at batch 32 where torch on a CPU loses a third (ENVIRONMENT.md §10; and
            # bench/extract.py: 4 chunks of 8 ran at 0.91x of one batch of 32), so it gets whole batches of 32.
            self.batch_size = batch_size or 32
            self.chunk = None
        else:
            self.batch_size = batch_size or (8 if self.device.type == "cpu" else 64)
            self.chunk = cpu_chunk if self.device.type == "cpu" else None
        self.workers = workers or min(4, os.cpu_count() or 2)

    def _try_openvino(self, backend: str, ov_device: str | None, precision: str, model: torch.nn.Module,
                      calibration: torch.Tensor | None) -> None:
        """Put OpenVINO in front for the fixed-size path when it can run; else say why torch runs it."""
        from engine.models.fuse import fold_layerscale
        from engine.runtime.openvino_backend import OpenVinoRuntime

        ov_precision = ("fp16" if precision == "auto" else precision) if ov_device else self.precision
        reason = None if (backend == "openvino" or ov_device) else auto_reason(self.device, self.precision)
        if reason is None:
            try:
                # int8 quantises the float model itself (torch's copy holds dynamically quantised linears)
                folded = fold_layerscale(model).float().eval() if ov_precision == "int8" else self.model
                self.runtime = OpenVinoRuntime(folded, ov_precision, device=ov_device or "CPU",
                                               calibration=calibration)
                self.precision = ov_precision
                self.backend_reason = f"OpenVINO {ov_precision} on {ov_device or 'CPU'}"
                log.info("backend: %s (compiled-model cache: %s)", self.backend_reason, self.runtime.cache_status)
                return
            except Exception as e:  # any failure to convert or compile: torch runs the model
                if backend == "openvino" or ov_device:
                    raise
                cause = str(e) if isinstance(e, BackendUnavailable) else (
                    f"OpenVINO could not convert {type(self.model).__name__} ({type(e).__name__}: {e})")
                reason = f"{cause}; torch runs the model"
                log.warning("backend: %s", reason)
        else:
            log.info("backend: %s", reason)
        self.backend_reason = reason

    # --------------------------------------------------------------------------- tensors in, features out
    @torch.inference_mode()
    def forward(self, x: torch.Tensor, patches: bool = True) -> dict[str, torch.Tensor]:
        """Normed CLS and patch tokens (patches maybe left out when not asked for); the fixed-size backend takes
        its size, torch every other one."""
        size = self.runtime.input_size
        if size is None or tuple(x.shape[-2:]) != (size, size):
            return self.torch_runtime.run(x, patches)
        if self.chunk and len(x) > self.chunk:
            parts = [self.runtime.run(x[i : i + self.chunk], patches) for i in range(0, len(x), self.chunk)]
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return self.runtime.run(x, patches)

    def embed_tensor(self, x: torch.Tensor) -> Batch:
        """(B,3,H,W) normalised images -> L2-normalised CLS (and patch tokens when configured)."""
        out = self.forward(x, patches=self.patch_tokens)
        cls = F.normalize(out["x_norm_clstoken"].float(), dim=-1).cpu().numpy()
        patch = None
        if self.patch_tokens:
            patch = out["x_norm_patchtokens"].to(torch.float16).cpu().numpy()
        return Batch(indices=list(range(len(cls))), cls=cls, patch=patch)

    # ------------------------------------------------------------------------------------ files in
    def iter_files(
        self,
        paths: Iterable[str | os.PathLike],
        load: Callable[[str | os.PathLike], torch.Tensor] | None = None,
        progress: Callable[[Progress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Iterator[Batch]:
        """Yield batches in input order; an unreadable file is reported in `Batch.errors`, never raised."""
        from engine.imageio import ImageDecodeError

        load = load or eval_input
        paths = list(paths)
        total = len(paths)
        start = time.perf_counter()
        done = failed = 0
        lookahead = self.batch_size * 3
        stop = threading.Event()

        def task(p: str | os.PathLike) -> torch.Tensor:
            if stop.is_set():
                raise Cancelled()
            return load(p)

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode") as pool:
            pending: deque[tuple[int, Future]] = deque()
            next_i = 0

            def fill() -> None:
                nonlocal next_i
                while next_i < total and len(pending) < lookahead:
                    pending.append((next_i, pool.submit(task, paths[next_i])))
                    next_i += 1

            try:
                fill()
                while pending:
                    indices: list[int] = []
                    tensors: list[torch.Tensor] = []
                    errors: list[tuple[int, str]] = []
                    while pending and len(tensors) < self.batch_size:
                        if cancel is not None and cancel():
                            raise Cancelled()
                        i, fut = pending.popleft()
                        try:
                            tensors.append(fut.result())
                            indices.append(i)
                        except ImageDecodeError as e:
                            errors.append((i, str(e)))
                        except (OSError, ValueError) as e:  # anything else a bad file can throw
                            errors.append((i, f"{paths[i]}: {e}"))
                        fill()
                    if tensors:
                        batch = self.embed_tensor(torch.stack(tensors))
                        batch.indices = indices
                    else:
                        batch = Batch(indices=[], cls=np.zeros((0, self.embed_dim), np.float32))
                    batch.errors = errors
                    done += len(indices) + len(errors)
                    failed += len(errors)
                    if progress is not None:
                        progress(Progress(done, total, failed, time.perf_counter() - start))
                    yield batch
            finally:
                stop.set()
                for _, fut in pending:
                    fut.cancel()


def _remember_quick(model: torch.nn.Module, runtime, device_request: str) -> None:
    """Let the next start answer its first search from this compiled model without torch (engine.runtime.ov_quick):
    only for a model read from one file (a zoo download or a checkpoint) whose blob is in the cache. `runtime` None:
    torch runs this model here now (a GPU, DINOSCOPE_BACKEND), so an old recipe would give other vectors."""
    from pathlib import Path

    from engine.runtime import ov_quick

    source = getattr(model, "source", None)
    if not isinstance(source, str):
        return
    if runtime is None:
        ov_quick.forget(source, device_request)
        return
    cache = getattr(runtime, "cache_path", None)
    if cache is None or not cache.is_file():
        return
    from engine.models import zoo

    file = zoo.local_path(source) if source in zoo.ZOO else Path(source)
    if file is not None and Path(file).is_file():
        ov_quick.remember(source, file, device_request, runtime.key, runtime.config, model.embed_dim)


def eval_input(path: str | os.PathLike, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """Decode at reduced size where the format allows, then the official eval transform."""
    from engine.imageio import load_rgb
    from engine.transforms import eval_transform

    return eval_transform(load_rgb(path, min_side=resize), resize=resize, crop=crop)
