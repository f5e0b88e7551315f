"""int8 for OpenVINO: NNCF's post-training quantisation of the converted backbone, calibrated on real photos.

The recipe was chosen by measurement on an AVX-512-VNNI CPU (random ViT-S/14 and ViT-B/14, CLS cosine to torch
fp32 on sample photos the calibration did not see; README, Benchmarks): NNCF's transformer preset quantised every
linear and gave 0.965; without SmoothQuant 0.987; keeping each block's attention output projection in float gave
0.9994-0.9995 (with SmoothQuant on, 0.9992: it matters little then), at 1.3x (ViT-S) to 1.6x (ViT-B) the bf16 speed,
5 % below quantising that projection too. Everything left in float runs at the compiled precision (bf16 on CPUs
that have it).

The default calibration set is the sample library shipped with Dinoscope (natural photos, the same for every
library), so one quantised model per checkpoint is cached, whichever library is indexed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from engine.runtime import BackendUnavailable

# Operations NNCF leaves in float: each block's attention output projection (see the module doc).
KEEP_FLOAT = (r".*attn\.proj.*",)
# Photos that calibrate the activation ranges; more than this adds time, not accuracy, for a few hundred MB model.
MAX_CALIBRATION = 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def import_nncf():
    """The nncf module, or BackendUnavailable saying how to get it."""
    try:
        import nncf
    except ImportError as e:
        raise BackendUnavailable(f"int8 on OpenVINO needs NNCF, which is not installed or broken ({e})") from e
    except Exception as e:  # a broken install raises more than ImportError
        raise BackendUnavailable(f"NNCF failed to load ({type(e).__name__}: {e})") from e
    return nncf


def sample_folder() -> Path:
    from engine.assets import assets_dir

    return assets_dir() / "sample"


def _sample_files() -> list[Path]:
    return sorted(p for p in sample_folder().rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_CALIBRATION]


@functools.cache
def sample_digest(size: int = 224) -> str:
    """The default calibration set's identity from its files' names and bytes: a cached int8 model is found without
    decoding the photos again, and a replaced photo makes another. Once per process (the assets do not change
    under a running app; the folder watcher makes an extractor per batch)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"sample:{size}".encode())
    root = sample_folder()
    for p in _sample_files():
        h.update(f"{p.relative_to(root).as_posix()}\n".encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def calibration_images(size: int = 224) -> torch.Tensor:
    """The sample library's photos through the eval transform, (N, 3, size, size); empty when there are none.
    Not kept: it is needed once per model, when it is quantised."""
    from engine.imageio import load_rgb
    from engine.transforms import eval_transform

    resize = round(size * 256 / 224)
    images = []
    for p in _sample_files():
        try:
            images.append(eval_transform(load_rgb(p, min_side=resize), resize=resize, crop=size))
        except Exception:  # a damaged asset only shrinks the set
            continue
    return torch.stack(images) if images else torch.zeros(0, 3, size, size)


def calibration_digest(images: torch.Tensor) -> str:
    """Which photos (given as pixels) calibrated a model: part of its cache key, so other photos make another
    blob."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(tuple(images.shape)).encode())
    h.update(np.ascontiguousarray(images.detach().to(torch.float32).cpu().numpy()).tobytes())
    return h.hexdigest()


def quantize(model, images: torch.Tensor):
    """The converted `ov.Model` with int8 weights and activations on its linears (but `KEEP_FLOAT`)."""
    nncf = import_nncf()
    if len(images) == 0:
        raise BackendUnavailable("int8 needs photos to calibrate on, and none were found")
    try:
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            AdvancedSmoothQuantParameters,
        )

        data = nncf.Dataset([np.ascontiguousarray(x[None].numpy(), dtype=np.float32) for x in images])
        with _quiet_nncf():
            return nncf.quantize(
                model, data, subset_size=len(images), model_type=nncf.ModelType.TRANSFORMER,
                ignored_scope=nncf.IgnoredScope(patterns=list(KEEP_FLOAT), validate=False),
                advanced_parameters=AdvancedQuantizationParameters(  # -1: SmoothQuant off
                    smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)),
            )
    except Exception as e:
        raise BackendUnavailable(f"NNCF could not quantise the model ({type(e).__name__}: {e})") from e


# One quantisation at a time: _quiet_nncf swaps process-wide state (sys.stdout, NNCF's log levels and streams).
_QUANTIZING = threading.Lock()


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs INFO lines and draws progress bars on stdout, which is the CLI's output (`embed`, `search` print
    results there): its warnings go to stderr, the rest is dropped while it quantises. sys.stdout is swapped for
    the whole process meanwhile (rich finds its console there), so another thread's prints in those seconds are
    lost too; nothing in Dinoscope prints to stdout while it indexes."""
    nncf_log = logging.getLogger("nncf")
    with _QUANTIZING:
        saved = [(h, h.level, h.setStream(sys.stderr) if isinstance(h, logging.StreamHandler) else None)
                 for h in nncf_log.handlers]
        level = nncf_log.level
        nncf_log.setLevel(logging.WARNING)
        for h, _, _ in saved:
            h.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # rich's progress bars write to sys.stdout
                yield
        finally:
            nncf_log.setLevel(level)
            for h, h_level, stream in saved:
                h.setLevel(h_level)
                if stream is not None:
                    h.setStream(stream)


def nncf_version() -> str:
    return str(getattr(import_nncf(), "__version__", "unknown"))
