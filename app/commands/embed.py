"""`python -m app embed`: DINOv2 vectors for a set of images, written as .npy (or .npz with patch tokens)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from app.commands._library import DEVICE_HELP, add_backend_argument
from app.display import shown
from app.progress import ProgressBar


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("embed", help="write one L2-normalised DINOv2 vector per image")
    e.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    e.add_argument("--model", default="dinov2_vits14",
                   help="zoo name, .pth/.safetensors file, Hugging Face folder or Dinoscope checkpoint")
    e.add_argument("--out", required=True, type=Path,
                   help="output .npy (CLS vectors); with --patch an .npz holding cls, patch tokens and paths")
    e.add_argument("--batch", type=int, default=None, help="images per forward pass (default 8 on CPU, 64 on GPU)")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="inference precision (auto: bf16 where the hardware is fast at it)")
    e.add_argument("--patch", action="store_true", help="also save the 16x16 patch tokens of each image")
    e.add_argument("--workers", type=int, default=None, help="decoding threads")
    add_backend_argument(e)


def collect_images(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Expand folders recursively (skipping hidden entries); return (image paths, problems)."""
    from engine.imageio import SUPPORTED_EXTENSIONS

    paths: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / f for f in sorted(files)
                          if not f.startswith(".") and Path(f).suffix.lower() in SUPPORTED_EXTENSIONS]
            if not found:
                problems.append(f"{p}: no supported images in this folder")
            paths += found
        elif p.exists():
            paths.append(p)  # an explicit file is tried whatever its extension; decoding says if it is bad
        else:
            problems.append(f"{p}: no such file or folder")
    return paths, problems


def run(args: argparse.Namespace) -> int:
    from engine.atomic import atomic_write
    from engine.extract import Extractor
    from engine.models import CheckpointError, load_backbone
    from engine.models.download import DownloadError

    paths, problems = collect_images(args.images)
    for msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    if not paths:
        print("error: no images to embed", file=sys.stderr)
        return 2
    out: Path = args.out
    if args.patch and out.suffix != ".npz":
        out = out.with_suffix(".npz")
    elif not args.patch and out.suffix != ".npy":
        out = out.with_suffix(".npy")

    try:
        bar = ProgressBar(f"loading {args.model}", unit="B")
        model = load_backbone(args.model, progress=bar)
        extractor = Extractor(model, device=args.device, precision=args.dtype, batch_size=args.batch,
                              workers=args.workers, patch_tokens=args.patch, backend=args.backend)
    except (CheckpointError, DownloadError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model {args.model}: {model.embed_dim}-d, {extractor.backend} {extractor.precision}, "
          f"{len(paths)} images", file=sys.stderr)

    bar = ProgressBar("embedding")
    cls_parts, patch_parts, kept, errors = [], [], [], []
    last = [0, len(paths)]
    for batch in extractor.iter_files(paths, progress=lambda p: (last.__setitem__(0, p.done),
                                                                   bar.update(p.done, p.total))):
        cls_parts.append(batch.cls)
        if batch.patch is not None:
            patch_parts.append(batch.patch)
        kept += [paths[i] for i in batch.indices]
        errors += batch.errors
    bar.close(*last, extra=f"({len(errors)} unreadable)" if errors else "")
    for _, msg in errors:
        print(f"skipped: {shown(msg)}", file=sys.stderr)
    if not kept:
        print("error: none of the images could be read; nothing written", file=sys.stderr)
        return 2

    cls = np.concatenate(cls_parts)
    names = np.array([str(p) for p in kept])
    if args.patch:
        patch = np.concatenate(patch_parts)
        side = round(patch.shape[1] ** 0.5)
        atomic_write(out, lambda f: np.savez(f, cls=cls, patch=patch, paths=names, grid=np.array([side, side])))
        print(f"wrote {out}: cls {cls.shape}, patch {patch.shape}, paths")
    else:
        atomic_write(out, lambda f: np.save(f, cls))
        listing = out.with_suffix(".paths.txt")
        # one exact name per line, non-UTF-8 names as their original bytes (what `find` would print)
        listing.write_text("\n".join(names) + "\n", encoding="utf-8", errors="surrogateescape")
        print(f"wrote {out} ({len(kept)} x {cls.shape[1]}; row order in {listing})")
    return 1 if errors else 0
