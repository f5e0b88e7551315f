"""The photo viewer: DINOv2 part colours (PCA), a patch's similarity heatmap, where some words are (dino.txt), EXIF,
region search, show in folder.

Every picture comes from engine.viz; this widget only decides when to ask for one and how to show it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from app.gui.widgets.photo_view import PhotoView
from app.gui.workers import Task, TaskRunner


def _tokens_task(report, cancelled, models, paths: list[str], resolution: int):
    """Decode the photo (and the joint set), and compute their dense patch tokens with the model in use."""
    from engine.imageio import load_rgb
    from engine.viz.patches import patch_tokens

    model = models.backbone()
    images = [load_rgb(p) for p in paths]
    tokens = patch_tokens(model, images, resolution=resolution,
                          progress=lambda p: report(p.done, p.total, "Patch tokens"))
    return images, tokens


def _parts_task(report, cancelled, tokens, threshold: float, joint: bool):
    from engine.viz.pca import fit_parts

    return fit_parts([t.tokens for t in tokens], [t.grid for t in tokens], threshold=threshold, joint=joint)


def _heatmap_task(report, cancelled, image, tokens, xy: tuple[float, float]):
    """Similarity of the clicked patch to every patch of this photo and of the joint set, drawn on this photo."""
    from engine.viz.heatmap import patch_similarity, render_heatmap

    q = tokens[0]
    maps = patch_similarity(q.tokens, q.grid, xy, q.size, [(t.tokens, t.grid, t.size) for t in tokens[1:]])
    return render_heatmap(image, maps[0], alpha=1.0), maps


def _words_task(report, cancelled, text, image, words: str):
    """dino.txt's open-vocabulary heatmap of `words` over the photo (the CLI's `heatmap --text`)."""
    from engine.text.heatmap import text_heatmap
    from engine.viz.heatmap import render_heatmap

    if cancelled():
        return None  # the viewer moved on to another photo before this one started
    report(0, 0, "Loading dino.txt…")
    model = text.model()
    report(0, 0, "Finding the words…")
    device = str(next(model.parameters()).device)  # the shared model is never moved (the search box uses it too)
    heat = text_heatmap(model, image, words, device=device)
    return render_heatmap(image, heat, alpha=1.0), heat


PARTS_LEGEND = ("Colours: the first 3 principal components of the foreground patches (the same part, the same "
                "colour); dark: background")


def _size_text(path: str) -> str:
    try:
        n = Path(path).stat().st_size
    except OSError:
        return "missing"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{max(1, round(n / 1e3))} KB"


def _exif_summary(path: str) -> str:
    from engine.imageio import ImageDecodeError, read_info

    try:
        info = read_info(path)
    except ImageDecodeError as e:
        return str(e)
    taken = info.captured_at.strftime("%Y-%m-%d %H:%M") if info.captured_at else "no capture date"
    return f"{info.width}×{info.height} {info.format} · {taken} · orientation {info.orientation}"


class Viewer(QWidget):
    region_search = Signal(str, tuple)  # path, (x0, y0, x1, y1) in image pixels
    show_in_folder_requested = Signal(str)
    title_changed = Signal(str)
    status = Signal(str)

    def __init__(self, models, runner: TaskRunner, parent: QWidget | None = None, text=None) -> None:
        super().__init__(parent)
        self.models, self.runner, self.text = models, runner, text
        self.words: str | None = None  # the words whose heatmap is shown (kept while walking the list)
        self._words_task: Task | None = None
        self.path: str | None = None
        self.context: list[str] = []  # other photos for joint colours / heatmaps (e.g. the current results)
        self.image: np.ndarray | None = None
        self.images: list[np.ndarray] = []
        self.tokens: list = []
        self.parts: list = []
        self.heatmaps: list = []
        self.resolution = 448
        self.sequence: list[str] = []  # the list the photo was opened from: Previous / Next walk it

        nav = QHBoxLayout()
        self.prev_button = QPushButton("◀")
        self.prev_button.setToolTip("The previous photo of the list this one was opened from")
        self.prev_button.clicked.connect(self.show_previous)
        self.next_button = QPushButton("▶")
        self.next_button.setToolTip("The next photo of the list this one was opened from")
        self.next_button.clicked.connect(self.show_next)
        self.title = QLabel()
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.title.setMinimumWidth(120)
        self.fit_button = QPushButton("Fit")
        self.fit_button.setToolTip("The whole photo in the window (small photos are enlarged at most 2×)")
        self.zoom100_button = QPushButton("100%")
        self.zoom100_button.setToolTip("One photo pixel per screen pixel; the wheel zooms in and out")
        for b in (self.prev_button, self.next_button, self.fit_button, self.zoom100_button):
            b.setFixedWidth(max(40, b.fontMetrics().horizontalAdvance(b.text()) + 24))
        bar = QHBoxLayout()
        self.parts_box = QCheckBox("Parts (PCA)")
        self.parts_box.setToolTip("DINOv2's patch features reduced to three colours; the same part, the same colour")
        self.parts_box.toggled.connect(self._parts_toggled)
        self.joint_box = QCheckBox("Joint")
        self.joint_box.setToolTip("Joint with the results: one PCA over this photo and the search results (or its "
                                  "neighbours in the list), so colours match across them")
        self.joint_box.toggled.connect(lambda _on: self._recompute_parts())
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(65)
        self.opacity.setMinimumWidth(80)
        self.opacity.setMaximumWidth(160)
        self.opacity.valueChanged.connect(lambda v: self.view.overlay.setOpacity(v / 100))
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.05, 0.95)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setToolTip("Foreground threshold on the first component (higher keeps less foreground)")
        self.threshold.valueChanged.connect(lambda _v: self._recompute_parts())
        self.heat_box = QCheckBox("Patch similarity")
        self.heat_box.setToolTip("Then click anywhere on the photo to see which patches look like that one")
        self.words_field = QLineEdit()
        self.words_field.setObjectName("words_field")
        self.words_field.setPlaceholderText("Find words in the photo…")
        self.words_field.setToolTip("Colours the photo by how well each part matches the words (dino.txt, "
                                    "downloaded in Model ▸ Models…); Enter shows it")
        self.words_field.setClearButtonEnabled(True)
        self.words_field.setMinimumWidth(150)
        self.words_field.setMaximumWidth(260)
        self.words_field.setEnabled(text is not None)
        self.words_field.returnPressed.connect(lambda: self.show_words(self.words_field.text()))
        self.words_field.textChanged.connect(lambda t: self._clear_words() if not t.strip() else None)
        self.region_button = QPushButton("Search a region…")
        self.region_button.setCheckable(True)
        self.region_button.setToolTip("Draw a box around an object to find it in other photos")
        self.region_button.toggled.connect(self._region_mode)
        self.folder_button = QPushButton("Show in folder")
        self.folder_button.clicked.connect(self.show_in_folder)
        for w in (self.prev_button, self.next_button):
            nav.addWidget(w)
        nav.addSpacing(8)
        nav.addWidget(self.title, 1)
        for w in (self.fit_button, self.zoom100_button, self.region_button, self.folder_button):
            nav.addWidget(w)
        for w in (self.parts_box, QLabel("Opacity"), self.opacity, QLabel("Threshold"), self.threshold,
                  self.joint_box, self.heat_box):
            bar.addWidget(w)
        bar.addStretch(1)
        bar.addWidget(self.words_field, 2)
        self.view = PhotoView()
        self.view.patch_clicked.connect(self._patch_clicked)
        self.view.box_drawn.connect(self._box_drawn)
        self.fit_button.clicked.connect(self.view.fit)
        self.zoom100_button.clicked.connect(self.view.actual_size)
        self.legend = QLabel(PARTS_LEGEND)
        self.legend.setWordWrap(True)
        self.legend.hide()
        self.info = QLabel()
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.addLayout(nav)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.legend)
        layout.addWidget(self.info)
        self._update_nav()

    # ---------------------------------------------------------------------------------------------- open
    def open(self, path: str, context: list[str] | None = None, sequence: list[str] | None = None) -> None:
        """Show ``path``; ``context`` are photos for joint colours, ``sequence`` the list Previous/Next walk
        (kept from the last call when the photo is in it)."""
        from engine.imageio import ImageDecodeError, load_rgb

        self.path = path
        if sequence is not None:
            self.sequence = list(sequence)
        elif path not in self.sequence:
            self.sequence = [path]
        self.context = [c for c in (context or []) if c != path][:8]
        self.tokens, self.parts = [], []
        self._update_nav()
        try:
            self.image = load_rgb(path)
        except ImageDecodeError as e:
            self.image = None
            self.info.setText(str(e))
            return
        self.view.set_image(self.image)
        self.info.setText(f"{path}\n{_exif_summary(path)}")
        if self.parts_box.isChecked() or self.heat_box.isChecked():
            self._ensure_tokens()
        elif self.words:
            self.show_words(self.words)

    def _update_nav(self) -> None:
        n = len(self.sequence)
        i = self.sequence.index(self.path) if self.path in self.sequence else -1
        self.prev_button.setEnabled(i > 0)
        self.next_button.setEnabled(0 <= i < n - 1)
        if self.path is None:
            self.title.setText("")
            return
        where = f" · {i + 1} of {n}" if n > 1 and i >= 0 else ""
        name = Path(self.path).name
        self.title.setText(f"<b>{name}</b> · {_size_text(self.path)}{where}")
        self.title_changed.emit(self.title_text())

    def title_text(self) -> str:
        return f"{Path(self.path).name} ({_size_text(self.path)})" if self.path else ""

    def show_next(self) -> bool:
        return self._step(1)

    def show_previous(self) -> bool:
        return self._step(-1)

    def _step(self, delta: int) -> bool:
        if self.path not in self.sequence:
            return False
        i = self.sequence.index(self.path) + delta
        if not 0 <= i < len(self.sequence):
            return False
        # The joint set follows the photo: its neighbours in the same list.
        near = self.sequence[max(0, i - 4) : i + 5]
        self.open(self.sequence[i], near)
        return True

    def _ensure_tokens(self, then=None) -> Task | None:
        if self.path is None:
            return None
        if self.tokens:
            if then:
                then()
            return None
        paths = [self.path, *self.context]
        task = Task(_tokens_task, self.models, paths, self.resolution, name="patch tokens")

        def done(result) -> None:
            self.images, self.tokens = result
            if then:
                then()
            elif self.parts_box.isChecked():
                self._recompute_parts()

        task.signals.finished.connect(done)
        task.signals.failed.connect(lambda m, _tb: self.status.emit(f"Patch features failed: {m}"))
        self.status.emit("Computing patch features…")
        return self.runner.start(task)

    # ---------------------------------------------------------------------------------------------- parts
    def _parts_toggled(self, on: bool) -> None:
        if on:
            self.heat_box.setChecked(False)
            self.words = None
            if self.tokens:
                self._recompute_parts()
            else:
                self._ensure_tokens()
        else:
            self.view.set_overlay(None)
        self.legend.setVisible(on)

    def _recompute_parts(self) -> Task | None:
        if not (self.parts_box.isChecked() and self.tokens):
            return None
        joint = self.joint_box.isChecked() and len(self.tokens) > 1
        tokens = self.tokens if joint else self.tokens[:1]
        task = Task(_parts_task, tokens, float(self.threshold.value()), joint, name="parts")
        task.signals.finished.connect(self._show_parts)
        task.signals.failed.connect(lambda m, _tb: self.status.emit(f"Part colours failed: {m}"))
        return self.runner.start(task)

    def _show_parts(self, parts: list) -> None:
        from engine.viz.pca import render_overlay

        self.parts = parts
        if not parts or self.image is None or not self.parts_box.isChecked():
            return
        overlay = render_overlay(self.image, parts[0], mode="parts", upsample="bicubic", background="dimmed")
        self.view.set_overlay(overlay, self.opacity.value() / 100)
        self.status.emit(parts[0].note or "Part colours: the first principal component separates the foreground")

    # -------------------------------------------------------------------------------------------- heatmap
    def _patch_clicked(self, x: float, y: float) -> None:
        if not self.heat_box.isChecked() or self.image is None:
            return
        self.parts_box.setChecked(False)
        self.words = None
        self._ensure_tokens(then=lambda: self.show_heatmap(x, y))

    def show_words(self, words: str) -> Task | None:
        """Where the words are in this photo (dino.txt), until the field is cleared; kept while walking the list."""
        words = " ".join(words.split())
        if not words or self.image is None or self.text is None:
            return None
        self.parts_box.setChecked(False)
        self.heat_box.setChecked(False)
        self.words = words
        if self._words_task is not None:
            self._words_task.cancel()  # walking the list: only the newest photo's map is wanted
        task = Task(_words_task, self.text, self.image, words, name="word heatmap")
        self._words_task = task
        path = self.path

        def shown(result) -> None:
            if result is None:
                return
            overlay, heat = result
            if self.path != path or self.words != words:
                return  # the photo or the words changed meanwhile
            self.view.set_overlay(overlay, self.opacity.value() / 100)
            self.status.emit(f"“{words}”: best match at cosine {heat.best_score:.3f} (red: most like the words)")

        task.signals.finished.connect(shown)
        task.signals.failed.connect(lambda m, _tb: self.status.emit(f"Finding the words failed: {m}"))
        self.status.emit(f"Finding “{words}”…")
        return self.runner.start(task)

    def _clear_words(self) -> None:
        if self.words is not None:
            self.words = None
            self.view.set_overlay(None)

    def show_heatmap(self, x: float, y: float) -> Task:
        task = Task(_heatmap_task, self.image, self.tokens, (x, y), name="heatmap")
        task.signals.finished.connect(self._show_heatmap)
        task.signals.failed.connect(lambda m, _tb: self.status.emit(f"Similarity failed: {m}"))
        return self.runner.start(task)

    def _show_heatmap(self, result) -> None:
        overlay, maps = result
        self.heatmaps = maps
        self.view.set_overlay(overlay, self.opacity.value() / 100)
        if len(maps) > 1:
            best = max(maps[1:], key=lambda m: m.best_score)
            self.status.emit(f"Best match among the results: cosine {best.best_score:.3f}")

    # --------------------------------------------------------------------------------------------- region
    def _region_mode(self, on: bool) -> None:
        self.view.box_mode = on
        self.status.emit("Draw a box around what you are looking for" if on else "")

    def _box_drawn(self, x0: float, y0: float, x1: float, y1: float) -> None:
        if self.path:
            self.region_search.emit(self.path, (x0, y0, x1, y1))
        self.region_button.setChecked(False)

    def show_in_folder(self) -> None:
        if self.path:
            self.show_in_folder_requested.emit(self.path)
