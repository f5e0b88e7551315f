"""Inference backends behind one small interface: torch (CUDA, MPS, CPU) and OpenVINO (x86 CPUs, Intel GPUs/NPUs).

`engine.extract.Extractor` is the caller; `engine.runtime.ov_quick` reuses OpenVINO's cached blobs without torch
for the first searches after a start. A backend takes a batch of normalised images and returns the
normed CLS and patch tokens; `choose` decides which one runs, and says why in one logged line when `auto` cannot
take OpenVINO.
"""

from __future__ import annotations

import logging
import platform
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch stays unimported here: engine.runtime.ov_quick answers a first search without it
    import torch

log = logging.getLogger("dinoscope.runtime")

BACKENDS = ("auto", "torch", "openvino")
X86 = ("x86_64", "amd64", "i686", "x86")


class BackendUnavailable(RuntimeError):
    """OpenVINO cannot run this model here (not installed, broken install, conversion failed, wrong numbers)."""


class Runtime(Protocol):
    """What a backend gives the extractor."""

    name: str  # "torch" or "openvino"
    precision: str  # "fp32", "bf16", "fp16" or "int8"
    input_size: int | None  # the only square side it runs (None: any size)

    def run(self, x: torch.Tensor, patches: bool = True) -> dict[str, torch.Tensor]:
        """(B,3,H,W) normalised images -> {"x_norm_clstoken": (B,D), "x_norm_patchtokens": (B,N,D)}.

        With `patches=False` a backend may leave the patch tokens out (a query needs only CLS, and copying
        B x 256 x D floats out of OpenVINO's buffers cost 3-4 % of a batch)."""
        ...


def is_x86() -> bool:
    return platform.machine().lower() in X86


def auto_reason(device: torch.device | str, precision: str) -> str | None:
    """Why `auto` does not try OpenVINO for this device and precision (None: it does)."""
    if isinstance(device, str):  # an OpenVINO device name (GPU, NPU): only OpenVINO runs it
        return None
    if device.type != "cpu":
        return f"{device.type.upper()} device: torch runs the model"
    if not is_x86():
        return f"{platform.machine()} CPU: OpenVINO is used on x86 CPUs only; torch runs the model"
    if precision not in ("fp32", "bf16", "int8"):
        return f"precision {precision}: torch runs the model (OpenVINO is used for fp32, bf16 and int8)"
    return None


def int8_unavailable() -> str | None:
    """Why fast int8 (OpenVINO quantised by NNCF) cannot run on this machine, None when it can; torch-free and
    without importing either package (the window asks on its UI thread)."""
    import importlib.util

    if not is_x86():
        return f"int8 through OpenVINO runs on x86 CPUs; this one is {platform.machine()}"
    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        return f"int8 needs {' and '.join(missing)}, which this installation does not have"
    return None


def import_openvino():
    """The openvino module, or BackendUnavailable naming what is wrong with the install."""
    try:
        import openvino
        from openvino import Core  # noqa: F401  (a half-installed package fails here)
    except ImportError as e:
        raise BackendUnavailable(f"OpenVINO is not installed or broken ({e})") from e
    except Exception as e:  # a broken native library raises anything from OSError to RuntimeError
        raise BackendUnavailable(f"OpenVINO failed to load ({type(e).__name__}: {e})") from e
    return openvino


__all__ = ["BACKENDS", "BackendUnavailable", "Runtime", "auto_reason", "import_openvino", "int8_unavailable",
           "is_x86", "log"]
