"""The scriptable command line: `python -m app COMMAND ...` (also installed as `dinoscope`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.progress import ProgressBar

EPILOG = """examples:
  python -m app models                                  list the official backbones and what is downloaded
  python -m app models download dinov2_vits14           fetch one into the cache
  python -m app embed photos/ --model dinov2_vits14 --out feats.npy
  python -m app embed a.jpg b.png --model run/checkpoints/last.pt --patch --out feats.npz
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dinoscope",
        description="Explore photo libraries through DINOv2 features.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    e = sub.add_parser("embed", help="write one L2-normalised DINOv2 vector per image")
    e.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    e.add_argument("--model", default="dinov2_vits14",
                   help="zoo name, .pth/.safetensors file, Hugging Face folder or Dinoscope checkpoint")
    e.add_argument("--out", required=True, type=Path,
                   help="output .npy (CLS vectors); with --patch an .npz holding cls, patch tokens and paths")
    e.add_argument("--batch", type=int, default=None, help="images per forward pass (default 8 on CPU, 64 on GPU)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    e.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="inference precision (auto: bf16 where the hardware is fast at it)")
    e.add_argument("--patch", action="store_true", help="also save the 16x16 patch tokens of each image")
    e.add_argument("--workers", type=int, default=None, help="decoding threads")

    m = sub.add_parser("models", help="list the official backbones; `models download NAME` fetches one")
    m.add_argument("action", nargs="?", choices=["list", "download"], default="list")
    m.add_argument("name", nargs="?", help="zoo name, for download")
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "embed":
            from app.commands.embed import run_embed

            return run_embed(args)
        if args.command == "models":
            return run_models(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


def run_models(args: argparse.Namespace) -> int:
    from engine.models import zoo
    from engine.models.download import DownloadError

    if args.action == "list":
        print(f"{'name':<20} {'params':>8} {'size':>9}  {'status':<15} path")
        for name, entry in zoo.ZOO.items():
            path = zoo.local_path(name) or zoo.cache_path(name)
            print(f"{name:<20} {entry.params / 1e6:>7.1f}M {entry.approx_bytes / 1e6:>7.0f}MB  "
                  f"{zoo.status(name):<15} {path}")
        return 0
    if not args.name:
        print("models download: name a model, e.g. `python -m app models download dinov2_vits14`", file=sys.stderr)
        return 2
    try:
        zoo.entry(args.name)
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    if zoo.local_path(args.name):
        print(f"{args.name} is already downloaded: {zoo.local_path(args.name)}")
        return 0
    bar = ProgressBar(f"downloading {args.name}", unit="B")
    last = [0, None]

    def progress(done: int, total: int | None) -> None:
        last[:] = [done, total]
        bar.update(done, total)

    try:
        path = zoo.download(args.name, progress=progress)
    except DownloadError as e:
        bar.close(*last)
        print(str(e), file=sys.stderr)
        return 1
    bar.close(*last)
    print(f"saved {path}")
    return 0
