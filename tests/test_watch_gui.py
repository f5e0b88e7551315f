"""The GUI's watch service (offscreen, pytest-qt): it follows the open library's folders in a background thread,
announces changes on the UI thread, honours its QSettings switch and pauses around the window's own indexing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QSettings

from app.gui.watch_service import SETTING, WatchService
from engine.store import Library, LibraryBusyError, index_library
from tests.test_indexer import model
from tests.test_watch import PHOTOS, rows, small_copy


def test_the_service_follows_the_open_library_and_can_be_switched_off(tmp_path: Path, qtbot) -> None:
    photos = tmp_path / "photos"
    small_copy(PHOTOS[0], photos / "a.jpg")
    ckpt = tmp_path / "tiny.pth"
    torch.save(model().state_dict(), ckpt)
    with Library.open(tmp_path / "lib") as lib:
        index_library(lib, str(ckpt), folders=[photos], device="cpu", workers=1)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    service = WatchService(settings)
    try:
        assert service.enabled and service.start(str(tmp_path / "lib"), str(ckpt), "cpu")
        with qtbot.waitSignal(service.changed, timeout=120_000) as blocker:
            small_copy(PHOTOS[1], photos / "b.jpg")
        assert blocker.args[0].report.new == 1
        assert str(photos / "b.jpg") in rows(tmp_path / "lib" / "library.db")

        with qtbot.waitSignal(service.watching, timeout=120_000):
            with service.paused(), Library.open(tmp_path / "lib") as lib:  # the window indexes: it has the lock
                assert not service.running
                index_library(lib, str(ckpt), device="cpu", workers=1)
            assert service.running
        with Library.open(tmp_path / "lib") as lib, pytest.raises(LibraryBusyError):
            index_library(lib, str(ckpt), device="cpu")  # while it watches, other writers are refused

        service.set_enabled(False)
        assert not service.running and settings.value(SETTING, type=bool) is False
        assert not service.start(str(tmp_path / "lib"), str(ckpt), "cpu")
        service.set_enabled(True)
        assert service.running
    finally:
        service.stop()
