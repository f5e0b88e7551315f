"""`python -m app models [download NAME]`: the official backbones, their download state, and fetching one."""

from __future__ import annotations

import argparse
import sys

from app.progress import ProgressBar


def add_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list the official backbones; `models download NAME` fetches one")
    m.add_argument("action", nargs="?", choices=["list", "download"], default="list")
    m.add_argument("name", nargs="?", help="zoo name, for download")


def run(args: argparse.Namespace) -> int:
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
    try:
        path = zoo.download(args.name, progress=bar)
    except DownloadError as e:
        bar.finish()
        print(str(e), file=sys.stderr)
        return 1
    bar.finish()
    print(f"saved {path}")
    return 0
