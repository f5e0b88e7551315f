"""The model manager: official backbones with download buttons and progress, local checkpoints, the one in use,
and dino.txt (search by words): its download, and indexing the library with it."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
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

from app.gui.widgets.task_bar import set_progress
from app.gui.workers import Task, TaskRunner


def _download(report, cancelled, name: str) -> str:
    from engine.models import zoo

    # a cancel raises engine.progress.Cancelled, which the Task reports as cancelled
    return str(zoo.download(name, progress=lambda p: report(p.done, p.total or 0), cancel=cancelled))


def _download_text(report, cancelled, name: str) -> str:
    from engine.models import zoo

    total = zoo.text_download_bytes(name)
    zoo.download_text_model(name, progress=lambda p: report(min(p.done, total), total), cancel=cancelled)
    return name


def _check_dinotxt(report, cancelled, folder: str) -> str:
    from engine.models import load_dinotxt

    model = load_dinotxt(folder, allow_download=False)
    return f"dino.txt, {model.image_encoder().embed_dim}-d vectors"


def _check_checkpoint(report, cancelled, path: str) -> str:
    from engine.models import load_backbone

    model = load_backbone(path, allow_download=False)
    c = model.config
    return f"{c.depth} blocks, {c.embed_dim}-d, patch {c.patch_size}, {c.num_register_tokens} registers"


class ModelManager(QDialog):
    """Lists the zoo; Download fetches with a progress bar (cancellable, resumable); Use switches the app."""

    model_chosen = Signal(str)
    text_source_chosen = Signal(str)  # a dino.txt folder to search by words with
    text_index_requested = Signal()  # index the open library with dino.txt (the window runs it)

    def __init__(self, runner: TaskRunner, current: str, parent: QWidget | None = None,
                 text_source: str | None = None, index_int8: bool = False) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.resize(820, 460)
        self.runner = runner
        self.current = current
        self.text_source = text_source
        self.tasks: dict[str, Task] = {}
        layout = QVBoxLayout(self)
        self.current_label = QLabel()
        layout.addWidget(self.current_label)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Model", "Parameters", "Download size", "Status", ""])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        # The names are what a user reads first (dino.txt's is 26 characters): never elided
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        layout.addWidget(self.table)
        layout.addWidget(self._int8_box(index_int8))
        buttons = QHBoxLayout()
        self.load_button = QPushButton("Load checkpoint…")
        self.load_button.setToolTip("A .pth, .safetensors or .bin file, or a Hugging Face model folder")
        self.load_button.clicked.connect(self._load_checkpoint)
        self.load_text_button = QPushButton("Load dino.txt folder…")
        self.load_text_button.setToolTip("A folder holding dino.txt's three official files (backbone, vision head, "
                                         "text encoder): search by words with it")
        self.load_text_button.clicked.connect(self._load_dinotxt)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.load_text_button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout.addLayout(buttons)
        self.refresh()

    def _int8_box(self, on: bool) -> QCheckBox:
        """Indexing in int8: offered where OpenVINO and NNCF can run it, greyed out with the reason elsewhere."""
        from engine.runtime import int8_unavailable

        box = QCheckBox("Index faster with int8 on the CPU (photos indexed from now on; searches are unchanged)")
        box.setObjectName("index_int8")
        reason = int8_unavailable()
        box.setChecked(on and reason is None)
        box.setEnabled(reason is None)
        box.setToolTip(reason or "Takes effect when this dialog closes. The model is quantised once on the bundled "
                       "sample photos (10-20 s for ViT-S/B, longer for L/g). Measured 1.3-1.6x faster than bf16 on "
                       "CPUs without AMX, no faster on CPUs with AMX; vectors within a cosine of 0.999 of full "
                       "precision (random weights), so photos indexed either way search together.")
        self.int8_box = box
        return box

    def names(self) -> list[str]:
        """The rows: the demo model shipped with the app (when this build has it), then the official backbones."""
        from app.gui.model_service import bundled_model
        from engine.models import zoo

        demo = bundled_model()
        return ([demo] if demo else []) + list(zoo.ZOO) + list(zoo.TEXT_MODELS)

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
        for row, (name, entry) in enumerate(zoo.TEXT_MODELS.items(), start=first + len(zoo.ZOO)):
            self._text_row(row, name, entry)

    def _text_row(self, row: int, name: str, entry) -> None:
        """dino.txt: not a backbone to switch to but a second index of the library, searched by words."""
        from engine.models import zoo

        item = QTableWidgetItem(f"{name}\n(search by words)")
        item.setToolTip("dino.txt (Meta, Apache-2.0): DINOv2 ViT-L/14 with registers, a vision head and a text "
                        "encoder. Indexing the library with it lets the Search tab's field find photos by words; "
                        "the model in use for photos stays as it is")
        self.table.setItem(row, 0, item)
        self.table.setItem(row, 1, QTableWidgetItem(f"{entry.params / 1e6:.0f} M"))
        left = zoo.text_download_bytes(name)
        size = f"{entry.approx_bytes / 1e9:.1f} GB"
        if 0 < left < entry.approx_bytes:
            size += f" ({left / 1e9:.1f} GB left)"
        self.table.setItem(row, 2, QTableWidgetItem(size))
        if name in self.tasks:
            return
        status = zoo.text_model_status(name)
        folder = self.text_source not in (None, name, zoo.DINOTXT_HUB_NAME)
        self.table.setItem(row, 3, QTableWidgetItem(f"using {self.text_source}" if folder else status))
        ready = status == "downloaded" or folder
        button = QPushButton("Index library" if ready else "Download")
        button.setObjectName(f"action_{name}")
        button.setToolTip("Index the open library with dino.txt in the background, so that words find its photos"
                          if ready else "Download the three files (resumable); then index the library with it")
        button.clicked.connect(self.text_index_requested.emit if ready else
                               (lambda _=False, n=name: self.start_download(n)))
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
        from engine.models import zoo

        task = Task(_download_text if name in zoo.TEXT_MODELS else _download, name, name=f"download {name}")
        self.tasks[name] = task
        cancel.clicked.connect(task.cancel)

        def progress(done: int, total: int, _text: str) -> None:
            if total:
                set_progress(bar, done, total)
                bar.setFormat(f"{done / 1e9:.2f} / {total / 1e9:.2f} GB" if total >= 1e9 else
                              f"{done / 1e6:.1f} / {total / 1e6:.1f} MB")

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

    def _load_dinotxt(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A folder with dino.txt's three files", str(Path.home()))
        if folder:
            self.load_dinotxt(folder)

    def load_dinotxt(self, folder: str) -> Task:
        """Check a dino.txt folder in a worker (strict load of the three files); then search by words with it."""
        task = Task(_check_dinotxt, folder, name="check dino.txt")

        def chosen(desc: str) -> None:
            self.text_source = folder
            self.text_source_chosen.emit(folder)
            self.current_label.setText(f"Search by words: <b>{folder}</b> ({desc})")
            self.refresh()

        task.signals.finished.connect(chosen)
        task.signals.failed.connect(lambda msg, _tb: (QMessageBox.warning(self, "Not a dino.txt folder", msg),
                                                      self.refresh()))
        self.current_label.setText(f"Reading the three dino.txt files in <b>{folder}</b> (3.5 GB for the full "
                                   "model: seconds)…")
        self.runner.start(task)
        return task

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
