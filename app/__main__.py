"""`python -m app` opens the main window; `python -m app COMMAND ...` runs the command line.

`python -m app photo.jpg ...` (what a file manager's "Open with Dinoscope" runs) opens the window and searches by
those photos.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or all(not a.startswith("-") and Path(a).exists() and a not in _commands() for a in argv):
        return _gui(argv)
    from app.cli import main as cli_main

    return cli_main(argv)


def _commands() -> set[str]:
    from app.cli import COMMANDS

    return set(COMMANDS)


def _gui(files: list[str]) -> int:
    import os

    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")
    ):
        from app.cli import program_name

        print("error: no display to open the window on (DISPLAY is not set). The command line works without one:\n"
              f"  {program_name()} --help", file=sys.stderr)
        return 2
    try:
        from app.gui.application import run_gui
    except ImportError as e:  # e.g. a bundle or venv without Qt's system libraries
        from app.cli import program_name

        print(f"error: the window cannot start ({e}); the command line still works: {program_name()} --help",
              file=sys.stderr)
        return 2
    return run_gui(files)


if __name__ == "__main__":
    sys.exit(main())
