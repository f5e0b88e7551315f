"""Where bundled assets live, in a source checkout and in the PyInstaller bundle."""

from __future__ import annotations

from pathlib import Path

from engine.assets import assets_dir

__all__ = ["asset_path", "assets_dir"]


def asset_path(relative: str) -> Path:
    return assets_dir() / relative
