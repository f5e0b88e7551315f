"""Device and precision choice (engine/device.py) with the hardware mocked: CPU flags, CUDA, MPS."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import device as dev

SAPPHIRE_RAPIDS = "flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ICE_LAKE = "flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_vnni\n"
COOPER_LAKE = "flags\t\t: fpu sse avx2 avx512f avx512_bf16\n"


@pytest.fixture
def cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point cpu_has_fast_bf16 at a fake /proc/cpuinfo with the given text (None: no such file)."""
    real_path = dev.Path

    def use(text: str | None) -> None:
        fake = tmp_path / "cpuinfo"
        fake.unlink(missing_ok=True)
        if text is not None:
            fake.write_text(text)
        monkeypatch.setattr(dev, "Path", lambda p: fake if p == "/proc/cpuinfo" else real_path(p))
        dev.cpu_has_fast_bf16.cache_clear()

    yield use
    dev.cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize("text, fast", [(SAPPHIRE_RAPIDS, True), (COOPER_LAKE, True), (ICE_LAKE, False),
                                        (None, False)])
def test_cpu_bf16_follows_the_cpu_flags(cpuinfo, text: str | None, fast: bool) -> None:
    cpuinfo(text)
    assert dev.cpu_has_fast_bf16() is fast
    assert dev.pick_dtype(torch.device("cpu")) == (torch.bfloat16 if fast else torch.float32)


def test_a_flag_name_inside_another_word_does_not_count(cpuinfo) -> None:
    cpuinfo("flags\t\t: fpu avx512_bf16x amx_bf16_lite\n")
    assert dev.cpu_has_fast_bf16() is False


def test_cuda_prefers_bf16_and_falls_back_to_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.pick_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100 or a T4
    assert dev.pick_dtype(torch.device("cuda:1")) == torch.float16


def test_mps_runs_fp16() -> None:
    assert dev.pick_dtype(torch.device("mps")) == torch.float16


def test_named_precisions_win_over_the_hardware(cpuinfo) -> None:
    cpuinfo(ICE_LAKE)
    assert dev.pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert dev.pick_dtype(torch.device("cuda"), "fp32") == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        dev.pick_dtype(torch.device("cpu"), "fp8")


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda, mps = [False], [False]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda[0])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps[0])
    assert dev.pick_device("auto") == torch.device("cpu")
    mps[0] = True
    assert dev.pick_device("auto") == torch.device("mps")
    cuda[0] = True
    assert dev.pick_device("auto") == torch.device("cuda")
    assert dev.pick_device("cuda:1") == torch.device("cuda:1")


def test_a_device_the_machine_lacks_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"--device cuda .* no CUDA GPU"):
        dev.pick_device("cuda")
    with pytest.raises(RuntimeError, match=r"--device mps .* no MPS"):
        dev.pick_device("mps")
    assert dev.pick_device("cpu") == torch.device("cpu")


def test_openvino_device_names_are_told_apart_from_torch_ones() -> None:
    assert dev.openvino_device("GPU") == "GPU"
    assert dev.openvino_device("GPU.1") == "GPU.1"
    assert dev.openvino_device("NPU") == "NPU"
    for torch_name in ("auto", "cpu", "cuda", "cuda:1", "mps", "gpu"):
        assert dev.openvino_device(torch_name) is None
    with pytest.raises(ValueError, match="OpenVINO device"):
        dev.pick_device("GPU")


def test_describe_names_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert dev.describe(torch.device("cuda")) == "CUDA (NVIDIA H200)"
    assert dev.describe(torch.device("mps")) == "Apple MPS"
    assert dev.describe(torch.device("cpu")) == "CPU"


def test_an_int8_preference_applies_on_the_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The window's "index with int8" is a preference: a run that lands on a GPU (auto with CUDA, an OpenVINO GPU)
    takes the automatic precision instead of failing with "int8 runs on the CPU only"."""
    assert dev.index_precision(True, "cpu") == "int8" and dev.index_precision(False, "cpu") == "auto"
    assert dev.index_precision(True, "GPU") == "auto" and dev.index_precision(True, "NPU") == "auto"
    assert dev.index_precision(True, "cuda") == "auto"  # no GPU here: the run reports that, not the preference
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.index_precision(True, "auto") == "auto"


def test_an_int8_preference_without_nncf_indexes_at_the_automatic_precision(monkeypatch) -> None:
    """torch's int8, the fallback, is slower than bf16: without NNCF (the bundle) the preference gives way."""
    import sys

    monkeypatch.setitem(sys.modules, "nncf", None)
    assert dev.index_precision(True, "cpu") == "auto"
