"""The model manager downloads an official backbone with a progress bar and validates local checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from PySide6.QtWidgets import QMessageBox, QProgressBar, QPushButton

from app.gui.widgets.model_manager import ModelManager
from app.gui.workers import TaskRunner
from engine.models import zoo
from tests.helpers import tiny_backbone


def _publish(root: Path, name: str) -> int:
    e = zoo.entry(name)
    (root / e.folder).mkdir(parents=True, exist_ok=True)
    path = root / e.folder / e.filename
    torch.save(tiny_backbone().state_dict(), path)
    return path.stat().st_size


def test_download_shows_progress_then_offers_use(qtbot, zoo_mirror: Path) -> None:
    size = _publish(zoo_mirror, "dinov2_vitb14")
    runner = TaskRunner()
    dlg = ModelManager(runner, "dinov2_vits14")
    qtbot.addWidget(dlg)
    row = dlg.names().index("dinov2_vitb14")
    assert dlg.table.item(row, 3).text() == "not downloaded"
    task = dlg.start_download("dinov2_vitb14")
    bar = dlg.table.cellWidget(row, 3)
    assert isinstance(bar, QProgressBar)
    maxima: list[int] = []
    bar.valueChanged.connect(lambda _v: maxima.append(bar.maximum()))
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=20000)
    assert task.outcome == "finished"
    assert zoo.status("dinov2_vitb14") == "downloaded"
    qtbot.waitUntil(lambda: dlg.table.item(row, 3).text() == "downloaded", timeout=5000)
    assert maxima and maxima[-1] == size  # the bar tracked the real byte count
    button = dlg.table.cellWidget(row, 4)
    assert isinstance(button, QPushButton) and button.text() == "Use"
    with qtbot.waitSignal(dlg.model_chosen) as chosen:
        button.click()
    assert chosen.args == ["dinov2_vitb14"]
    runner.wait()


def test_load_checkpoint_validates_strictly(qtbot, tmp_path: Path, monkeypatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", lambda _p, title, msg: warnings.append(f"{title}: {msg}"))
    runner = TaskRunner()
    dlg = ModelManager(runner, "dinov2_vits14")
    qtbot.addWidget(dlg)
    good = tmp_path / "mine.pth"
    torch.save(tiny_backbone(registers=4).state_dict(), good)
    with qtbot.waitSignal(dlg.model_chosen, timeout=10000) as chosen:
        dlg.load_checkpoint(str(good))
    assert chosen.args == [str(good)]
    assert "4 registers" in dlg.current_label.text()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    task = dlg.load_checkpoint(str(bad))
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=10000)
    assert task.outcome == "failed" and "bad.pth" in task.error
    qtbot.waitUntil(lambda: bool(warnings))
    assert "bad.pth" in warnings[0]
    runner.wait()


def test_lists_the_bundled_demo_model_and_marks_the_recommended_download(qtbot) -> None:
    from app.gui.model_service import DEFAULT_MODEL, bundled_model

    runner = TaskRunner()
    dlg = ModelManager(runner, DEFAULT_MODEL)
    qtbot.addWidget(dlg)
    demo = bundled_model()
    assert demo is not None and dlg.names()[0] == demo
    assert dlg.table.item(0, 0).text() == "Dinoscope tiny demo (bundled)"
    assert dlg.table.item(0, 3).text() == "ready" and dlg.table.item(0, 2).text() == "included"
    recommended = dlg.table.item(dlg.names().index(DEFAULT_MODEL), 0)
    assert recommended.text() == f"{DEFAULT_MODEL} (recommended)" and recommended.font().bold()
    others = [dlg.table.item(r, 0) for r in range(1, dlg.table.rowCount()) if dlg.names()[r] != DEFAULT_MODEL]
    assert others and not any("recommended" in it.text() or it.font().bold() for it in others)
    with qtbot.waitSignal(dlg.model_chosen) as chosen:
        dlg.table.cellWidget(0, 4).click()
    assert chosen.args == [demo] and dlg.table.item(0, 3).text() == "in use"
