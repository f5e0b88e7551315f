"""`python -m app pca`: DINOv2 part-colour overlays (the paper's PCA pictures) for the user's own photos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.progress import ProgressBar


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pca", help="colour object parts by a PCA of the patch features, one PNG per image",
                       description="The DINOv2 paper's PCA pictures: the first component separates foreground from "
                                   "background, three more colour the foreground's parts.")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="folder for the <name>_pca.png files")
    p.add_argument("--model", default="dinov2_vits14",
                   help="zoo name, .pth/.safetensors file, Hugging Face folder or Dinoscope checkpoint")
    p.add_argument("--resolution", type=int, default=448,
                   help="shorter side fed to the model, in pixels (snapped to a multiple of the patch size)")
    p.add_argument("--joint", action="store_true",
                   help="one parts PCA over all the images, so the same part gets the same colour in each")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="foreground cut on the first component scaled to 0..1 (higher keeps less)")
    p.add_argument("--mode", choices=["blend", "side", "parts"], default="blend",
                   help="colours over the photo, photo and colours side by side, or the colours alone")
    p.add_argument("--upsample", choices=["nearest", "bicubic"], default="nearest",
                   help="patch blocks as the model saw them, or smooth")
    p.add_argument("--background", choices=["dark", "dimmed"], default="dark",
                   help="background patches black, or the photo dimmed")
    p.add_argument("--alpha", type=float, default=0.6, help="opacity of the colours in --mode blend")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="inference precision (auto: bf16 where the hardware is fast at it)")


def _check_args(args: argparse.Namespace) -> str | None:
    if not 0.0 < args.threshold < 1.0:
        return f"--threshold must lie strictly between 0 and 1, got {args.threshold}"
    if not 0.0 <= args.alpha <= 1.0:
        return f"--alpha must lie between 0 and 1, got {args.alpha}"
    if args.resolution < 14 or args.resolution > 4096:
        return f"--resolution must be between 14 and 4096 pixels, got {args.resolution}"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out} exists and is not a folder"
    return None


def _output_names(paths: list[Path], out: Path) -> list[Path]:
    """<stem>_pca.png, with -2, -3... added when two inputs share a stem."""
    used: set[str] = set()
    names = []
    for p in paths:
        stem, n = p.stem, 1
        while (f"{stem}-{n}" if n > 1 else stem) in used:
            n += 1
        stem = f"{stem}-{n}" if n > 1 else stem
        used.add(stem)
        names.append(out / f"{stem}_pca.png")
    return names


def _write_png(path: Path, rgb) -> None:
    """Atomic: a temp file in the same folder, fsync, rename; PNG level 1 because 12 MP at level 6 takes seconds."""
    import cv2

    from engine.atomic import atomic_write

    ok, buf = cv2.imencode(".png", rgb[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"could not encode {path.name}")
    atomic_write(path, lambda f: f.write(buf.tobytes()))


def run(args: argparse.Namespace) -> int:
    from app.commands.embed import collect_images

    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    paths, problems = collect_images(args.images)
    for msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    if not paths:
        print("error: no images to draw", file=sys.stderr)
        return 2

    from engine.imageio import ImageDecodeError, load_rgb
    from engine.models import CheckpointError, load_backbone
    from engine.models.download import DownloadError
    from engine.viz.patches import patch_tokens
    from engine.viz.pca import fit_parts, render_overlay

    try:
        bar = ProgressBar(f"loading {args.model}", unit="B")
        model = load_backbone(args.model, progress=bar)
        args.out.mkdir(parents=True, exist_ok=True)
    except (CheckpointError, DownloadError, RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model {args.model}: {model.embed_dim}-d, {len(paths)} images, "
          f"{'joint' if args.joint else 'per-image'} PCA", file=sys.stderr)

    names = _output_names(paths, args.out)
    failed: list[str] = []

    def tokens_of(img):
        return patch_tokens(model, [img], resolution=args.resolution, device=args.device, precision=args.dtype)[0]

    def draw(i: int, img, result) -> bool:
        if result.note:
            print(f"note: {paths[i]}: {result.note}", file=sys.stderr)
        try:
            picture = render_overlay(img, result, mode=args.mode, upsample=args.upsample,
                                     background=args.background, alpha=args.alpha)
            _write_png(names[i], picture)
        except OSError as e:
            failed.append(f"{names[i]}: could not write ({e})")
            return False
        return True

    written = 0
    try:
        if args.joint:
            # Pass 1 keeps only tokens (reduced-size decoding), pass 2 decodes each photo again at full size to draw
            # it, so memory stays at one photo however many are given.
            bar = ProgressBar("features")
            feats: dict[int, object] = {}
            for i, p in enumerate(paths):
                try:
                    feats[i] = tokens_of(load_rgb(p, min_side=args.resolution))
                except ImageDecodeError as e:
                    failed.append(str(e))
                bar.update(i + 1, len(paths))
            bar.close(len(paths), len(paths))
            results = fit_parts([f.tokens for f in feats.values()], [f.grid for f in feats.values()],
                                threshold=args.threshold, joint=True)
            bar = ProgressBar("overlays")
            for n, (i, result) in enumerate(zip(feats, results, strict=True)):
                try:
                    written += draw(i, load_rgb(paths[i]), result)
                except ImageDecodeError as e:
                    failed.append(str(e))
                bar.update(n + 1, len(feats))
            bar.close(len(feats), len(feats))
        else:
            bar = ProgressBar("overlays")
            for i, p in enumerate(paths):
                try:
                    img = load_rgb(p)
                except ImageDecodeError as e:
                    failed.append(str(e))
                else:
                    f = tokens_of(img)
                    result = fit_parts([f.tokens], [f.grid], threshold=args.threshold, joint=False)[0]
                    written += draw(i, img, result)
                bar.update(i + 1, len(paths))
            bar.close(len(paths), len(paths))
    except (RuntimeError, ValueError) as e:  # device/precision problems surface at the first forward pass
        print(f"error: {e}", file=sys.stderr)
        return 2 if written == 0 else 1

    for msg in failed:
        print(f"skipped: {msg}", file=sys.stderr)
    if written == 0:
        print("error: no overlay written", file=sys.stderr)
        return 2
    print(f"wrote {written} overlay{'s' if written != 1 else ''} to {args.out}")
    return 1 if failed else 0
