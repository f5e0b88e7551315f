"""Where bundled assets (sample photos, the BPE vocabulary, the demo model) live: assets/ in a source checkout, or
inside the PyInstaller bundle."""

from __future__ import annotations

import sys
from pathlib import Path


def assets_dir() -> Path:
    frozen = getattr(sys, "_MEIPASS", None)
    return (Path(frozen) if frozen else Path(__file__).resolve().parents[1]) / "assets"
