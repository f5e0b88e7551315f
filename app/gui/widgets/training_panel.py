"""Training panel: start `python -m app train` as its own process, follow events.jsonl, plot it, stop or resume.

The run folder is the contract: the trainer appends one JSON object per logged step to events.jsonl and writes
checkpoints; this panel only launches, reads and shows. Stop sends SIGTERM, on which the trainer saves a
checkpoint and exits; Resume starts the same command with --resume.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QProcess, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.gui.desktop import child_process_environment

PRESETS = ["tiny-cpu", "finetune", "vits14-scratch", "vitb14-scratch", "distill"]
LOSS_KEYS = ["total", "dino_local", "dino_global", "ibot", "koleo"]
COLOURS = ["#e6e6e6", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]



def train_program() -> list[str]:
    """How to start ``train`` in a child process: ``python -m app`` from a checkout; in the PyInstaller bundle,
    where sys.executable is the app itself, its console launcher ``dinoscope-cli`` beside it."""
    if getattr(sys, "frozen", False):
        cli = Path(sys.executable).with_name("dinoscope-cli" + (".exe" if sys.platform == "win32" else ""))
        return [str(cli if cli.exists() else sys.executable)]
    return [sys.executable, "-m", "app"]

class EventTail:
    """Reads the JSON lines appended to a file since the last call; a half-written last line waits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


class TrainingPanel(QWidget):
    status = Signal(str)
    error = Signal(str, str)
    use_model = Signal(str)  # path of the run's teacher backbone

    def __init__(self, libraries, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.libraries = libraries
        self.process: QProcess | None = None
        self.tail: EventTail | None = None
        self.events: list[dict] = []
        self.run_dir: Path | None = None
        self._started = 0.0

        form = QFormLayout()
        self.preset = QComboBox()
        self.preset.addItems(PRESETS)
        self.preset.setToolTip("tiny-cpu learns something on a laptop CPU in minutes; the others want a GPU")
        form.addRow("Preset", self.preset)
        self.data = QComboBox()
        self.data.setEditable(True)
        self.data.setToolTip("The current library, or a folder of photos")
        browse = QPushButton("Folder…")
        browse.clicked.connect(self._choose_data)
        row = QHBoxLayout()
        row.addWidget(self.data, 1)
        row.addWidget(browse)
        form.addRow("Photos", row)
        self.init = QLineEdit()
        self.init.setPlaceholderText("optional: a backbone to continue from (zoo name or checkpoint)")
        form.addRow("Start from", self.init)
        self.out = QLineEdit()
        form.addRow("Run folder", self.out)
        self.iters = QSpinBox()
        self.iters.setRange(0, 10_000_000)
        self.iters.setSpecialValueText("preset default")
        self.iters.setToolTip("Epochs of optim.iters_per_epoch iterations each; 0 keeps the preset's")
        form.addRow("Epochs", self.iters)
        self.extra = QLineEdit()
        self.extra.setPlaceholderText("more settings, e.g. optim.base_lr=1e-3 data.batch_size=16")
        form.addRow("Settings", self.extra)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(lambda: self.start(resume=False))
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Saves a checkpoint, then stops; Resume continues from it")
        self.stop_button.clicked.connect(self.stop)
        self.resume_button = QPushButton("Resume")
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.use_button = QPushButton("Use this model")
        self.use_button.setToolTip("Make the run's teacher the app's model and re-index the library with it")
        self.use_button.clicked.connect(self._use)
        for b in (self.start_button, self.stop_button, self.resume_button, self.use_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.progress = QLabel("No run")
        buttons.addWidget(self.progress)

        self.loss_plot = pg.PlotWidget(title="Losses")
        self.loss_plot.addLegend()
        self.curves = {k: self.loss_plot.plot([], [], pen=pg.mkPen(COLOURS[i], width=2 if k == "total" else 1),
                                              name=k) for i, k in enumerate(LOSS_KEYS)}
        self.rate_plot = pg.PlotWidget(title="Learning rate and images/s")
        self.rate_plot.addLegend()
        self.lr_curve = self.rate_plot.plot([], [], pen=pg.mkPen("#9467bd", width=2), name="learning rate")
        self.speed_view, self.speed_curve = self._second_axis(self.rate_plot, "images/s", "#2ca02c")
        self.rate_plot.getPlotItem().legend.addItem(self.speed_curve, "images/s")
        self.rate_plot.setLabel("left", "learning rate")
        self.loss_plot.setLabel("bottom", "step")
        self.rate_plot.setLabel("bottom", "step")
        self.speed_label = QLabel()
        self.log_label = QLabel("Trainer output")
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.log.setMaximumHeight(130)
        self.log_label.setBuddy(self.log)
        self.follow_palette()

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        plots = QHBoxLayout()
        plots.addWidget(self.loss_plot, 1)
        plots.addWidget(self.rate_plot, 1)
        layout.addLayout(plots, 1)
        layout.addWidget(self.speed_label)
        layout.addWidget(self.log_label)
        layout.addWidget(self.log)
        self.timer = QTimer(self)
        self.timer.setInterval(500)
        self.timer.timeout.connect(self.poll)
        self._update_buttons()

    @staticmethod
    def _second_axis(plot: pg.PlotWidget, label: str, colour: str):
        """A curve on its own right-hand axis (images/s and the learning rate differ by ten orders)."""
        item = plot.getPlotItem()
        view = pg.ViewBox()
        item.showAxis("right")
        item.scene().addItem(view)
        item.getAxis("right").linkToView(view)
        item.getAxis("right").setLabel(label, color=colour)
        view.setXLink(item)
        curve = pg.PlotDataItem([], [], pen=pg.mkPen(colour, width=2))
        view.addItem(curve)

        def follow() -> None:
            view.setGeometry(item.getViewBox().sceneBoundingRect())
            view.linkedViewChanged(item.getViewBox(), view.XAxis)

        item.getViewBox().sigResized.connect(follow)
        return view, curve

    def follow_palette(self) -> None:
        """Charts in the window's colours (light or dark desktop theme), not pyqtgraph's fixed black."""
        pal = self.palette()
        background, text = pal.color(pal.ColorRole.Base), pal.color(pal.ColorRole.Text)
        for plot in (self.loss_plot, self.rate_plot):
            plot.setBackground(background)
            item = plot.getPlotItem()
            item.titleLabel.setText(item.titleLabel.text, color=text)
            for side in ("left", "bottom", "right"):
                axis = item.getAxis(side)
                axis.setPen(pg.mkPen(text))
                axis.setTextPen(pg.mkPen(text))
            if item.legend is not None:
                item.legend.setLabelTextColor(text)
                for _sample, label in item.legend.items:  # entries added before take the colour too
                    label.setText(label.text, color=text)
        self.curves["total"].setPen(pg.mkPen(text, width=2))  # the total loss in the text colour, readable on both

    def changeEvent(self, event) -> None:
        from PySide6.QtCore import QEvent

        if event.type() == QEvent.Type.PaletteChange:
            self.follow_palette()
        super().changeEvent(event)

    # ------------------------------------------------------------------------------------------- setup
    def refresh_sources(self) -> None:
        lib = self.libraries.library
        self.data.clear()
        if lib is not None:
            self.data.addItem(f"Library “{lib.name}”", str(lib.root))  # the name; the run gets the folder
            if not self.out.text():
                from engine import data_home

                self.out.setText(str(data_home.home() / "runs" / time.strftime("run-%Y%m%d-%H%M%S")))

    def _choose_data(self) -> None:
        from app.gui.widgets.library_panel import choose_folder

        path = choose_folder(self, "Photos to train on")
        if path:
            self.data.setEditText(path)

    def command(self, resume: bool) -> list[str]:
        args = [*train_program(), "train", "--preset", self.preset.currentText(), "--out", self.out.text()]
        data = self.data.currentText().strip()
        library_root = self.data.currentData() if data == self.data.itemText(self.data.currentIndex()) else None
        if library_root:
            args += ["--library", library_root]
        elif data:
            args += ["--data", data]
        if self.init.text().strip():
            args += ["--init", self.init.text().strip()]
        sets = self.extra.text().split()
        if self.iters.value():
            sets.append(f"optim.epochs={self.iters.value()}")
        if sets:
            args += ["--set", *sets]
        if resume:
            args.append("--resume")
        return args

    # --------------------------------------------------------------------------------------------- run
    def start(self, resume: bool = False) -> QProcess | None:
        if self.process is not None:
            return None
        if not self.out.text().strip() or not self.data.currentText().strip():
            self.status.emit("Choose the photos and a run folder first")
            return None
        self.run_dir = Path(self.out.text().strip())
        cmd = self.command(resume)
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.setProcessEnvironment(child_process_environment())  # the user's, not a bundle's, libraries
        self.process.readyReadStandardOutput.connect(self._read_output)
        self.process.finished.connect(self._finished)
        self.process.errorOccurred.connect(self._process_error)
        self.log.appendPlainText("$ " + " ".join(cmd[1:]))
        if not resume:
            self.events = []
            for c in self.curves.values():
                c.setData([], [])
        self.tail = EventTail(self.run_dir / "events.jsonl")
        if resume:
            self.tail.read()  # skip what is plotted already; new steps append
        self._started = time.monotonic()
        self.process.start(cmd[0], cmd[1:])
        self.timer.start()
        self._update_buttons()
        self.status.emit("Training started" if not resume else "Training resumed")
        return self.process

    def _process_error(self, err: QProcess.ProcessError) -> None:
        """A trainer that cannot start never sends `finished`: say why and free the buttons."""
        if err != QProcess.ProcessError.FailedToStart or self.process is None:
            return
        message = f"Could not start the trainer ({self.process.program()}): {self.process.errorString()}"
        self.process = None
        self.timer.stop()
        self._update_buttons()
        self.progress.setText(message)
        self.error.emit("Training did not start", message)

    def stop(self) -> None:
        if self.process is not None:
            self.progress.setText("Stopping: saving a checkpoint…")
            self.process.terminate()  # SIGTERM: the trainer checkpoints, then exits

    def _read_output(self) -> None:
        if self.process is not None:
            text = bytes(self.process.readAllStandardOutput()).decode(errors="replace").rstrip()
            if text:
                self.log.appendPlainText(text)

    def _finished(self, code: int, _status) -> None:
        self.poll()
        self.timer.stop()
        self.process = None
        last = self.events[-1] if self.events else {}
        knn = next((e for e in reversed(self.events) if "knn_top1" in e), None)
        end = next((e for e in reversed(self.events) if e.get("event") == "end"), None)
        msg = {0: "Run finished", 130: "Stopped; a checkpoint was saved and Resume continues from it"}.get(
            code, f"The trainer exited with code {code}; see the log below")
        if end and end.get("message") and code not in (0, 130):
            msg += f": {end['message']}"
        if knn:
            msg += f" · k-NN top-1 {100 * knn['knn_top1']:.1f}%"
        self.progress.setText(msg + (f" at step {last.get('step')}" if last else ""))
        self.status.emit(msg)
        self._update_buttons()

    def poll(self) -> list[dict]:
        if self.tail is None:
            return []
        new = self.tail.read()
        if not new:
            return new
        self.events += new
        steps = [e for e in self.events if e.get("event") == "train"]
        if steps:
            x = [e["step"] for e in steps]
            for k, curve in self.curves.items():
                ys = [e.get("losses", {}).get(k) for e in steps]
                if any(v is not None for v in ys):
                    curve.setData(x, [float("nan") if v is None else v for v in ys])
            self.lr_curve.setData(x, [e.get("lr", float("nan")) for e in steps])
            self.speed_curve.setData(x, [e.get("images_per_s") or float("nan") for e in steps])
            last = steps[-1]
            total = last.get("total_steps")
            rate = last.get("images_per_s")
            eta = ""
            if total and last.get("step_time"):
                s = int(last["step_time"] * (total - last["step"]))
                eta = f" · ETA {s // 60}:{s % 60:02d}"
            mem = last.get("gpu_mem_gb")
            self.speed_label.setText(
                f"step {last['step']}" + (f"/{total}" if total else "") + (f" · {rate:.1f} img/s" if rate else "")
                + (f" · GPU memory {mem:.1f} GB" if mem else "") + eta)
            self.progress.setText(f"Training: step {last['step']}" + eta)
        return new

    def teacher_path(self) -> Path | None:
        if self.run_dir is None:
            return None
        p = self.run_dir / "teacher_backbone.pt"
        return p if p.exists() else None

    def _use(self) -> None:
        p = self.teacher_path()
        if p is None:
            self.status.emit("This run has no checkpoint yet")
            return
        self.use_model.emit(str(p))

    def _update_buttons(self) -> None:
        running = self.process is not None
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running and self.run_dir is not None)
        self.stop_button.setEnabled(running)
        self.use_button.setEnabled(not running and self.teacher_path() is not None)
