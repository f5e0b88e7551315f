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
    "heatmap": "heatmap",
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


def program_name(argv0: str | None = None) -> str:
    """What the user typed to start us, for usage lines and examples: the bundle's launcher (``dinoscope-cli``),
    an installed ``dinoscope`` script, or ``python -m app`` from a checkout."""
    import os

    if getattr(sys, "frozen", False):
        return os.path.splitext(os.path.basename(sys.executable))[0]
    base = os.path.basename(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else ""))
    if not base or base in ("__main__.py", "-c", "-m") or base.startswith("python"):
        return "python -m app"
    if base == "_bundle_entry.py":  # the bundle's entry script, run unfrozen: the name the bundle gives it
        return "dinoscope-cli"
    return os.path.splitext(base)[0]


def build_parser() -> argparse.ArgumentParser:
    prog = program_name()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Explore photo libraries through DINOv2 features.",
        epilog=EPILOG.replace("python -m app", prog),
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
    # A file name that is not valid UTF-8 must never end a command with a traceback when printed; tables show names
    # through app.display.shown, and this is the net under everything else.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return module.run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a library that turned read-only, damaged or full mid-command: one line, not a trace
        from app.commands._library import library_failure

        message = library_failure(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
