"""Feature extraction on real photo files: order, normalisation, precision paths and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.extract import Cancelled, Extractor, eval_input
from tests.helpers import tiny_backbone

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]


@pytest.fixture
def photo_files(tmp_path: Path, skimage_data_dir: Path) -> list[Path]:
    out = []
    for i, name in enumerate(PHOTOS):
        img = Image.open(skimage_data_dir / name).convert("RGB")
        p = tmp_path / f"{i:02d}_{Path(name).stem}.jpg"
        img.save(p, quality=90)
        out.append(p)
    return out


def test_vectors_come_back_in_input_order_and_normalised(photo_files: list[Path]) -> None:
    model = tiny_backbone()
    ex = Extractor(model, device="cpu", precision="fp32", batch_size=2, workers=2)
    batches = list(ex.iter_files(photo_files))
    indices = [i for b in batches for i in b.indices]
    assert indices == list(range(len(photo_files)))
    cls = np.concatenate([b.cls for b in batches])
    assert cls.shape == (len(photo_files), 128)
    assert np.allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-5)
    # Same numbers as running the model directly on the eval transform.
    x = torch.stack([eval_input(p) for p in photo_files])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model(x), dim=-1).numpy()
    assert np.abs(cls - ref).max() < 1e-5


def test_unreadable_files_are_reported_and_the_rest_still_embedded(photo_files: list[Path], tmp_path: Path) -> None:
    bad_text = tmp_path / "notes.jpg"
    bad_text.write_text("this is not a photo")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(photo_files[0].read_bytes()[:2000])
    files = [photo_files[0], bad_text, photo_files[1], truncated, tmp_path / "missing.jpg", photo_files[2]]
    ex = Extractor(tiny_backbone(), device="cpu", precision="fp32", batch_size=2)
    seen = []
    batches = list(ex.iter_files(files, progress=seen.append))
    ok = [i for b in batches for i in b.indices]
    errors = dict(e for b in batches for e in b.errors)
    assert ok == [0, 2, 5]
    assert set(errors) == {1, 3, 4}
    assert "notes.jpg" in errors[1] and "cut.jpg" in errors[3]
    assert seen[-1].done == len(files) and seen[-1].failed == 3


def test_bf16_matches_fp32_closely(photo_files: list[Path]) -> None:
    model = tiny_backbone(seed=3)
    x = torch.stack([eval_input(p) for p in photo_files])
    fp32 = Extractor(model, device="cpu", precision="fp32").embed_tensor(x).cls
    bf16 = Extractor(tiny_backbone(seed=3), device="cpu", precision="bf16").embed_tensor(x).cls
    cos = (fp32 * bf16).sum(axis=1)
    assert cos.min() > 0.99


def test_int8_path_runs_and_stays_close(photo_files: list[Path]) -> None:
    model = tiny_backbone(seed=4)
    x = torch.stack([eval_input(p) for p in photo_files])
    fp32 = Extractor(model, device="cpu", precision="fp32").embed_tensor(x).cls
    int8 = Extractor(model, device="cpu", precision="int8")
    assert int8.precision == "int8"
    cos = (fp32 * int8.embed_tensor(x).cls).sum(axis=1)
    assert cos.min() > 0.95
    # quantising copies: the caller's fp32 model is unchanged
    assert isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)


def test_patch_tokens_have_the_grid_shape(photo_files: list[Path]) -> None:
    ex = Extractor(tiny_backbone(registers=4), device="cpu", precision="fp32", patch_tokens=True)
    (batch,) = list(ex.iter_files(photo_files[:2]))
    assert batch.patch.shape == (2, 256, 128) and batch.patch.dtype == np.float16


def test_cancel_stops_the_run(photo_files: list[Path]) -> None:
    ex = Extractor(tiny_backbone(), device="cpu", precision="fp32", batch_size=1)
    calls = iter([False, False, True, True, True, True])
    with pytest.raises(Cancelled):
        list(ex.iter_files(photo_files, cancel=lambda: next(calls)))


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_it() -> None:
    """This CPU's flags decide: bf16 with AVX512-BF16 or AMX-BF16 (the build machine has avx512_bf16), else fp32."""
    fast = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    ex = Extractor(tiny_backbone(), device="cpu", backend="torch")
    assert (ex.precision, ex.dtype) == (("bf16", torch.bfloat16) if fast else ("fp32", torch.float32))
    with pytest.raises(ValueError, match="unknown precision"):
        Extractor(tiny_backbone(), device="cpu", precision="fp8")
