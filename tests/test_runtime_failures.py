"""When OpenVINO cannot help: a corrupt or stale compiled-model cache, a missing install, a model it cannot convert.

Each case falls back to torch or rebuilds the cache with one clear line, and the vectors stay right.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.extract import Extractor, eval_input
from engine.runtime import BackendUnavailable, ov_cache
from tests.helpers import tiny_backbone

pytestmark = pytest.mark.openvino  # in-process OpenVINO: run in its own pytest process (see the Makefile)

pytest.importorskip("openvino")

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample"


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return torch.stack([eval_input(p) for p in sorted(SAMPLE.rglob("*.jpg"))[:4]])


@pytest.fixture
def reference(photos: torch.Tensor) -> np.ndarray:
    return Extractor(tiny_backbone(seed=7), device="cpu", precision="fp32", backend="torch").embed_tensor(photos).cls


def runtime_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dinoscope.runtime" and r.levelno >= logging.WARNING]


def open_ov(caplog) -> Extractor:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dinoscope.runtime"):
        return Extractor(tiny_backbone(seed=7), device="cpu", precision="fp32", backend="auto")


def cache_file(dinoscope_home: Path) -> Path:
    files = list((dinoscope_home / "cache" / "openvino").glob("*.ovblob"))
    assert len(files) == 1, files
    return files[0]


def rewrite_header(path: Path, **changes) -> None:
    data = path.read_bytes()
    start = len(ov_cache.MAGIC) + 4
    (hlen,) = struct.unpack_from("<I", data, len(ov_cache.MAGIC))
    header = json.loads(data[start : start + hlen])
    header.update(changes)
    head = json.dumps(header).encode()
    path.write_bytes(ov_cache.MAGIC + struct.pack("<I", len(head)) + head + data[start + hlen :])


@pytest.fixture(autouse=True)
def auto_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DINOSCOPE_BACKEND", raising=False)


def test_second_start_loads_the_compiled_model(dinoscope_home: Path, photos, reference, caplog) -> None:
    first = open_ov(caplog)
    assert first.backend == "openvino" and first.runtime.cache_status == "new"
    path = cache_file(dinoscope_home)
    assert path.read_bytes().startswith(ov_cache.MAGIC)
    second = open_ov(caplog)
    assert second.runtime.cache_status == "hit" and "import_s" in second.runtime.timings
    assert (second.embed_tensor(photos).cls * reference).sum(1).min() >= 0.9999
    assert runtime_lines(caplog) == []


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:-5000] + bytes(5000)), "checksum"),
    (lambda p: p.write_bytes(b"\x00" * 64), "not a Dinoscope compiled-model file"),
    (lambda p: rewrite_header(p, openvino="2024.0.0-0000"), "made by OpenVINO 2024.0.0"),
    (lambda p: rewrite_header(p, weights="0" * 64), "made for another weights"),
    (lambda p: rewrite_header(p, code="0" * 24), "converted from other model code"),  # Dinoscope was updated
])
def test_a_damaged_or_stale_cache_is_rebuilt_with_one_line(dinoscope_home: Path, photos, reference, caplog,
                                                           damage, why) -> None:
    open_ov(caplog)
    path = cache_file(dinoscope_home)
    damage(path)
    ex = open_ov(caplog)
    lines = runtime_lines(caplog)
    assert len(lines) == 1 and why in lines[0] and str(path) in lines[0] and "rebuilding" in lines[0]
    assert ex.backend == "openvino" and ex.runtime.cache_status == "rebuilt"
    assert (ex.embed_tensor(photos).cls * reference).sum(1).min() >= 0.9999
    assert open_ov(caplog).runtime.cache_status == "hit"  # the rebuilt file is whole again


def test_a_missing_openvino_install_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch, photos, reference,
                                                        caplog) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # exactly what `import openvino` meets without the package
    ex = open_ov(caplog)
    lines = runtime_lines(caplog)
    assert ex.backend == "torch"
    assert len(lines) == 1 and "OpenVINO is not installed" in lines[0] and "torch runs the model" in lines[0]
    assert np.abs(ex.embed_tensor(photos).cls - reference).max() < 1e-5
    with pytest.raises(BackendUnavailable, match="not installed"):
        Extractor(tiny_backbone(seed=7), device="cpu", backend="openvino")


class Unconvertible(torch.nn.Module):
    """A final norm built on an operation OpenVINO has no conversion rule for."""

    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) + 0.0 * torch.special.bessel_j0(x)


def test_a_model_openvino_cannot_convert_falls_back_to_torch(photos, caplog) -> None:
    model = tiny_backbone(seed=8)
    model.norm = Unconvertible(model.norm)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dinoscope.runtime"):
        ex = Extractor(model, device="cpu", precision="fp32")
    lines = runtime_lines(caplog)
    assert ex.backend == "torch"
    assert len(lines) == 1 and "could not convert" in lines[0] and "bessel_j0" in lines[0]
    ref = Extractor(model, device="cpu", precision="fp32", backend="torch").embed_tensor(photos).cls
    assert np.abs(ex.embed_tensor(photos).cls - ref).max() < 1e-6
    with pytest.raises(BackendUnavailable, match="could not convert"):
        Extractor(model, device="cpu", backend="openvino")


def test_int8_without_nncf_falls_back_to_torch_int8(monkeypatch: pytest.MonkeyPatch, photos, reference,
                                                     caplog) -> None:
    """A bundle or install without NNCF: `--precision int8` still runs (torch's dynamic quantisation), and says
    why in one line; forcing OpenVINO says what is missing."""
    monkeypatch.delenv("DINOSCOPE_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "nncf", None)  # what `import nncf` meets without the package
    with caplog.at_level(logging.INFO, logger="dinoscope.runtime"):
        ex = Extractor(tiny_backbone(seed=7), device="cpu", precision="int8")
    lines = runtime_lines(caplog)
    assert (ex.backend, ex.precision) == ("torch", "int8")
    assert len(lines) == 1 and "needs NNCF" in lines[0] and "torch runs the model" in lines[0]
    assert (ex.embed_tensor(photos).cls * reference).sum(1).min() >= 0.99
    with pytest.raises(BackendUnavailable, match="needs NNCF"):
        Extractor(tiny_backbone(seed=7), device="cpu", precision="int8", backend="openvino")


def test_a_build_that_failed_is_not_tried_again_in_the_same_process(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog) -> None:
    """The folder watcher makes an Extractor per batch: a conversion or quantisation that failed (here: nothing to
    calibrate int8 on) costs its seconds once, and the later batches go straight to torch with the same reason."""
    monkeypatch.delenv("DINOSCOPE_BACKEND", raising=False)
    model = tiny_backbone(seed=11)
    nothing = torch.zeros(0, 3, 224, 224)
    with caplog.at_level(logging.INFO, logger="dinoscope.runtime"):
        first = Extractor(model, device="cpu", precision="int8", calibration=nothing)
        again = Extractor(model, device="cpu", precision="int8", calibration=nothing)
    assert (first.backend, again.backend) == ("torch", "torch")
    lines = runtime_lines(caplog)
    assert len(lines) == 2 and all("none were found" in line for line in lines)
    assert "not tried again" not in lines[0] and "not tried again" in lines[1]
