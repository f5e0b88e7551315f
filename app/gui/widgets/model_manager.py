"""The model manager: official backbones with download buttons and progress, local checkpoints, the one in use."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.workers import Task, TaskRunner


def _download(report, cancelled, name: str) -> str:
    from engine.models import zoo

    # a cancel raises engine.progress.Cancelled, which the Task reports as cancelled
    return str(zoo.download(name, progress=lambda p: report(p.done, p.total or 0), cancel=cancelled))


def _check_checkpoint(report, cancelled, path: str) -> str:
    from engine.models import load_backbone

    model = load_backbone(path, allow_download=False)
    c = model.config
    return f"{c.depth} blocks, {c.embed_dim}-d, patch {c.patch_size}, {c.num_register_tokens} registers"


class ModelManager(QDialog):
    """Lists the zoo; Download fetches with a progress bar (cancellable, resumable); Use switches the app."""

    model_chosen = Signal(str)

    def __init__(self, runner: TaskRunner, current: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.resize(820, 420)
        self.runner = runner
        self.current = current
        self.tasks: dict[str, Task] = {}
        layout = QVBoxLayout(self)
        self.current_label = QLabel()
        layout.addWidget(self.current_label)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Model", "Parameters", "Download size", "Status", ""])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        layout.addWidget(self.table)
        buttons = QHBoxLayout()
        self.load_button = QPushButton("Load checkpoint…")
        self.load_button.setToolTip("A .pth, .safetensors or .bin file, or a Hugging Face model folder")
        self.load_button.clicked.connect(self._load_checkpoint)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        buttons.addWidget(self.load_button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout.addLayout(buttons)
        self.refresh()

    def names(self) -> list[str]:
        """The rows: the demo model shipped with the app (when this build has it), then the official backbones."""
        from app.gui.model_service import bundled_model
        from engine.models import zoo

        demo = bundled_model()
        return ([demo] if demo else []) + list(zoo.ZOO)

    def refresh(self) -> None:
        from app.gui.model_service import DEFAULT_MODEL, bundled_model, display_name
        from engine.models import zoo

        self.current_label.setText(f"In use: <b>{display_name(self.current)}</b>")
        names = self.names()
        self.table.setRowCount(len(names))
        demo = bundled_model()
        first = 0
        if demo:
            item = QTableWidgetItem(display_name(demo))
            item.setToolTip(f"{demo}\nA small ViT trained with the DINOv2 recipe, shipped with Dinoscope: it works "
                            "offline; the official backbones find much better matches")
            self.table.setItem(0, 0, item)
            self.table.setItem(0, 1, QTableWidgetItem("—"))
            self.table.setItem(0, 2, QTableWidgetItem("included"))
            self.table.setItem(0, 3, QTableWidgetItem("in use" if demo == self.current else "ready"))
            button = QPushButton("Use")
            button.setObjectName("action_bundled")
            button.setEnabled(demo != self.current)
            button.clicked.connect(lambda _=False, d=demo: self._use(d))
            self.table.setCellWidget(0, 4, button)
            first = 1
        for row, (name, entry) in enumerate(zoo.ZOO.items(), start=first):
            item = QTableWidgetItem(f"{name} (recommended)" if name == DEFAULT_MODEL else name)
            if name == DEFAULT_MODEL:
                font = item.font()
                font.setBold(True)
                item.setFont(font)
                item.setToolTip("The best balance of quality and speed on a laptop: download this one first")
            self.table.setItem(row, 0, item)
            self.table.setItem(row, 1, QTableWidgetItem(f"{entry.params / 1e6:.1f} M"))
            self.table.setItem(row, 2, QTableWidgetItem(f"{entry.approx_bytes / 1e6:.0f} MB"))
            if name in self.tasks:
                continue  # its progress bar stays
            status = zoo.status(name)
            self.table.setItem(row, 3, QTableWidgetItem("in use" if name == self.current else status))
            button = QPushButton("Use" if status == "downloaded" else "Download")
            button.setObjectName(f"action_{name}")
            button.clicked.connect(lambda _=False, n=name: self._action(n))
            self.table.setCellWidget(row, 4, button)

    def _row(self, name: str) -> int:
        return self.names().index(name)

    def _action(self, name: str) -> None:
        from engine.models import zoo

        if zoo.status(name) == "downloaded":
            self._use(name)
        else:
            self.start_download(name)

    def _use(self, source: str) -> None:
        self.current = source
        self.model_chosen.emit(source)
        self.refresh()

    def start_download(self, name: str) -> Task:
        row = self._row(name)
        bar = QProgressBar()
        bar.setObjectName(f"progress_{name}")
        bar.setRange(0, 0)
        cancel = QPushButton("Cancel")
        self.table.setCellWidget(row, 3, bar)
        self.table.setCellWidget(row, 4, cancel)
        task = Task(_download, name, name=f"download {name}")
        self.tasks[name] = task
        cancel.clicked.connect(task.cancel)

        def progress(done: int, total: int, _text: str) -> None:
            if total:
                bar.setRange(0, total)
                bar.setValue(done)
                bar.setFormat(f"{done / 1e6:.1f} / {total / 1e6:.1f} MB")

        def ended(*_: object) -> None:
            self.tasks.pop(name, None)
            self.table.removeCellWidget(row, 3)
            self.refresh()

        def failed(message: str, _tb: str) -> None:
            ended()
            QMessageBox.warning(self, "Download failed", message)

        task.signals.progress.connect(progress)
        task.signals.finished.connect(ended)
        task.signals.cancelled.connect(ended)
        task.signals.failed.connect(failed)
        self.runner.start(task)
        return task

    def _load_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a DINOv2 checkpoint", str(Path.home()),
            "Checkpoints (*.pth *.pt *.safetensors *.bin);;All files (*)",
        )
        if path:
            self.load_checkpoint(path)

    def load_checkpoint(self, path: str) -> Task:
        """Validate a checkpoint in a worker (strict load), then make it the model in use."""
        task = Task(_check_checkpoint, path, name="check checkpoint")
        task.signals.finished.connect(lambda desc: (self._use(path), self.current_label.setText(
            f"In use: <b>{path}</b> ({desc})")))
        task.signals.failed.connect(lambda msg, _tb: QMessageBox.warning(self, "Not a usable checkpoint", msg))
        self.runner.start(task)
        return task

    def keyPressEvent(self, event) -> None:  # Escape closes without cancelling downloads
        if event.key() == Qt.Key.Key_Escape:
            self.accept()
            return
        super().keyPressEvent(event)
