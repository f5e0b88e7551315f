"""The scriptable command line: `python -m app COMMAND ...` (also installed as `dinoscope`).

Each command is a module in app/commands with `add_parser(subparsers)` and `run(args) -> int`; they are imported
lazily so `--help` and the GUI's start stay fast. Exit codes: 0 ok, 1 partial failure (output written, problems
reported), 2 nothing done (bad input), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Command name -> module under app.commands. Add a line here to add a command.
COMMANDS = {
    "curate": "curate",
    "embed": "embed",
    "index": "index",
    "models": "models",
    "map": "map",
    "pca": "pca",
    "search": "search",
    "dedup": "dedup",
    "stack": "stack",
    "cluster": "cluster",
    "train": "train",
    "eval": "eval",
}

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
    for module in COMMANDS.values():
        importlib.import_module(f"app.commands.{module}").add_parser(sub)
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"app.commands.{COMMANDS[args.command]}")
    try:
        return module.run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
