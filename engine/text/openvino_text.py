"""dino.txt's text encoder through OpenVINO on the CPU, for the search box.

One short query reads all 538 M weights of the text transformer, so its time is the weights' bytes: on the quiet
2-core build machine torch fp32 took 165 ms, OpenVINO f32 99 ms, bf16 64 ms and int8 weights 35 ms
(bench/text.py --openvino). The graph takes the ids up to the end token
(dynamic length, as the torch path trims them) and returns every position; pooling at the end token stays here.
Converting 2 GB of weights takes a while, so the converted model is cached on disk, keyed by the text-encoder
file it came from (path, size, date).
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from engine.models.dinotxt import TextTower

# precision -> OpenVINO inference precision. "int8": int8 weights (symmetric, one scale per output channel) that
# the CPU plugin decompresses inside its f32 matmuls: a query reads a quarter of the f32 bytes. On the build CPU
# (bench/text.py, quiet) it ran 35 ms a query against 47-64 ms for bf16, cosine to fp32 0.9999.
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class _Tokens(torch.nn.Module):
    def __init__(self, tower: TextTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tower.head(self.tower.backbone(ids))


class _Int8Linear(torch.nn.Module):
    """A Linear whose weight is int8, scaled back inside the graph (the pattern OpenVINO keeps compressed)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        self.register_buffer("q", torch.round(w / scale).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.q.to(x.dtype) * self.scale.to(x.dtype), self.bias)


def _with_int8_linears(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree with every Linear in int8; the other weights are shared, not copied (the text
    encoder is 2 GB in f32)."""
    if isinstance(module, torch.nn.Linear):
        return _Int8Linear(module)
    new = copy.copy(module)
    new._modules = {name: _with_int8_linears(child) for name, child in module._modules.items()}
    return new


def cache_key(weights_file: str | os.PathLike) -> str:
    st = Path(weights_file).stat()
    text = f"{Path(weights_file).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class OpenVinoText:
    """Callable like the torch TextTower: (n, L) ids -> (n, embed_dim) pooled, unnormalised features."""

    def __init__(self, tower: TextTower, precision: str = "fp32", cache_dir: str | os.PathLike | None = None,
                 key: str | None = None) -> None:
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
        core = ov.Core()
        graph = "_int8" if precision == "int8" else ""  # fp32 and bf16 compile the same converted graph
        cached = Path(cache_dir) / f"dinotxt_text_{key}{graph}.xml" if cache_dir is not None and key else None
        self.from_cache = cached is not None and cached.is_file() and cached.with_suffix(".bin").is_file()
        if self.from_cache:
            model = core.read_model(str(cached))
        else:
            example = torch.tensor([[49406, 320, 1929, 49407]])
            with torch.no_grad():
                traced = _with_int8_linears(tower.eval()) if precision == "int8" else tower.eval()
                model = ov.convert_model(_Tokens(traced), example_input=example,
                                         input=[(ov.PartialShape([1, -1]), ov.Type.i64)])
            if cached is not None:
                _save(ov, model, cached)
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": PRECISIONS[precision]})
        self.context_length = tower.config.context_length

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in ids:
            end = int(row.argmax())
            out = self.compiled(row[None, : end + 1].cpu().numpy())[0]
            rows.append(torch.from_numpy(out[0, end].copy()))
        return torch.stack(rows)


def _save(ov, model, path: Path) -> None:
    """Write the .xml/.bin pair in a temp folder beside the cache, then move .bin before .xml: a crash never
    leaves an .xml pointing at a half-written .bin."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".ov-"))
    try:
        ov.save_model(model, str(tmp / path.name), compress_to_fp16=False)
        os.replace(tmp / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
