"""GUI tests run offscreen with real widgets (pytest-qt)."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _no_folder_watching(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows in GUI tests do not follow their folders (a watcher holds the library's write lock, which tests
    that index beside the window need); tests/gui/test_watch_window.py turns it back on."""
    monkeypatch.setenv("DINOSCOPE_WATCH", "0")


@pytest.fixture
def zoo_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A loopback HTTP server with the official folder layout; DINOSCOPE_ZOO_URL points at it."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DINOSCOPE_ZOO_URL", f"http://127.0.0.1:{server.server_port}")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    yield root
    server.shutdown()
    server.server_close()


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A random-weight tiny ViT in the official .pth layout."""
    import torch

    from engine.models import DinoVisionTransformer
    from tests.helpers import tiny_config

    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(DinoVisionTransformer(tiny_config()).state_dict(), path)
    return path


@pytest.fixture
def family(tmp_path: Path, skimage_data_dir: Path, tiny_checkpoint: Path):
    """A library "family" over real photos in two subfolders (pets/, things/), indexed with the tiny model, and
    the settings that open it."""
    from PIL import Image
    from PySide6.QtCore import QSettings

    from engine.store import Library
    from engine.store.indexer import index_library

    root = tmp_path / "photos"
    layout = {"pets": ["chelsea.png", "astronaut.png"], "things": ["coffee.png", "rocket.jpg", "motorcycle_left.png"]}
    for sub, names in layout.items():
        (root / sub).mkdir(parents=True)
        for name in names:
            img = Image.open(skimage_data_dir / name).convert("RGB")
            img.thumbnail((320, 320))
            img.save(root / sub / f"{Path(name).stem}.jpg", quality=90)
    with Library.open("family") as lib:
        index_library(lib, str(tiny_checkpoint), folders=[str(root)], device="cpu")
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("library/name", "family")
    settings.setValue("model/source", str(tiny_checkpoint))
    return root, settings


@pytest.fixture
def family_window(qtbot, family):
    from app.gui.main_window import MainWindow

    win = MainWindow(settings=family[1], first_start_sample=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win
