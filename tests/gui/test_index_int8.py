"""Indexing in int8 from the model manager: the choice is saved, reaches the window's indexing runs, and is
offered only where it can run."""

from __future__ import annotations

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from app.gui.model_service import ModelService
from app.gui.widgets.model_manager import ModelManager
from app.gui.workers import TaskRunner


def _reindex(qtbot, win) -> str:
    task = win.reindex()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=120000)
    assert task.outcome == "finished", task.error
    return task.result.runtime


def test_the_int8_choice_in_the_model_manager_reaches_indexing_and_is_kept(qtbot, family_window, family) -> None:
    win = family_window
    settings = family[1]
    assert not _reindex(qtbot, win).endswith("int8")  # off by default: the automatic precision

    def tick_and_close() -> None:
        dlg = QApplication.activeModalWidget()
        assert isinstance(dlg, ModelManager) and dlg.int8_box.isEnabled() and not dlg.int8_box.isChecked()
        dlg.int8_box.click()
        dlg.accept()

    QTimer.singleShot(0, tick_and_close)
    win.show_models()  # modal, as a person opens it from the status bar
    assert win.models.index_int8
    assert _reindex(qtbot, win).endswith(" int8")
    settings.sync()
    again = ModelService(QSettings(settings.fileName(), QSettings.Format.IniFormat))
    assert again.index_int8  # the next start indexes in int8 too

    win.set_index_int8(False)
    assert not _reindex(qtbot, win).endswith("int8")


def test_int8_is_greyed_out_with_the_reason_where_nncf_is_missing(qtbot, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "nncf", None)  # what the bundle, which leaves NNCF out, has
    dlg = ModelManager(TaskRunner(), "dinov2_vits14", index_int8=True)
    qtbot.addWidget(dlg)
    assert not dlg.int8_box.isEnabled() and not dlg.int8_box.isChecked()
    assert "needs nncf" in dlg.int8_box.toolTip()


def test_the_folder_watcher_restarts_in_int8_when_chosen(qtbot, family_window, family, skimage_data_dir,
                                                         monkeypatch) -> None:
    """Ticked while the watcher runs: it is stopped in a worker (not on the UI thread) and started again, and the
    next photo copied in is indexed in int8."""
    from PIL import Image

    monkeypatch.setenv("DINOSCOPE_WATCH", "1")
    win = family_window
    win.watcher.set_enabled(True)
    win.watch_library()
    # after the start-up loads, each of which asks the watcher to start when it ends (their signals come queued)
    qtbot.waitUntil(lambda: win.watcher.running and all(t.outcome for t in win._warming), timeout=30000)
    qtbot.wait(300)
    batches: list = []
    win.watcher.changed.connect(batches.append)
    restart = win.set_index_int8(True)
    assert restart is not None
    qtbot.waitUntil(lambda: restart.outcome == "finished" and win.watcher.running, timeout=30000)
    Image.open(skimage_data_dir / "camera.png").convert("RGB").save(family[0] / "things" / "camera.jpg")
    qtbot.waitUntil(lambda: bool(batches), timeout=60000)
    assert batches[0].report.new == 1 and batches[0].report.runtime.endswith(" int8")
    win.watcher.stop()
