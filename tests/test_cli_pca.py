"""`python -m app pca` as a user runs it: a real subprocess, real photos, a real (random-weight) checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_backbone

ROOT = Path(__file__).resolve().parents[1]


def run_pca(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DINOSCOPE_HOME=str(home), TORCH_HOME=str(home / "torch"))
    env["DINOSCOPE_ZOO_URL"] = "http://127.0.0.1:9"  # nothing listens: behaves like an offline machine
    return subprocess.run([sys.executable, "-m", "app", "pca", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(tiny_backbone(registers=4).state_dict(), path)
    return path


@pytest.fixture
def photos(tmp_path: Path, skimage_data_dir: Path) -> Path:
    d = tmp_path / "my photos"
    (d / "sub").mkdir(parents=True)
    Image.open(skimage_data_dir / "astronaut.png").convert("RGB").save(d / "astronaut.jpg", quality=92)
    Image.open(skimage_data_dir / "coffee.png").save(d / "sub" / "coffee.png")
    Image.open(skimage_data_dir / "chelsea.png").save(d / "sub" / "astronaut.png")  # same stem as the JPEG
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_joint_overlays_for_a_folder_skip_the_bad_file(checkpoint: Path, photos: Path, tmp_path: Path,
                                                       dinoscope_home: Path) -> None:
    out = tmp_path / "out"
    r = run_pca(str(photos), "--out", str(out), "--model", str(checkpoint), "--joint", "--resolution", "112",
                home=dinoscope_home)
    assert r.returncode == 1, r.stderr  # written, with one failure reported
    assert "broken.jpg" in r.stderr and "skipped" in r.stderr
    assert "features" in r.stderr and "overlays" in r.stderr  # progress
    written = sorted(p.name for p in out.iterdir())
    assert written == ["astronaut-2_pca.png", "astronaut_pca.png", "coffee_pca.png"]
    assert size_of(out / "astronaut_pca.png") == (512, 512)  # blend: the photo's own size
    assert size_of(out / "coffee_pca.png") == (600, 400)
    assert size_of(out / "astronaut-2_pca.png") == (451, 300)
    pic = np.asarray(Image.open(out / "coffee_pca.png"))
    assert pic.dtype == np.uint8 and pic.shape == (400, 600, 3) and pic.std() > 0


def test_side_by_side_bicubic_dimmed(checkpoint: Path, photos: Path, tmp_path: Path, dinoscope_home: Path) -> None:
    out = tmp_path / "side"
    src = photos / "sub" / "coffee.png"
    r = run_pca(str(src), "--out", str(out), "--model", str(checkpoint), "--mode", "side", "--upsample", "bicubic",
                "--background", "dimmed", "--threshold", "0.4", "--resolution", "112", "--dtype", "fp32",
                home=dinoscope_home)
    assert r.returncode == 0, r.stderr
    pic = np.asarray(Image.open(out / "coffee_pca.png"))
    assert pic.shape == (400, 1200, 3)
    assert np.array_equal(pic[:, :600], np.asarray(Image.open(src).convert("RGB")))  # the photo, untouched
    assert "wrote 1 overlay" in r.stdout


def test_nothing_readable_writes_nothing(checkpoint: Path, photos: Path, tmp_path: Path,
                                         dinoscope_home: Path) -> None:
    out = tmp_path / "none"
    r = run_pca(str(photos / "broken.jpg"), "--out", str(out), "--model", str(checkpoint), home=dinoscope_home)
    assert r.returncode == 2
    assert "no overlay written" in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_bad_arguments_are_refused_before_any_work(checkpoint: Path, photos: Path, tmp_path: Path,
                                                   dinoscope_home: Path) -> None:
    out = tmp_path / "bad"
    r = run_pca(str(photos), "--out", str(out), "--model", str(checkpoint), "--threshold", "1.5",
                home=dinoscope_home)
    assert r.returncode == 2 and "--threshold" in r.stderr and not out.exists()
    r = run_pca(str(tmp_path / "missing.jpg"), "--out", str(out), "--model", str(checkpoint), home=dinoscope_home)
    assert r.returncode == 2 and "no such file" in r.stderr
