"""The command line as a user runs it: a real subprocess, real files, real checkpoints."""

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


def run_cli(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DINOSCOPE_HOME=str(env_home), TORCH_HOME=str(env_home / "torch"))
    env["DINOSCOPE_ZOO_URL"] = "http://127.0.0.1:9"  # nothing listens: behaves like an offline machine
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_backbone(registers=4).state_dict(), path)
    return path


@pytest.fixture
def photo_dir(tmp_path: Path, skimage_data_dir: Path) -> Path:
    d = tmp_path / "my photos"
    (d / "sub").mkdir(parents=True)
    Image.open(skimage_data_dir / "astronaut.png").convert("RGB").save(d / "astronaut.jpg", quality=92)
    Image.open(skimage_data_dir / "coffee.png").save(d / "sub" / "coffee.png")
    Image.open(skimage_data_dir / "chelsea.png").save(d / "chelsea.webp")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "readme.txt").write_text("not an image, skipped by extension")
    (d / ".hidden.jpg").write_bytes(b"")
    return d


def test_help_lists_the_commands(dinoscope_home: Path) -> None:
    r = run_cli("--help", env_home=dinoscope_home)
    assert r.returncode == 0
    assert "embed" in r.stdout and "models" in r.stdout


def test_embed_a_folder_reports_the_bad_file_and_writes_the_rest(
    checkpoint: Path, photo_dir: Path, tmp_path: Path, dinoscope_home: Path
) -> None:
    out = tmp_path / "feats.npy"
    r = run_cli("embed", str(photo_dir), "--model", str(checkpoint), "--out", str(out), "--batch", "2",
                "--dtype", "fp32", env_home=dinoscope_home)
    assert r.returncode == 1, r.stderr  # partial success: output written, the failure reported
    assert "broken.jpg" in r.stderr and "skipped" in r.stderr
    feats = np.load(out)
    listed = (tmp_path / "feats.paths.txt").read_text().split("\n")[:-1]
    assert feats.shape == (3, 128) and len(listed) == 3
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert [Path(p).name for p in listed] == ["astronaut.jpg", "chelsea.webp", "coffee.png"]
    assert "embedding" in r.stderr  # the progress bar


def test_embed_with_patch_tokens_writes_npz(checkpoint: Path, photo_dir: Path, tmp_path: Path,
                                            dinoscope_home: Path) -> None:
    files = [str(photo_dir / "astronaut.jpg"), str(photo_dir / "chelsea.webp")]
    r = run_cli("embed", *files, "--model", str(checkpoint), "--out", str(tmp_path / "f.npz"), "--patch",
                env_home=dinoscope_home)
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "f.npz")
    assert z["cls"].shape == (2, 128) and z["patch"].shape == (2, 256, 128)
    assert list(z["grid"]) == [16, 16] and len(z["paths"]) == 2


def test_embed_with_a_bad_checkpoint_says_why(photo_dir: Path, tmp_path: Path, dinoscope_home: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    r = run_cli("embed", str(photo_dir), "--model", str(bad), "--out", str(tmp_path / "x.npy"),
                env_home=dinoscope_home)
    assert r.returncode == 2 and "bad.pth" in r.stderr
    assert not (tmp_path / "x.npy").exists()


def test_embed_offline_zoo_model_names_the_url(photo_dir: Path, tmp_path: Path, dinoscope_home: Path) -> None:
    r = run_cli("embed", str(photo_dir), "--model", "dinov2_vits14", "--out", str(tmp_path / "x.npy"),
                env_home=dinoscope_home)
    assert r.returncode == 2
    assert "dinov2_vits14_pretrain.pth" in r.stderr and "save it as" in r.stderr


def test_models_lists_the_zoo_with_download_state(dinoscope_home: Path) -> None:
    cached = dinoscope_home / "cache" / "models"
    cached.mkdir(parents=True)
    torch.save(tiny_backbone().state_dict(), cached / "dinov2_vitb14_pretrain.pth")
    r = run_cli("models", env_home=dinoscope_home)
    assert r.returncode == 0
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert len(lines) == 8
    assert "not downloaded" in lines["dinov2_vits14"]
    assert "downloaded" in lines["dinov2_vitb14"] and "not" not in lines["dinov2_vitb14"]


def test_models_download_unknown_name(dinoscope_home: Path) -> None:
    r = run_cli("models", "download", "dinov2_vitq14", env_home=dinoscope_home)
    assert r.returncode == 2 and "dinov2_vits14" in r.stderr
