"""Choosing the device and the inference precision a user's machine runs best."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

# OpenVINO device names (as `openvino.Core().available_devices` reports them) that --device accepts besides torch's.
# Upper case, as OpenVINO writes them: "cpu"/"cuda"/"mps" stay torch devices; "GPU", "GPU.1", "NPU" are OpenVINO's.
OPENVINO_DEVICES = ("GPU", "NPU")


def openvino_device(name: str) -> str | None:
    """The OpenVINO device a --device value names (an Intel GPU or NPU), None for a torch device or "auto"."""
    return name if name.split(".")[0] in OPENVINO_DEVICES else None


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for --device: auto prefers CUDA, then MPS, then the CPU; a named one must exist."""
    if openvino_device(name):
        raise ValueError(f"{name} is an OpenVINO device; it runs with the openvino backend, not torch")
    if name != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("--device mps was asked for, but this PyTorch build has no MPS support")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def index_precision(int8: bool, device: str = "auto") -> str:
    """The precision an indexing run asks for when the user prefers int8: int8 where the run lands on a CPU that
    runs OpenVINO's int8, "auto" elsewhere (a GPU, an OpenVINO device, no NNCF: a preference must neither fail a
    run nor slow it down with torch's int8, which is slower than bf16). Never raises: a bad device is the run's
    own error to report."""
    from engine.runtime import int8_unavailable

    if not int8 or openvino_device(device) or int8_unavailable() is not None:
        return "auto"
    try:
        return "int8" if pick_device(device).type == "cpu" else "auto"
    except (RuntimeError, ValueError):
        return "auto"


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: where bf16 matmuls run 2-3x faster than fp32 (measured in ENVIRONMENT.md §6)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    words = set(flags.split())
    return bool(words & {"avx512_bf16", "amx_bf16"})


def pick_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """auto: bf16 on CUDA GPUs that have it (else fp16), fp16 on MPS, bf16 on CPUs with AVX512-BF16/AMX, else fp32."""
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name != "auto":
        try:
            return table[name]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}; choose fp32, bf16 or fp16") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "Apple MPS"
    return "CPU"
