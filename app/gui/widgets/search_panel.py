"""Search: words typed in the search field and photos dropped or pasted, as chips (removable), the ranked results
with cosine scores, "more like these".

Queries may come from anywhere: files dropped from a file manager or from a grid, pixels from a browser or the
clipboard, a box drawn on the viewer, words (dino.txt). `engine.query.run_query` reads, recognises and embeds them
and ranks the library; this panel only collects them and shows the outcome. The main window owns the one drop
handler and the paste shortcut; both call `search_files`/`search_bytes` with `add=True` when Shift is held (else
the new photos replace the photos of the query). Words and photos are two parts of one query: Enter in the search
field replaces the words (Shift+Enter adds more), a drop replaces the photos, and the query is the mean of all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImageReader, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.gui.thumbnails import ThumbnailCache
from app.gui.widgets.photo_view import region_thumbnail
from app.gui.widgets.query_chips import QueryChip, QueryChips
from app.gui.widgets.thumbnail_grid import GridItem, ThumbnailGrid
from app.gui.workers import Task, TaskRunner

log = logging.getLogger(__name__)


@dataclass
class Query:
    label: str
    path: str | None = None  # a file
    data: bytes | None = None  # pasted or dragged pixels, encoded (PNG, JPEG...)
    image_id: int | None = None  # a library photo ("More like these")
    box: tuple[float, float, float, float] | None = None  # region of `path`
    text: str | None = None  # words (dino.txt)
    thumb: QPixmap | None = field(default=None, repr=False)

    def source(self):
        """What engine.query takes for this query."""
        from engine.query import LibraryPhoto

        if self.image_id is not None:
            return LibraryPhoto(self.image_id)
        return self.data if self.data is not None else Path(self.path)


def _small_pixmap(path: str, size: int) -> QPixmap:
    """Decode at reduced size (libjpeg scaling) with EXIF orientation: cheap even for 12 MP photos."""
    reader = QImageReader(path)
    reader.setAutoTransform(True)
    full = reader.size()
    if full.isValid():
        reader.setScaledSize(full.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio))
    return QPixmap.fromImage(reader.read())


@dataclass
class NeedsTextIndex:
    """What a words search returns in a library without dino.txt vectors: the cost of adding them."""

    cost: object


def _search_task(report, cancelled, models, text, lib, queries: list[Query], k: int, fold: bool = True):
    """Run the query through engine.query (the CLI's path too); returns (outcome, notes).

    ``lib`` is the window's open Library, shared on purpose: it keeps the vector index in memory between searches
    (reading it again from disk cost a search at 100k photos about as much as the model's forward pass). The model
    is loaded only if a query is not a library photo. With words, everything runs in dino.txt's space: the words'
    vectors join the photos' (`also`), which dino.txt's image side embeds, against the library's dino.txt vectors.
    """
    from engine.query import Region, run_query

    regions = [q for q in queries if q.box]
    words = [q.text for q in queries if q.text]
    photos = [q.source() for q in queries if not q.text and not q.box]
    notes: list[str] = []
    extra = None
    if words:
        from engine.text.query import NoTextVectors, TextQuery, region_text_vector

        report(0, 0, "Reading the words…")
        counts = lib.counts()  # once: which dino.txt, how far it reaches, or what indexing with it would cost
        try:
            record = text.record(lib, counts)
        except NoTextVectors:
            return NeedsTextIndex(text.cost(lib, counts))
        record, vectors, notes = text.embed(lib, words, record=record)
        have, photos_in_library = counts["per_model"].get(record.id, 0), counts.get("ok", 0)
        if have < photos_in_library:  # a cancelled or unfinished run, or photos added since
            notes = [*notes, f"words reach {have} of {photos_in_library} photos so far (Model ▸ Models… ▸ "
                             "Index library adds the others)"]
        extra = region_text_vector(TextQuery(vectors)) if regions else vectors
        load = lambda: text.image_extractor(lib, models.device_name, patch_tokens=bool(regions), record=record)
    else:
        record = lib.model_by_source(models.source)
        load = (lambda: models.extractor(patch_tokens=True)) if regions else models.query_extractor
    report(0, 0, "Searching…")
    model_id = record.id if record else None
    if regions:
        q = regions[-1]
        outcome = run_query(lib, load, region=Region(q.source(), q.box), k=k, model_id=model_id, also=extra,
                            fold_stacks=fold, cancel=cancelled)
    else:
        outcome = run_query(lib, load, photos, k=k, model_id=model_id, also=extra, fold_stacks=fold,
                            cancel=cancelled)
    return outcome, notes


class SearchPanel(QWidget):
    open_photo = Signal(str, list)  # path, the result paths (the list the viewer walks with Left/Right)
    results_changed = Signal(list, list)  # query image ids (those in the library), result image ids
    status = Signal(str)
    task_started = Signal(object, str)  # a long task: the window's task bar shows its progress and Cancel
    error = Signal(str, str)
    text_index_needed = Signal(object)  # words were searched in a library without dino.txt vectors: the cost

    def __init__(self, models, libraries, runner: TaskRunner, cache: ThumbnailCache, text=None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.models, self.libraries, self.runner, self.text = models, libraries, runner, text
        self.queries: list[Query] = []
        self.results: list = []
        self._warming: str | None = None  # the library whose dino.txt load the first key press started

        top = QHBoxLayout()
        self.field = QLineEdit()
        self.field.setObjectName("search_field")
        self.field.setPlaceholderText("Search by words, e.g. a red bicycle by the sea (dino.txt) — Enter searches")
        self.field.setClearButtonEnabled(True)
        self.field.setToolTip("Words and dropped photos combine into one query. Enter replaces the words of the "
                              "query; Shift+Enter adds them. Needs the library indexed with dino.txt "
                              "(Model ▸ Models…)")
        self.field.returnPressed.connect(self._field_entered)
        self.field.textEdited.connect(self._warm_up_text)
        self.field.setEnabled(text is not None)
        top.addWidget(self.field, 1)
        top.addWidget(QLabel("Results"))
        self.k = QSpinBox()
        self.k.setRange(1, 1000)
        self.k.setValue(60)
        top.addWidget(self.k)
        self.stack_box = QCheckBox("Hide near-duplicates")
        self.stack_box.setChecked(True)
        self.stack_box.setToolTip("Near-identical copies and bursts show as their best-ranked photo; the number "
                                  "after its score says how many more it stands for")
        self.stack_box.toggled.connect(lambda _on: self.run() if self.queries else None)
        top.addWidget(self.stack_box)
        self.more_button = QPushButton("More like these")
        self.more_button.setToolTip("Search again with the selected results added to the queries")
        self.more_button.clicked.connect(self.more_like_selected)
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear)
        top.addWidget(self.more_button)
        top.addWidget(self.clear_button)

        self.chips = QueryChips("Drop photos here (or anywhere on the window), paste one with Ctrl+V, or type "
                                "words above, to find matching photos in the library.")
        self.chips.remove_requested.connect(self.remove_query)

        self.grid = ThumbnailGrid(cache)
        self.grid.activated.connect(self._open_result)  # double-click, or Enter on the selected result

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.chips)
        layout.addWidget(self.grid, 1)

    # ------------------------------------------------------------------------------------------ queries
    def search_files(self, paths: list[Path], add: bool = False) -> Task | None:
        """Search by files (a folder gives its image files); `add` keeps the current queries (Shift held)."""
        from engine.query import expand_inputs

        files, skipped = expand_inputs(paths)
        if skipped:
            self.status.emit(f"{len(skipped)} more photos left out: {skipped[0].message}")
        return self._set_queries([Query(label=f.name, path=str(f)) for f in files], add)

    def search_bytes(self, data: bytes, label: str = "dropped image", add: bool = False) -> Task | None:
        """Search by encoded pixels that arrived without a file (a browser drag, the clipboard)."""
        return self._set_queries([Query(label=label, data=data)], add)

    def add_queries(self, queries: list[Query]) -> Task | None:
        return self._set_queries(queries, add=True)

    def _set_queries(self, queries: list[Query], add: bool) -> Task | None:
        """New photos replace the query's photos (a region too), or join them with `add`; the words stay."""
        if not add:
            self.queries = [q for q in self.queries if q.text]
        self.queries = [q for q in self.queries if not q.box] + queries
        return self.run()

    def search_text(self, words: str, add: bool = False) -> Task | None:
        """Words from the search field: replace the query's words (the photos stay), or join them with `add`."""
        words = " ".join(words.split())
        if not words:
            self.status.emit("Type some words to search for")
            return None
        kept = self.queries if add else [q for q in self.queries if not q.text]
        self.queries = [*kept, Query(label=words, text=words)]
        return self.run()

    def _field_entered(self) -> None:
        from PySide6.QtWidgets import QApplication

        words = self.field.text()
        if words.strip():
            self.field.clear()  # the words show as a chip from now on
        self.search_text(words, add=bool(QApplication.keyboardModifiers() & Qt.KeyboardModifier.ShiftModifier))

    def _warm_up_text(self, _text: str) -> None:
        """The first key press starts loading dino.txt (3.5 GB), so Enter waits less."""
        lib = self.libraries.library
        if self.text is None or lib is None or self._warming == str(lib.root):
            return
        self._warming = str(lib.root)  # once per library (it does nothing where there are no dino.txt vectors)
        self.runner.start(Task(lambda _r, _c: self.text.warm_up(lib), name="dino.txt warm-up"))

    def search_region(self, path: str, box: tuple[float, float, float, float]) -> Task | None:
        self.queries = [Query(label=f"{Path(path).name} (region)", path=path, box=box)]
        return self.run()

    def remove_query(self, i: int) -> Task | None:
        """The chip's ×, or Delete on a chip."""
        if 0 <= i < len(self.queries):
            del self.queries[i]
        return self.run() if self.queries else self.clear()

    def more_like_selected(self) -> Task | None:
        picked = self.grid.selected_items()
        if not picked:
            self.status.emit("Select some results first")
            return None
        return self.add_queries([Query(label=Path(it.path).name, path=it.path, image_id=it.image_id)
                                 for it in picked])

    def clear(self) -> None:
        self.queries, self.results = [], []
        self.chips.set_chips([])
        self.grid.grid_model().set_items([])

    def _show_queries(self) -> None:
        chips = []
        for q in self.queries:
            pix = None
            if q.text:
                chips.append(QueryChip(q.label, None, words=True, tooltip=f"Words: {q.text}"))
                continue
            if q.data is not None:
                pix = QPixmap()
                pix.loadFromData(q.data)
            elif q.path and q.box:  # a region search: the box it looked for, not the whole photo
                pix = region_thumbnail(q.path, q.box, 96)
            elif q.path:
                pix = _small_pixmap(q.path, 96)
            chips.append(QueryChip(q.label, pix, tooltip=q.path or q.label))
        self.chips.set_chips(chips)

    # -------------------------------------------------------------------------------------------- search
    def run(self) -> Task | None:
        lib = self.libraries.library
        if not self.queries or lib is None or (self.text is None and any(q.text for q in self.queries)):
            self._show_queries()
            if not self.queries:
                return None
            if lib is None:
                self.error.emit("No library", "Open a library or add a folder of photos first.")
            else:
                self.error.emit("No search by words", "This window has no dino.txt service.")
            return None
        task = Task(_search_task, self.models, self.text, lib, list(self.queries), self.k.value(),
                    self.stack_box.isChecked(), name="search")
        task.signals.finished.connect(self._show_results)
        task.signals.failed.connect(lambda m, _tb: self.error.emit("Search failed", m))
        self.status.emit("Searching…")
        self.task_started.emit(task, "Searching")  # the task bar connects to it before it can end
        self.runner.start(task)
        self._show_queries()  # after the start: a chip decodes its photo here (~30 ms for 12 MP) while it searches
        return task

    def _show_results(self, result) -> None:
        if isinstance(result, NeedsTextIndex):
            self.status.emit("Searching by words needs the library indexed with dino.txt")
            self.text_index_needed.emit(result.cost)
            return
        outcome, notes = result
        results, problems = outcome.results, [u.message for u in outcome.unusable]
        self.results = results
        self.results_changed.emit(list(outcome.in_library), [r.image_id for r in results])
        self.grid.grid_model().set_items(
            [GridItem(r.image_id, r.path, score=r.score,
                      caption=f"#{r.rank}  {r.score:.3f}" + (f"  +{len(r.stack)}" if r.stack else ""))
             for r in results])
        n = len(self.queries)
        msg = f"{len(results)} results for {n} quer{'y' if n == 1 else 'ies'}"
        log.info("search: %s; first: %s", msg, results[0].path if results else None)
        if outcome.in_library:
            msg += f" · {len(outcome.in_library)} from the library, not listed"
        msg += "".join(f" · {note}" for note in notes)
        if problems:
            msg += f" · {len(problems)} unreadable: " + "; ".join(problems[:3])
            self.error.emit("Some photos could not be read", "\n".join(problems))
        self.status.emit(msg)

    def _open_result(self, index) -> None:
        it = self.grid.grid_model().items[index.row()]
        self.open_photo.emit(it.path, [r.path for r in self.results])
