"""The learning test: a couple of minutes of the tiny-cpu preset makes k-NN clearly better than random weights.

Data: four classes of real photos (scikit-image's astronaut, coffee, cat and rocket), 48 crops each at varied
position, scale, flip and brightness, half of them turned grey. Random weights mostly see colour, which half the
crops lack; self-supervised training with the DINOv2 augmentations (colour jitter, greyscale) learns features
that do not depend on it. The run's result, the EMA teacher, is compared with the same architecture at its
initialisation (the teacher before the first step), by the k-NN protocol of trainer/evaluate.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from engine.models import load_backbone
from trainer.config import apply_overrides, preset
from trainer.evaluate import evaluate_backbone
from trainer.meta_arch import SSLMetaArch
from trainer.train import train

CLASSES = {"astronaut": "astronaut.png", "coffee": "coffee.png", "cat": "chelsea.png", "rocket": "rocket.jpg"}
STEPS = 100


def make_classes(root: Path, data_dir: Path, per_class: int = 48, grey: float = 0.5) -> Path:
    rng = np.random.default_rng(0)
    for name, f in CLASSES.items():
        img = Image.open(data_dir / f).convert("RGB")
        w, h = img.size
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            s = rng.uniform(0.35, 0.8)
            cw, ch = int(w * s), int(h * s)
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = img.crop((x, y, x + cw, y + ch)).resize((128, 128), Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
            if rng.random() < grey:
                crop = crop.convert("L").convert("RGB")
            crop.save(root / name / f"{i:03d}.jpg", quality=90)
    return root


@pytest.mark.slow
def test_tiny_cpu_preset_learns_features_that_beat_random_init(tmp_path: Path, skimage_data_dir: Path):
    data = make_classes(tmp_path / "photos", skimage_data_dir)
    # The preset's recipe with its schedules (1 warm-up epoch of 10, teacher temperature over 3, last layer
    # frozen for 1) compressed into STEPS iterations.
    cfg = apply_overrides(preset("tiny-cpu"), [
        f"data.source={data}", "optim.epochs=1", f"optim.iters_per_epoch={STEPS}", "optim.warmup_epochs=0.1",
        "teacher.warmup_temp_epochs=0.3", "optim.freeze_last_layer_epochs=0.1",
    ])
    torch.manual_seed(cfg.seed)
    initial = SSLMetaArch(cfg).teacher["backbone"].eval()  # the run builds the very same weights
    before = evaluate_backbone(initial, data, device="cpu", precision="fp32")

    summary = train(cfg, tmp_path / "run", log_every=10, checkpoint_every=STEPS)
    assert summary.status == "done" and summary.step == STEPS
    after = evaluate_backbone(load_backbone(tmp_path / "run" / "teacher_backbone.pt"), data, device="cpu",
                              precision="fp32")

    print(f"\nk-NN top-1: random init {before['knn_top1']:.3f} -> trained {after['knn_top1']:.3f}; linear "
          f"{before['linear_top1']:.3f} -> {after['linear_top1']:.3f} ({after['n_val']} val images, {STEPS} steps)")
    assert after["n_val"] == before["n_val"] == 48
    assert after["knn_top1"] >= before["knn_top1"] + 0.08
