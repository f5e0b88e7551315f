"""dino.txt's text encoder through OpenVINO on the CPU, for the search box.

One short query reads all 538 M weights of the text transformer; on the 2-core build machine OpenVINO did that
5x (f32) to 13x (bf16) faster than torch (bench/text.py --openvino). The graph takes the ids up to the end token
(dynamic length, as the torch path trims them) and returns every position; pooling at the end token stays here.
Converting 2 GB of weights takes a while, so the converted model is cached on disk, keyed by the text-encoder
file it came from (path, size, date).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from engine.models.dinotxt import TextTower

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


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
        cached = Path(cache_dir) / f"dinotxt_text_{key}.xml" if cache_dir is not None and key else None
        self.from_cache = cached is not None and cached.is_file() and cached.with_suffix(".bin").is_file()
        if self.from_cache:
            model = core.read_model(str(cached))
        else:
            example = torch.tensor([[49406, 320, 1929, 49407]])
            with torch.no_grad():
                model = ov.convert_model(_Tokens(tower.eval()), example_input=example,
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
