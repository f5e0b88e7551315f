"""The OpenVINO backend against torch on the sample library's real photos, and `auto`'s choice on this CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.device import cpu_has_fast_bf16
from engine.extract import Extractor, eval_input
from engine.runtime import BackendUnavailable
from tests.helpers import tiny_backbone

pytestmark = pytest.mark.openvino  # in-process OpenVINO: run in its own pytest process (see the Makefile)

pytest.importorskip("openvino")

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample"


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    files = sorted(SAMPLE.rglob("*.jpg"))[:8]
    assert len(files) == 8
    return torch.stack([eval_input(p) for p in files])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("registers", [0, 4])
def test_openvino_matches_torch_fp32_on_real_photos(photos: torch.Tensor, registers: int) -> None:
    model = tiny_backbone(registers=registers, seed=5)
    ref = Extractor(model, device="cpu", precision="fp32", backend="torch", patch_tokens=True).embed_tensor(photos)
    for precision, floor in (("fp32", 0.9999), ("bf16", 0.999)):
        ex = Extractor(model, device="cpu", precision=precision, backend="openvino", patch_tokens=True)
        assert ex.backend == "openvino" and ex.precision == precision
        got = ex.embed_tensor(photos)
        assert cosine(got.cls, ref.cls).min() >= floor, precision
        # patch tokens (what the indexer pools into region vectors) are the same tokens, in the same order
        assert got.patch.shape == ref.patch.shape == (8, 256, 128)
        assert cosine(got.patch, ref.patch).mean() >= floor, precision


def test_dinotxt_image_side_runs_on_openvino(photos: torch.Tensor, tmp_path: Path) -> None:
    """Indexing with dino.txt (a ViT-L and the vision head) is the slowest job: OpenVINO runs it, with the same
    2048-d-style vectors (encode_image; head patch tokens in the patch half) as torch."""
    from engine.models import load_backbone
    from tests.dinotxt_helpers import save_tiny_dinotxt

    encoder = load_backbone(save_tiny_dinotxt(tmp_path / "dinotxt"))
    ref = Extractor(encoder, device="cpu", precision="fp32", backend="torch", patch_tokens=True).embed_tensor(photos)
    for precision, floor in (("fp32", 0.9999), ("bf16", 0.999)):
        ex = Extractor(encoder, device="cpu", precision=precision, backend="openvino", patch_tokens=True)
        assert ex.backend == "openvino", precision
        got = ex.embed_tensor(photos)
        assert got.cls.shape == ref.cls.shape == (8, 256)
        assert cosine(got.cls, ref.cls).min() >= floor, precision
        assert got.patch.shape == ref.patch.shape
        assert np.abs(got.patch[..., :128]).max() == 0  # the global half of a patch token stays zero
        assert cosine(got.patch, ref.patch).mean() >= floor, precision


def test_a_batch_larger_than_the_chunk_and_a_single_image(photos: torch.Tensor) -> None:
    model = tiny_backbone(seed=5)
    ex = Extractor(model, device="cpu", precision="fp32", backend="openvino")
    ref = Extractor(model, device="cpu", precision="fp32", backend="torch")
    big = torch.cat([photos, photos.flip(-1)])  # 16 images: two chunks of 8
    assert cosine(ex.embed_tensor(big).cls, ref.embed_tensor(big).cls).min() >= 0.9999
    assert cosine(ex.embed_tensor(photos[:1]).cls, ref.embed_tensor(photos[:1]).cls).min() >= 0.9999


def test_other_input_sizes_run_on_torch(photos: torch.Tensor) -> None:
    """Dense overlays use aspect-preserving sizes: those go to torch, with the same numbers as a torch extractor."""
    model = tiny_backbone(seed=5)
    ex = Extractor(model, device="cpu", precision="fp32", backend="openvino")
    wide = torch.nn.functional.interpolate(photos[:2], size=(224, 322), mode="bilinear")
    out = ex.forward(wide)
    assert out["x_norm_patchtokens"].shape == (2, 16 * 23, 128)
    ref = Extractor(model, device="cpu", precision="fp32", backend="torch").forward(wide)
    assert torch.allclose(out["x_norm_clstoken"], ref["x_norm_clstoken"], atol=1e-5)


def test_auto_takes_openvino_at_the_cpus_precision(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.delenv("DINOSCOPE_BACKEND", raising=False)
    with caplog.at_level(logging.INFO, logger="dinoscope.runtime"):
        ex = Extractor(tiny_backbone(seed=6), device="cpu")
    assert ex.backend == "openvino"
    assert ex.precision == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert "OpenVINO" in ex.backend_reason


def test_environment_variable_replaces_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINOSCOPE_BACKEND", "torch")
    assert Extractor(tiny_backbone(seed=6), device="cpu").backend == "torch"
    monkeypatch.setenv("DINOSCOPE_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="DINOSCOPE_BACKEND"):
        Extractor(tiny_backbone(seed=6), device="cpu")


def test_fp16_stays_on_torch_with_one_line_and_int8_goes_to_openvino(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog) -> None:
    monkeypatch.delenv("DINOSCOPE_BACKEND", raising=False)
    with caplog.at_level(logging.INFO, logger="dinoscope.runtime"):
        ex = Extractor(tiny_backbone(seed=6), device="cpu", precision="fp16")
    assert ex.backend == "torch" and ex.precision == "fp16"
    lines = [r.getMessage() for r in caplog.records if r.name == "dinoscope.runtime"]
    assert len(lines) == 1 and "fp16" in lines[0] and "torch runs the model" in lines[0]
    ex = Extractor(tiny_backbone(seed=6), device="cpu", precision="int8")
    assert ex.backend == "openvino" and ex.precision == "int8"


def test_bad_backend_and_openvino_device_names_are_refused() -> None:
    model = tiny_backbone(seed=6)
    with pytest.raises(ValueError, match="unknown backend"):
        Extractor(model, backend="tensorrt")
    with pytest.raises(ValueError, match="OpenVINO device"):
        Extractor(model, device="GPU", backend="torch")
    # This machine has no Intel GPU or NPU: asking for one says what OpenVINO does see.
    with pytest.raises(BackendUnavailable, match=r"no NPU device.*CPU"):
        Extractor(model, device="NPU")


def test_library_commands_refuse_an_unknown_backend_before_opening_the_library(capsys, dinoscope_home) -> None:
    from app.commands._library import open_with_model

    assert open_with_model("nowhere", None, backend="onnx") is None
    err = capsys.readouterr().err
    assert "unknown backend 'onnx'" in err and "nowhere" not in err


def test_a_query_that_needs_only_cls_gets_the_same_vectors_without_the_patch_copy(photos: torch.Tensor) -> None:
    """Searches by photo need only CLS: OpenVINO then leaves the patch tokens in its buffers (a 3-4 % copy at
    batch 32); the CLS vectors are those the indexer (patch tokens on) gets, and forward() still gives both."""
    model = tiny_backbone(seed=5)
    query = Extractor(model, device="cpu", precision="fp32", backend="openvino")
    index = Extractor(model, device="cpu", precision="fp32", backend="openvino", patch_tokens=True)
    assert query.patch_tokens is False
    assert set(query.runtime.run(photos, patches=False)) == {"x_norm_clstoken"}
    a, b = query.embed_tensor(photos), index.embed_tensor(photos)
    assert a.patch is None and b.patch is not None
    np.testing.assert_array_equal(a.cls, b.cls)
    assert set(query.forward(photos)) == {"x_norm_clstoken", "x_norm_patchtokens"}


def test_int8_runs_on_openvino_and_keeps_the_vectors(dinoscope_home: Path) -> None:
    """`--precision int8`: NNCF's quantisation calibrated on photos the test does not score keeps CLS within the
    0.995 the issue asks. A full-size ViT-S/14 (official init) on 16 photos, calibrated on the other 14: tiny models
    and fewer photos stay near 1.0 with any recipe, while this split shows the difference (every linear quantised:
    worst photo 0.990; ours: 0.9994). fp32 converted on the way is not changed by it."""
    from engine.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("dinov2_vits14").eval()
    files = sorted(SAMPLE.rglob("*.jpg"))
    photos = torch.stack([eval_input(p) for p in files[:16]])
    calibration = torch.stack([eval_input(p) for p in files[16:]])
    ref = Extractor(model, device="cpu", precision="fp32", backend="torch", patch_tokens=True).embed_tensor(photos)
    ex = Extractor(model, device="cpu", precision="int8", calibration=calibration, patch_tokens=True,
                   backend="openvino")
    assert (ex.backend, ex.precision) == ("openvino", "int8")
    assert "quantize_s" in ex.runtime.timings
    got = ex.embed_tensor(photos)
    assert cosine(got.cls, ref.cls).min() >= 0.995
    assert cosine(got.patch, ref.patch).mean() >= 0.999
    fp32 = Extractor(model, device="cpu", precision="fp32", backend="openvino")
    assert cosine(fp32.embed_tensor(photos).cls, ref.cls).min() >= 0.9999
    # other sizes (dense overlays) run on torch's dynamic int8
    wide = torch.nn.functional.interpolate(photos[:2], size=(224, 308))
    assert ex.forward(wide)["x_norm_patchtokens"].shape == (2, 16 * 22, 384)


def test_int8_calibrates_on_the_sample_library_once_and_caches_the_result(photos: torch.Tensor,
                                                                           dinoscope_home: Path) -> None:
    model = tiny_backbone(seed=6)
    first = Extractor(model, device="cpu", precision="int8", backend="openvino")
    assert (first.backend, first.runtime.cache_status) == ("openvino", "new")
    again = Extractor(model, device="cpu", precision="int8", backend="openvino")
    assert (again.backend, again.runtime.cache_status) == ("openvino", "hit")
    assert "quantize_s" not in again.runtime.timings
    np.testing.assert_allclose(again.embed_tensor(photos).cls, first.embed_tensor(photos).cls, atol=1e-6)
    # another calibration set is another model, in its own file; the bf16/fp32 blob is not replaced either
    Extractor(model, device="cpu", precision="int8", calibration=photos, backend="openvino")
    Extractor(model, device="cpu", precision="fp32", backend="openvino")
    assert len(list((dinoscope_home / "cache" / "openvino").glob("*.ovblob"))) == 3
