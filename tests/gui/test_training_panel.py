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


def test_training_tab_names_the_library_plots_speed_on_its_own_axis_and_follows_the_palette(
        qtbot, tmp_path: Path, family) -> None:
    import json

    from PySide6.QtGui import QColor, QPalette

    libraries = LibraryService(family[1])
    lib = libraries.open("family")
    panel = TrainingPanel(libraries)
    qtbot.addWidget(panel)
    panel.refresh_sources()
    assert panel.data.currentText() == "Library “family”"  # a name, not library:/some/long/path
    args = panel.command(resume=False)
    assert args[args.index("--library") + 1] == str(lib.root)
    panel.data.setEditText(str(tmp_path))  # a folder typed in instead
    assert "--library" not in panel.command(resume=False) and str(tmp_path) in panel.command(resume=False)

    run = tmp_path / "run"
    run.mkdir()
    steps = [{"event": "train", "step": s, "lr": 1e-4 * s, "images_per_s": 40.0 + s, "losses": {"total": 9.0 - s}}
             for s in range(1, 6)]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in steps))
    from app.gui.widgets.training_panel import EventTail

    panel.tail = EventTail(run / "events.jsonl")
    panel.poll()
    xs, speeds = panel.speed_curve.getData()
    assert list(xs) == [1, 2, 3, 4, 5] and list(speeds) == [41.0, 42.0, 43.0, 44.0, 45.0]
    # images/s lives on the right-hand axis, the learning rate on the left: two scales, not one.
    assert panel.speed_curve.getViewBox() is panel.speed_view
    assert panel.lr_curve.getViewBox() is panel.rate_plot.getPlotItem().getViewBox()
    assert panel.rate_plot.getPlotItem().getAxis("right").isVisible()
    assert panel.log_label.text() == "Trainer output" and panel.log_label.buddy() is panel.log

    for base, text in ((QColor("#ffffff"), QColor("#101010")), (QColor("#202124"), QColor("#e8e8e8"))):
        pal = QPalette(panel.palette())
        pal.setColor(QPalette.ColorRole.Base, base)
        pal.setColor(QPalette.ColorRole.Text, text)
        panel.setPalette(pal)
        for plot in (panel.loss_plot, panel.rate_plot):
            assert plot.backgroundBrush().color() == base
            assert plot.getPlotItem().getAxis("left").textPen().color() == text
            for _sample, label in plot.getPlotItem().legend.items:
                assert QColor(label.opts["color"]) == text
