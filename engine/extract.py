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
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine.device import pick_device, pick_dtype
from engine.models.fuse import fold_layerscale
from engine.progress import Cancelled, Progress

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


@dataclass
class Batch:
    """One model batch: which inputs it holds, their features, and the inputs that could not be read."""

    indices: list[int]
    cls: np.ndarray  # (n, D) float32, L2-normalised
    patch: np.ndarray | None = None  # (n, H·W, D) float16 patch tokens, when asked for
    errors: list[tuple[int, str]] = field(default_factory=list)  # (input index, message)




def _quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 linears. torch.ao marks this API deprecated (torchao replaces it) but 2.13 still ships it."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class Extractor:
    """Runs a backbone in inference mode at the best precision the device has.

    precision: "auto" picks bf16 on GPUs and on CPUs with AVX512-BF16/AMX, fp16 on MPS, else fp32; "int8"
    quantises the linear layers dynamically (CPU only). The model is copied when its weights must change.
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
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.device = pick_device(str(device)) if not isinstance(device, torch.device) else device
        self.patch_size = model.patch_size
        self.embed_dim = model.embed_dim
        self.patch_tokens = patch_tokens
        if precision == "int8":
            if self.device.type != "cpu":
                raise ValueError("int8 (dynamic quantisation) runs on the CPU only")
            self.model = _quantize_int8(fold_layerscale(model).float().eval())
            self.dtype = torch.float32
            self.precision = "int8"
        else:
            self.dtype = pick_dtype(self.device, precision)
            self.precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
            self.model = fold_layerscale(model).to(self.device).eval()
        self.batch_size = batch_size or (8 if self.device.type == "cpu" else 64)
        # On a CPU, a forward pass over more than ~8 images spills its activations out of the caches and gets
        # slower per image (ENVIRONMENT.md §6: transformers drops from 35 to 23 img/s at batch 32), so large
        # batches run as cache-sized chunks. GPUs want the whole batch at once.
        self.chunk = cpu_chunk if self.device.type == "cpu" else None
        self.workers = workers or min(4, os.cpu_count() or 2)

    # --------------------------------------------------------------------------- tensors in, features out
    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.chunk and len(x) > self.chunk:
            parts = [self.forward(x[i : i + self.chunk]) for i in range(0, len(x), self.chunk)]
            return {k: torch.cat([p[k] for p in parts]) for k in ("x_norm_clstoken", "x_norm_patchtokens")}
        with self._autocast():
            out = self.model.forward_features(x)
        return out

    def embed_tensor(self, x: torch.Tensor) -> Batch:
        """(B,3,H,W) normalised images -> L2-normalised CLS (and patch tokens when configured)."""
        out = self.forward(x)
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


def eval_input(path: str | os.PathLike, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """Decode at reduced size where the format allows, then the official eval transform."""
    from engine.imageio import load_rgb
    from engine.transforms import eval_transform

    return eval_transform(load_rgb(path, min_side=resize), resize=resize, crop=crop)
