"""A library indexed with one backend is searchable with the other, and the CLI's --backend reaches the engine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import search
from engine.extract import Extractor
from engine.store import Library, index_library
from tests.helpers import tiny_backbone

pytestmark = pytest.mark.openvino  # in-process OpenVINO: run in its own pytest process (see the Makefile)

pytest.importorskip("openvino")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "photos"
    out.mkdir()
    for p in sorted(SAMPLE.rglob("*.jpg"))[:6]:
        shutil.copy(p, out / p.name)
    return out


@pytest.mark.parametrize("indexed_with, searched_with", [("openvino", "torch"), ("torch", "openvino")])
def test_indexed_with_one_backend_searched_with_the_other(tmp_path: Path, folder: Path, indexed_with: str,
                                                          searched_with: str) -> None:
    model = tiny_backbone(seed=9)
    with Library.open(tmp_path / "lib") as lib:
        report = index_library(lib, model, folders=[folder], device="cpu", precision="fp32", backend=indexed_with)
        assert report.failed == 0 and report.new == 6
        ex = Extractor(model, device="cpu", precision="fp32", backend=searched_with)
        assert ex.backend == searched_with
        for photo in sorted(folder.glob("*.jpg")):
            hits = search.search_by_images(lib, ex, [photo], k=3, model_id=report.model_id)
            own = [h for h in hits if Path(h.path).name == photo.name]  # (the sample has near-duplicates)
            assert own and own[0].score >= 0.9999 and hits[0].score - own[0].score < 1e-4


def test_cli_embed_and_index_take_the_backend(tmp_path: Path, folder: Path) -> None:
    checkpoint = tmp_path / "tiny.pth"
    torch.save(tiny_backbone(seed=9).state_dict(), checkpoint)
    env = dict(os.environ, DINOSCOPE_HOME=str(tmp_path / "home"), DINOSCOPE_BACKEND="")
    env.pop("DINOSCOPE_BACKEND")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)

    vectors = {}
    for backend in ("openvino", "torch"):
        r = cli("embed", str(folder), "--model", str(checkpoint), "--dtype", "fp32", "--device", "cpu",
                "--backend", backend, "--out", str(tmp_path / f"{backend}.npy"))
        assert r.returncode == 0, r.stderr
        assert f"{backend} fp32" in r.stderr
        vectors[backend] = np.load(tmp_path / f"{backend}.npy")
    assert (vectors["openvino"] * vectors["torch"]).sum(1).min() >= 0.9999

    r = cli("index", str(folder), "--library", str(tmp_path / "lib"), "--model", str(checkpoint),
            "--backend", "openvino", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"model {checkpoint}: openvino " in r.stderr  # says what embedded the photos
    r = cli("embed", str(folder), "--model", str(checkpoint), "--backend", "onnx", "--out", str(tmp_path / "x.npy"))
    assert r.returncode == 2 and "invalid choice: 'onnx'" in r.stderr
    r = cli("embed", str(folder), "--model", str(checkpoint), "--device", "NPU", "--out", str(tmp_path / "x.npy"))
    assert r.returncode == 2 and "error: OpenVINO sees no NPU device" in r.stderr


def test_cli_embed_int8_keeps_stdout_for_results(tmp_path: Path, folder: Path) -> None:
    """`embed --dtype int8` quantises with NNCF on first use; NNCF's INFO lines and progress bars would land on
    stdout, where scripts read the CLI's results. The output is the same as fp32's, and says it ran int8."""
    checkpoint = tmp_path / "tiny.pth"
    torch.save(tiny_backbone(seed=9).state_dict(), checkpoint)
    env = {k: v for k, v in os.environ.items() if k != "DINOSCOPE_BACKEND"}
    env["DINOSCOPE_HOME"] = str(tmp_path / "home")
    out = {}
    for dtype in ("fp32", "int8"):
        r = subprocess.run([sys.executable, "-m", "app", "embed", str(folder), "--model", str(checkpoint), "--dtype",
                            dtype, "--device", "cpu", "--out", str(tmp_path / f"{dtype}.npy")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"openvino {dtype}" in r.stderr
        out[dtype] = r.stdout.replace(f"{dtype}.", "X.")
    assert out["int8"] == out["fp32"]
    assert (np.load(tmp_path / "int8.npy") * np.load(tmp_path / "fp32.npy")).sum(1).min() >= 0.99
