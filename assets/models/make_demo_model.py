"""Rebuild assets/models/dinoscope-tiny-demo.pth: the small model a first start indexes the sample photos with.

The official DINOv2 weights are a download (88 MB for ViT-S/14) that a first start offline cannot make. So the
app ships a tiny ViT (192-d, 6 blocks, patch 14, 2.7 M parameters) trained by Dinoscope's own trainer with the
DINOv2 recipe (preset `tiny-cpu`: DINO + iBOT losses, Sinkhorn-Knopp, KoLeo, multi-crop, masking, EMA teacher)
on public-domain images only: openclipart-png's clip art (Debian package, CC0) and scikit-image's bundled
photos (repeated 30 times so that photos are about a tenth of what the model sees). The teacher's backbone is
saved in half precision (5.5 MB). It is a demo: it groups the sample photos, but real libraries want ViT-S/14.

    python assets/models/make_demo_model.py [--steps 1000] [--out runs/demo-model]

Needs `apt-get install openclipart-png` and the dev requirements (scikit-image). About 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "assets" / "models" / "dinoscope-tiny-demo.pth"
CLIPART = Path("/usr/share/openclipart/png")
MAX_PIXELS = 16e6  # openclipart holds a few posters of 100+ MP: skipped rather than decoded 16k times
PHOTO_REPEATS = 30


def training_list(out: Path) -> Path:
    """A text file of images: every distinct openclipart PNG (no symlinked duplicates) and the skimage photos."""
    import skimage
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # only the header is read; the size check below keeps the posters out

    if not CLIPART.is_dir():
        sys.exit(f"{CLIPART} is missing: apt-get install openclipart-png")
    clipart = []
    for path in sorted(CLIPART.rglob("*.png")):
        if path.is_symlink():
            continue
        try:
            with Image.open(path) as im:
                w, h = im.size
        except OSError:
            continue
        if w * h <= MAX_PIXELS and min(w, h) >= 64:
            clipart.append(str(path))
    photos = sorted(str(p) for p in (Path(skimage.__file__).parent / "data").iterdir()
                    if p.suffix in (".png", ".jpg"))
    listing = out / "images.txt"
    out.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(clipart + photos * PHOTO_REPEATS) + "\n")
    print(f"{len(clipart)} clip-art images, {len(photos)} photos x {PHOTO_REPEATS}")
    return listing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000, help="training steps of 16 images")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo-model")
    args = ap.parse_args()
    listing = training_list(args.out)
    run = args.out / "run"
    cmd = [sys.executable, "-m", "app", "train", "--preset", "tiny-cpu", "--data", str(listing), "--out", str(run),
           "--eval-data", str(ROOT / "assets" / "sample"), "--log-every", "50",
           "--set", f"optim.epochs={args.steps // 100}", "optim.iters_per_epoch=100"]
    if (run / "config.yaml").exists() or (run / "config.json").exists():
        cmd += ["--resume"]
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    export(run / "teacher_backbone.pt", TARGET)


def export(teacher: Path, target: Path) -> None:
    """The teacher backbone in half precision (the app computes in fp32/bf16 and upcasts on load)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from engine.models import load_backbone
    from engine.models.checkpoint import save_backbone

    model = load_backbone(str(teacher)).half()
    save_backbone(model, target)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB, {sum(p.numel() for p in model.parameters())} "
          f"parameters, torch {torch.__version__})")


if __name__ == "__main__":
    main()
