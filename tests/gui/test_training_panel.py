"""The training panel runs a real tiny-cpu training as its own process, plots it, stops it with a checkpoint."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from PySide6.QtCore import QSettings

from app.gui.library_service import LibraryService
from app.gui.widgets.training_panel import TrainingPanel


def test_start_plot_stop_resume_use(qtbot, tmp_path: Path, skimage_data_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"):
        img = Image.open(skimage_data_dir / name).convert("RGB")
        img.thumbnail((256, 256))
        img.save(photos / f"{Path(name).stem}.jpg")
    libraries = LibraryService(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    panel = TrainingPanel(libraries)
    qtbot.addWidget(panel)
    panel.preset.setCurrentText("tiny-cpu")
    panel.data.setEditText(str(photos))
    run = tmp_path / "run"
    panel.out.setText(str(run))
    panel.extra.setText("optim.epochs=1 optim.iters_per_epoch=200 optim.batch_size_per_device=4 data.num_workers=0")
    assert panel.start() is not None
    assert not panel.start_button.isEnabled() and panel.stop_button.isEnabled()
    qtbot.waitUntil(lambda: len(panel.curves["total"].getData()[0] or []) >= 1, timeout=120000)
    xs, ys = panel.curves["total"].getData()
    assert xs[0] >= 1 and ys[0] > 0  # a real loss, plotted from events.jsonl
    panel.stop()
    qtbot.waitUntil(lambda: panel.process is None, timeout=60000)
    assert "checkpoint was saved" in panel.progress.text()
    assert list((run / "checkpoints").glob("*.pt")) and (run / "teacher_backbone.pt").exists()
    assert panel.resume_button.isEnabled() and panel.use_button.isEnabled()
    with qtbot.waitSignal(panel.use_model) as used:
        panel.use_button.click()
    assert used.args == [str(run / "teacher_backbone.pt")]


def test_bundled_app_starts_its_console_launcher_and_a_failed_start_says_why(qtbot, tmp_path: Path,
                                                                             monkeypatch) -> None:
    """In the PyInstaller bundle sys.executable is the app itself: training runs `dinoscope-cli train` beside it.
    A launcher that cannot start frees the buttons and reports the cause instead of waiting forever."""
    bundle = tmp_path / "dinoscope"
    bundle.mkdir()
    monkeypatch.setattr("sys.frozen", True, raising=False)
    monkeypatch.setattr("sys.executable", str(bundle / "dinoscope"))
    libraries = LibraryService(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    panel = TrainingPanel(libraries)
    qtbot.addWidget(panel)
    panel.data.setEditText(str(tmp_path))
    panel.out.setText(str(tmp_path / "run"))
    assert panel.command(resume=False)[:2] == [str(bundle / "dinoscope"), "train"]  # no launcher beside it yet
    (bundle / "dinoscope-cli").write_text("not a program")  # present but not executable: cannot start
    assert panel.command(resume=False)[:2] == [str(bundle / "dinoscope-cli"), "train"]
    with qtbot.waitSignal(panel.error, timeout=10000) as failed:
        panel.start()
    assert "Could not start the trainer" in failed.args[1] and "dinoscope-cli" in failed.args[1]
    assert panel.process is None and panel.start_button.isEnabled()
