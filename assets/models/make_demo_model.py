"""Rebuild assets/models/dinoscope-tiny-demo.pth: the small model a first start indexes the sample photos with.

The official DINOv2 weights are a download (88 MB for ViT-S/14) that a first start offline cannot make. So the
app ships a tiny ViT (192-d, 6 blocks, patch 14, 2.8 M parameters) trained by Dinoscope's own trainer with the
DINOv2 recipe (preset `tiny-cpu`: DINO + iBOT losses, Sinkhorn-Knopp, KoLeo, multi-crop, masking, EMA teacher)
on public-domain / CC0 images only: openclipart-png's clip art (Debian package, CC-PDDC) and the scikit-image
photos whose own docstring states CC0 or public domain (`PHOTOS`; the others are left out, see `EXCLUDED`),
repeated so that photos are about a tenth of what the model sees. The teacher's backbone is saved in half
precision (5.6 MB). It is a demo: it groups the sample photos, but real libraries want ViT-S/14.

The k-NN figures are measured on images the model never saw: a quarter of 8 openclipart categories kept out of
training (`clipart_heldout`), and the sample library's photos that come from neither training source
(`heldout_folder`). A rebuild also writes assets/models/LICENSES.md, the training images and their licences.

    python assets/models/make_demo_model.py [--steps 1000] [--out runs/demo-model]
    python assets/models/make_demo_model.py --evaluate MODEL.pth [MODEL.pth ...]

Needs `apt-get install openclipart-png` and the dev requirements (scikit-image). About 17 minutes on 2 idle
CPU cores.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "assets" / "models" / "dinoscope-tiny-demo.pth"
SAMPLE = ROOT / "assets" / "sample"
CLIPART = Path("/usr/share/openclipart/png")
MAX_PIXELS = 16e6  # openclipart holds a few posters of 100+ MP: skipped rather than decoded 16k times
PHOTO_REPEATS = 50

# scikit-image's bundled photos kept for training: file -> (skimage.data function, author / credit, licence as
# the function's docstring states it). Only CC0 or public domain.
PHOTOS = {
    "astronaut.png": ("astronaut", "NASA (NASA Great Images database)",
                      "LicenseRef-PublicDomain ('No known copyright restrictions, released into the public domain')"),
    "brick.png": ("brick", "CC0Textures, Bricks25", "CC0-1.0 ('licensed under the Creative Commons CC0 License')"),
    "camera.png": ("camera", "Lav Varshney", "CC0-1.0 ('No copyright restrictions. CC0 by the photographer')"),
    "cell.png": ("cell", "Paul Müller et al., Optics Express 26(8) 2018",
                 "CC0-1.0 ('This image is CC0, dedicated to the public domain')"),
    "chelsea.png": ("chelsea", "Stefan van der Walt",
                    "CC0-1.0 ('No copyright restrictions. CC0 by the photographer')"),
    "clock_motion.png": ("clock", "Stefan van der Walt",
                         "LicenseRef-PublicDomain ('Released into the public domain by the photographer')"),
    "coffee.png": ("coffee", "Rachel Michetti", "CC0-1.0 ('No copyright restrictions. CC0 by the photographer')"),
    "grass.png": ("grass", "linolafett (DeviantArt, Grass-01)",
                  "CC0-1.0 ('licensed under the Creative Commons CC0 License')"),
    "gravel.png": ("gravel", "CC0Textures, Gravel04", "CC0-1.0 ('licensed under the Creative Commons CC0 License')"),
    "horse.png": ("horse", "Andreas Preuss (marauder), openclipart",
                  "CC0-1.0 ('No copyright restrictions. CC0 given by owner')"),
    "hubble_deep_field.jpg": ("hubble_deep_field", "NASA, Hubble eXtreme Deep Field (HubbleSite 2012-37)",
                              "LicenseRef-PublicDomain ('may be freely used in the public domain')"),
    "microaneurysms.png": ("microaneurysms", "Andreas Maier, HRF Image Database",
                           "CC0-1.0 ('No copyright restrictions. CC0 given by owner')"),
    "retina.jpg": ("retina", "Mikael Häggström, Wikimedia Commons",
                   "CC0-1.0 ('Creative Commons CC0 1.0 Universal Public Domain Dedication')"),
    "rocket.jpg": ("rocket", "SpaceX (DSCOVR launch)", "LicenseRef-PublicDomain ('released in the public domain')"),
    "text.png": ("text", "Wikipedia, File:Corner.png",
                 "LicenseRef-PublicDomain ('No known copyright restrictions, released into the public domain')"),
}
# Bundled files left out: their docstring states no licence, or only "No known copyright restrictions".
EXCLUDED = ("chessboard_GRAY.png", "chessboard_RGB.png", "coins.png", "color.png", "ihc.png", "logo.png",
            "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png", "phantom.png")
# Sample photos left out of the held-out set although their package is not a training source:
# the Tux Paint ladybug is the Open Clip Art drawing by "vance" (in openclipart-png), the Tux Paint stamps
# have no per-stamp credit (they may be Open Clip Art drawings too), and the second copy of each near-duplicate
# pair would find its twin.
HELDOUT_SKIP = {"clipart", "elephants-960.jpg", "forest-path-screenshot.jpg", "boats-evening-glow-screenshot.jpg",
                "wood-slats-dark.webp"}
TRAINING_SOURCES = ("openclipart-png", "scikit-image")
# openclipart categories a quarter of whose drawings (chosen by a hash of the path) are held out of training and
# classified by k-NN afterwards: a larger held-out set than the sample photos, with 8 visually distinct classes.
CLIPART_HELDOUT_CLASSES = ("animals", "buildings", "food", "people", "plants", "tools", "transportation",
                           "geography")


def clipart_heldout(rel: str) -> bool:
    """Whether an openclipart PNG (path relative to CLIPART) is kept out of training for the evaluation."""
    import zlib

    return rel.split("/", 1)[0] in CLIPART_HELDOUT_CLASSES and zlib.crc32(rel.encode()) % 4 == 0


def training_photos() -> list[Path]:
    """The PHOTOS files, checked against what the installed scikit-image bundles."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    bundled = {p.name for p in folder.iterdir() if p.suffix in (".png", ".jpg")}
    unknown = bundled - set(PHOTOS) - set(EXCLUDED)
    if unknown:
        sys.exit(f"scikit-image bundles photos this script has not classified: {sorted(unknown)}")
    missing = set(PHOTOS) - bundled
    if missing:
        sys.exit(f"scikit-image no longer bundles {sorted(missing)}")
    return [folder / name for name in sorted(PHOTOS)]


def training_list(out: Path) -> Path:
    """A text file of images: every distinct openclipart PNG (no symlinked duplicates) and the PD/CC0 photos."""
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
        if w * h > MAX_PIXELS or min(w, h) < 64:
            continue
        rel = path.relative_to(CLIPART).as_posix()
        if clipart_heldout(rel):
            link = out / "heldout-clipart" / rel.split("/", 1)[0] / rel.replace("/", "__")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(path)
        else:
            clipart.append(str(path))
    photos = [str(p) for p in training_photos()]
    listing = out / "images.txt"
    out.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(clipart + photos * PHOTO_REPEATS) + "\n")
    print(f"{len(clipart)} clip-art images, {len(photos)} photos x {PHOTO_REPEATS}; "
          f"{sum(1 for _ in (out / 'heldout-clipart').rglob('*.png'))} clip-art images held out")
    return listing


def licences_markdown() -> str:
    """assets/models/LICENSES.md: what the model was trained on, with each source's stated licence."""
    import skimage

    rows = "\n".join(f"| `skimage/data/{name}` (skimage.data.{fn}) | {credit} | {licence} | x{PHOTO_REPEATS} |"
                     for name, (fn, credit, licence) in sorted(PHOTOS.items()))
    left_out = ", ".join(f"`{n}`" for n in EXCLUDED)
    clipart_row = " | ".join([
        "| every PNG under `/usr/share/openclipart/png/` of Debian's `openclipart-png` that is not a symlink, "
        "decodes, "
        "is at most 16 MP and at least 64 px a side, except the held-out quarter of 8 categories (below)",
        "each drawing's author, named in the PNG's own metadata (Open Clip Art Library)",
        "CC-PDDC (public domain: the Creative Commons Public Domain Dedication and Certification quoted in "
        "`/usr/share/doc/openclipart-png/copyright`)",
        "once each |"])
    return f"""# The demo model's training images and their licences

<!-- Generated by assets/models/make_demo_model.py (licences_markdown); edit the script, not this file. -->

`dinoscope-tiny-demo.pth` was trained by Dinoscope's own trainer on the images below and on nothing else. All of
them are public domain or CC0 as their source states it; none is copyleft or needs attribution, so the weights
carry no obligation from their training data. Built from openclipart-png 1:0.18+dfsg-19 (Debian) and
scikit-image {skimage.__version__}.

## Clip art: openclipart-png

| Source | Author / credit | Licence | Used |
|---|---|---|---|
{clipart_row}

## Photos: scikit-image's bundled data

Only the photos whose `skimage.data` docstring states CC0 or the public domain. Left out: {left_out}
(their docstring states no licence, or only "No known copyright restrictions", which is not a licence; the two
motorcycle photos, for one, are covered only by scikit-image's package-wide BSD-3-Clause).

| File | Author / credit | Licence (from the docstring) | Used |
|---|---|---|---|
{rows}

## Held out (never trained on; used to measure the model)

- A quarter of the openclipart drawings of the categories {", ".join(CLIPART_HELDOUT_CLASSES)} (chosen by a
  CRC-32 of the path), classified by k-NN on their category.
- The sample library's photos that come from neither source above (assets/sample/LICENSES.md: the MATE, Plasma
  and GNOME wallpapers), classified by k-NN on their folder.

## Licence texts

| Identifier | Where to read it |
|---|---|
| CC0-1.0 | `/usr/share/common-licenses/CC0-1.0` on Debian; https://creativecommons.org/publicdomain/zero/1.0/ |
| CC-PDDC | quoted in `/usr/share/doc/openclipart-png/copyright`; https://spdx.org/licenses/CC-PDDC.html |
| LicenseRef-PublicDomain | not a licence: the source says the image is in the public domain (NASA, SpaceX, ...) |
"""


def heldout_folder(out: Path) -> Path:
    """A labelled folder (symlinks) of the sample photos from neither training source, per LICENSES.md."""
    rows = re.findall(r"^\| `([^`]+)` \| (\S+) ", (SAMPLE / "LICENSES.md").read_text(), re.M)
    if not rows:
        sys.exit(f"{SAMPLE / 'LICENSES.md'} lists no files")
    folder = out / "heldout"
    for rel, package in rows:
        cls, name = rel.split("/", 1)
        if package in TRAINING_SOURCES or cls in HELDOUT_SKIP or name in HELDOUT_SKIP:
            continue
        link = folder / cls / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(SAMPLE / rel)
    return folder


def evaluate(models: list[str], out: Path) -> None:
    """k-NN top-1 of each model (and of random weights, for scale) on the two held-out sets.

    Held-out clip art: the official protocol (k 20, T 0.07) on stratified 75/25 splits, 3 seeds. Held-out sample
    photos (too few for splits): leave-one-out, each photo voted on by all the others, with k 20 and with k 1.
    """
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from engine.models import build_backbone, load_backbone
    from trainer.evaluate import evaluate_backbone, extract_features, knn_predict, labelled_folder

    clip_folder, photo_folder = out / "heldout-clipart", heldout_folder(out)
    paths, labels, classes = labelled_folder(photo_folder)
    y = np.asarray(labels)
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    print(f"held-out photos: {len(paths)} {counts}; majority-class guess {max(counts.values()) / len(y):.2f}")
    clip_counts = {d.name: len(list(d.iterdir())) for d in sorted(clip_folder.iterdir())}
    print(f"held-out clip art: {sum(clip_counts.values())} {clip_counts}")
    first = load_backbone(models[0])
    torch.manual_seed(0)
    contenders = [("random weights", build_backbone(first.config))] + [(m, load_backbone(m)) for m in models]
    for name, model in contenders:
        model = model.float().eval()
        clip = [evaluate_backbone(model, clip_folder, device="cpu", precision="fp32", seed=seed)["knn_top1"]
                for seed in range(3)]
        cls, _, _, errors = extract_features(model, paths, device="cpu", precision="fp32")
        if errors:
            sys.exit(f"unreadable: {errors}")
        loo = {}
        for k in (20, 1):
            hits = np.asarray([knn_predict(np.delete(cls, i, 0), np.delete(y, i), cls[i : i + 1], len(classes),
                                           k=k)[0] == y[i] for i in range(len(y))])
            loo[k] = (hits.mean(), np.mean([hits[y == c].mean() for c in range(len(classes))]))
        print(f"{name}: clip art k-NN {min(clip):.2f}-{max(clip):.2f} (mean {np.mean(clip):.2f}); photos "
              f"leave-one-out k=20 {loo[20][0]:.2f} (per class {loo[20][1]:.2f}), "
              f"k=1 {loo[1][0]:.2f} (per class {loo[1][1]:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000, help="training steps of 16 images")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo-model")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides for train")
    ap.add_argument("--evaluate", nargs="+", metavar="MODEL", help="only score these models on the held-out photos")
    args = ap.parse_args()
    listing = training_list(args.out)
    if args.evaluate:
        evaluate(args.evaluate, args.out)
        return
    run = args.out / "run"
    cmd = [sys.executable, "-m", "app", "train", "--preset", "tiny-cpu", "--data", str(listing), "--out", str(run),
           "--eval-data", str(args.out / "heldout-clipart"), "--log-every", "50",
           "--set", f"optim.epochs={args.steps // 100}", "optim.iters_per_epoch=100", *args.set]
    if (run / "config.yaml").exists() or (run / "config.json").exists():
        cmd += ["--resume"]
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    export(run / "teacher_backbone.pt", TARGET)
    (TARGET.parent / "LICENSES.md").write_text(licences_markdown())  # what the new file was trained on
    evaluate([str(TARGET)], args.out)


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
