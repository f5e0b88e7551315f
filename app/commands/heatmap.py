"""`python -m app heatmap PHOTO --text WORDS --out FILE`: where the words are in the photo, with dino.txt.

Exit codes: 0 written; 2 nothing written (bad arguments, unreadable photo, model problem).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.progress import ProgressBar

FORMATS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg", ".webp": ".webp"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("heatmap", help="colour a photo by how well each part matches some words (dino.txt)",
                       description="dino.txt's open-vocabulary heatmap: the vision head's patch tokens against the "
                                   "text embedding's patch half, upsampled over the photo (red: best match).")
    p.add_argument("photo", type=Path, metavar="PHOTO", help="the image file")
    p.add_argument("--text", required=True, metavar="WORDS", help="what to look for, e.g. \"a red motorcycle\"")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="the picture to write (.png, .jpg, .webp)")
    p.add_argument("--model", default="dinov2_vitl14_reg4_dinotxt",
                   help="the dino.txt zoo name or a folder holding its three files (default: %(default)s)")
    p.add_argument("--resolution", type=int, default=448,
                   help="shorter side fed to the model, in pixels (snapped to a multiple of the patch size)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the colours over the photo")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="inference precision (auto: bf16 where the hardware is fast at it)")


def _check_args(args: argparse.Namespace) -> str | None:
    if not args.text.strip():
        return "--text is empty; give some words to look for"
    if args.out.suffix.lower() not in FORMATS:
        return f"--out {args.out}: give a .png, .jpg or .webp file name"
    if args.out.is_dir():
        return f"--out {args.out} is a folder; give a file name"
    if not 0.0 <= args.alpha <= 1.0:
        return f"--alpha must lie between 0 and 1, got {args.alpha}"
    if args.resolution < 14 or args.resolution > 4096:
        return f"--resolution must be between 14 and 4096 pixels, got {args.resolution}"
    if not args.photo.is_file():
        return f"{args.photo}: {'not a file' if args.photo.exists() else 'no such file'}"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import cv2

    from engine.atomic import atomic_write
    from engine.imageio import ImageDecodeError, load_rgb
    from engine.models import CheckpointError, load_dinotxt
    from engine.models.download import DownloadError
    from engine.text import Tokenizer, VocabularyError
    from engine.text.heatmap import text_heatmap
    from engine.viz.heatmap import render_heatmap

    try:
        image = load_rgb(args.photo)
    except ImageDecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        tokenizer = Tokenizer()
        bar = ProgressBar(f"loading {args.model}", unit="B")
        model = load_dinotxt(args.model, progress=bar)
        context = model.text_model.config.context_length
        if tokenizer.token_count(args.text) > context:
            print(f"note: the text is {tokenizer.token_count(args.text) - 2} tokens long; dino.txt reads the first "
                  f"{context - 2}", file=sys.stderr)
        heat = text_heatmap(model, image, args.text, tokenizer=tokenizer, resolution=args.resolution,
                            device=args.device, precision=args.dtype)
        picture = render_heatmap(image, heat, alpha=args.alpha)
        ok, buf = cv2.imencode(FORMATS[args.out.suffix.lower()], picture[..., ::-1])
        if not ok:
            raise OSError(f"could not encode {args.out.name}")
        atomic_write(args.out, lambda f: f.write(buf.tobytes()))
    except (CheckpointError, DownloadError, VocabularyError, RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    x, y = heat.best_xy
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]}); best match at x={x:.0f}, y={y:.0f}, "
          f"cosine {heat.best_score:.3f}")
    return 0
