"""The PyTorch backend: our own backbone with LayerScale folded, autocast at the chosen precision, any input size."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from engine.device import pick_dtype
from engine.models.fuse import fold_layerscale

_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 linears, in place: the caller passes its own folded copy, and a second full-size float copy
    (quantize_dynamic's default) costs gigabytes for ViT-L/g. torch.ao marks this API deprecated (torchao replaces
    it) but 2.13 still ships it."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


class TorchRuntime:
    """Runs a copy of the backbone (LayerScale folded into the linears) on a torch device.

    On a CPU, a forward pass over more than ~8 images spills its activations out of the caches and gets slower per
    image (ENVIRONMENT.md §6: transformers drops from 35 to 23 img/s at batch 32), so large batches run as
    cache-sized chunks. GPUs want the whole batch at once.
    """

    name = "torch"
    input_size = None

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str = "auto",
                 cpu_chunk: int | None = 8) -> None:
        self.device = device
        if precision == "int8":
            if device.type != "cpu":
                raise ValueError("int8 (dynamic quantisation) runs on the CPU only")
            self.model = _quantize_int8(fold_layerscale(model).float().eval())
            self.dtype = torch.float32
            self.precision = "int8"
        else:
            self.dtype = pick_dtype(device, precision)
            self.precision = _NAMES[self.dtype]
            self.model = fold_layerscale(model).to(device).eval()
        self.chunk = cpu_chunk if device.type == "cpu" else None

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def run(self, x: torch.Tensor, patches: bool = True) -> dict[str, torch.Tensor]:
        """Both token kinds whatever `patches` says: the model computes them in one pass anyway."""
        x = x.to(self.device, non_blocking=True)
        if self.chunk and len(x) > self.chunk:
            parts = [self.run(x[i : i + self.chunk]) for i in range(0, len(x), self.chunk)]
            return {k: torch.cat([p[k] for p in parts]) for k in ("x_norm_clstoken", "x_norm_patchtokens")}
        with self._autocast():
            out = self.model.forward_features(x)
        return out
