"""Where Dinoscope keeps its files. DINOSCOPE_HOME overrides everything (tests and portable installs)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("DINOSCOPE_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("dinoscope", appauthor=False))


def cache_dir() -> Path:
    env = os.environ.get("DINOSCOPE_HOME")
    if env:
        return Path(env).expanduser() / "cache"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dinoscope", appauthor=False))


def models_dir() -> Path:
    """Downloaded zoo checkpoints."""
    return cache_dir() / "models"


def libraries_dir() -> Path:
    return home() / "libraries"
