"""GUI tests run offscreen with real widgets (pytest-qt)."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


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
