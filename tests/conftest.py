"""Shared fixtures: a private DINOSCOPE_HOME per test, tiny random-weight backbones, real photos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Module- and session-scoped fixtures index before any function fixture runs: they must not load OpenVINO into
# this process either (only tests marked `openvino`, run in a process of their own, do).
os.environ.setdefault("DINOSCOPE_BACKEND", "torch")


@pytest.fixture(autouse=True)
def dinoscope_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the user's real cache or libraries from a test."""
    home = tmp_path_factory.mktemp("dinoscope_home")
    monkeypatch.setenv("DINOSCOPE_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    # Extractors run on torch unless a test asks for OpenVINO (tests/test_runtime*.py): converting every tiny
    # model to OpenVINO would cost seconds per test.
    monkeypatch.setenv("DINOSCOPE_BACKEND", "torch")
    # Each test starts without the OpenVINO builds that failed in earlier tests of this process (kept per process
    # so that the folder watcher does not retry them per batch): a test that breaks a conversion on purpose must
    # not turn a later test's model, with the same weights, into a torch fallback.
    import sys

    ov_backend = sys.modules.get("engine.runtime.openvino_backend")
    if ov_backend is not None:
        ov_backend._FAILED.clear()
    return home


@pytest.fixture(scope="session")
def skimage_data_dir() -> Path:
    """scikit-image ships real photos (astronaut, coffee, chelsea, rocket...) inside the package."""
    import skimage

    return Path(skimage.__file__).parent / "data"
