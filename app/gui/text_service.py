"""dino.txt in the window: one model loaded in a worker and shared by the search field and the viewer's word
heatmaps, word vectors kept once computed, and the library's text indexing (the download, then dino.txt's ViT-L
over every photo) run in the background and remembered, so that a restart resumes it.

The model is 3.5 GB of float32 weights: it is loaded only when words are searched (the search field starts the
load at the first key press) and only one is held at a time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from PySide6.QtCore import QObject, QSettings, Signal

from app.gui.workers import Task

log = logging.getLogger(__name__)

SOURCE_KEY = "text/source"  # the dino.txt a library is indexed with when it has none yet: zoo name or folder
# engine.models.zoo.DINOTXT written out: importing the zoo imports torch, which loads after the first paint
DEFAULT_SOURCE = "dinov2_vitl14_reg4_dinotxt"
PENDING_KEY = "text/indexing"  # the library root whose text indexing has not ended (resumed at the next start)


def _text_index_task(report, cancelled, library_root: str, source: str, device: str, before=None) -> Any:
    """Download what is missing (resumable), then index every photo of the library with dino.txt."""
    from app.gui.library_service import _index_task
    from engine.models import zoo

    if source in (zoo.DINOTXT, zoo.DINOTXT_HUB_NAME) and zoo.text_model_status(source) != "downloaded":
        total = zoo.text_download_bytes(source)

        def progress(p) -> None:
            report(min(p.done, total), total, f"Downloading dino.txt {p.done / 1e9:.2f} / {total / 1e9:.1f} GB")

        zoo.download_text_model(source, progress=progress, cancel=cancelled)
    return _index_task(report, cancelled, library_root, [], source, device, before)


class TextService(QObject):
    source_changed = Signal(str)

    def __init__(self, settings: QSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self._lock = threading.RLock()
        self._model: Any = None
        self._model_key: tuple | None = None
        self._record_id: int | None = None
        self._extractor: Any = None
        self._vectors: dict[tuple, Any] = {}  # (model key, text) -> (unit vector, notes)
        self.backend: str | None = None  # "torch" or "openvino", chosen at the first text encoded
        self._source = self._read_source()  # read here, on the UI thread: workers never touch QSettings

    # ------------------------------------------------------------------------------------------ source
    def _read_source(self) -> str:
        return str(self.settings.value(SOURCE_KEY, DEFAULT_SOURCE))

    @property
    def source(self) -> str:
        return self._source

    def set_source(self, source: str) -> None:
        self.settings.setValue(SOURCE_KEY, source)
        self._source = source
        self.source_changed.emit(source)

    def record(self, lib, counts: dict | None = None):
        """The library's dino.txt model record, or engine.text.query.NoTextVectors."""
        from engine.text.query import text_model_record

        return text_model_record(lib, counts=counts)

    def cost(self, lib, counts: dict | None = None):
        from engine.text.query import text_index_cost

        return text_index_cost(lib, self.source, counts)

    # ------------------------------------------------------------------------------------------- model
    def model(self, source: str | None = None, progress=None, record=None):
        """The whole dino.txt model from `source` (default: the setting), loaded once; never downloads (the text
        index task does that, with its progress and Cancel). With `record`, its source, checked against the
        weights the library's vectors came from."""
        from engine.models import load_dinotxt
        from engine.text.query import check_text_model

        source = str(record.source) if record is not None else (source or self.source)
        with self._lock:
            if self._model is None or self._model_key[0] != source:
                self._model = self._extractor = None  # one 3.5 GB model at a time
                self._vectors.clear()
                _require_on_disk(source)
                self._model = load_dinotxt(source, progress=progress, allow_download=False)
                self._model_key = (source, None)
            if record is not None and self._model_key[1] != record.checkpoint_hash:
                check_text_model(self._model, record)
                self._model_key = (source, record.checkpoint_hash)
            return self._model

    def library_model(self, lib, progress=None, record=None):
        """(record, model): the dino.txt the library's vectors came from (`record`, if the caller has it). The
        model stays on the CPU, where OpenVINO reads its text encoder; the word heatmap runs it there too rather
        than moving a shared model."""
        record = record if record is not None else self.record(lib)
        return record, self.model(progress=progress, record=record)

    def embed(self, lib, texts: list[str], progress=None, record=None):
        """(record, (n, D) unit vectors, notes) for the words, against the library's dino.txt vectors. A text
        searched before costs nothing; the first one encoded compiles the OpenVINO text encoder where it is used."""
        import numpy as np

        from engine.text.query import embed_texts, text_backend

        rows, notes = [], []
        with self._lock:  # held throughout: a reload in between would file vectors under the wrong model
            record, model = self.library_model(lib, progress, record)
            for text in texts:
                key = (self._model_key, text)
                if key not in self._vectors:
                    if self.backend is None:
                        self.backend = text_backend()
                    try:
                        query = embed_texts(model, [text], backend=self.backend)
                    except Exception as e:  # a failed OpenVINO compile falls back to torch
                        if self.backend != "openvino":
                            raise
                        log.warning("OpenVINO cannot run the dino.txt text encoder (%s); torch encodes words", e)
                        self.backend = "torch"
                        query = embed_texts(model, [text], backend="torch")
                    self._vectors[key] = (query.vectors[0], query.notes)
                vector, why = self._vectors[key]
                rows.append(vector)
                notes.extend(why)
        return record, np.stack(rows).astype(np.float32), notes

    def image_extractor(self, lib, device: str = "auto", patch_tokens: bool = False, record=None):
        """dino.txt's image side wrapped for queries by photo (the space the library's text vectors live in)."""
        from engine.extract import Extractor

        with self._lock:
            _record, model = self.library_model(lib, record=record)
            if self._extractor is None:
                self._extractor = Extractor(model.image_encoder(), device=device)
            ex = self._extractor
        if patch_tokens and not ex.patch_tokens:
            ex.patch_tokens = True
        return ex

    def warm_up(self, lib) -> str:
        """Load the model and encode one text, so that the first search by words waits for neither (a worker)."""
        from engine.text.query import NoTextVectors

        try:
            self.embed(lib, ["a photo"])
        except NoTextVectors:
            return "no text vectors"
        return "ready"

    # ---------------------------------------------------------------------------------------- indexing
    def index_task(self, library_root: str, device: str = "auto", before=None) -> Task:
        return Task(_text_index_task, library_root, self.source, device, before, name="text index")

    def mark_pending(self, library_root: str) -> None:
        self.settings.setValue(PENDING_KEY, library_root)
        self.settings.sync()

    def clear_pending(self) -> None:
        self.settings.remove(PENDING_KEY)
        self.settings.sync()

    def pending_for(self, library_root: str) -> bool:
        return str(self.settings.value(PENDING_KEY, "")) == library_root


def _require_on_disk(source: str) -> None:
    """Searching never downloads 3.5 GB: the zoo's files must be on disk (the text index task fetches them)."""
    from engine.models import CheckpointError, zoo

    if source in (zoo.DINOTXT, zoo.DINOTXT_HUB_NAME) and zoo.text_model_status(zoo.DINOTXT) != "downloaded":
        raise CheckpointError(f"{zoo.DINOTXT} is not downloaded: download it in Model ▸ Models… (or index the "
                              "library for text search, which downloads it)")
