"""The backbone the app is using: which one, on which device, loaded once in a worker and shared by every panel."""

from __future__ import annotations

import logging
import threading
from typing import Any

from PySide6.QtCore import QObject, QSettings, Signal

DEFAULT_MODEL = "dinov2_vits14"
# A small ViT trained by us with the DINOv2 recipe (assets/models/README.md): what a first start without the zoo
# weights (offline, or before any download) indexes the sample photos with.
BUNDLED_MODEL = "models/dinoscope-tiny-demo.pth"

log = logging.getLogger(__name__)
QUICK_WAIT_S = 1.5


def bundled_model() -> str | None:
    """The bundled demo model's path, or None where the build left it out."""
    from app.gui.resources import asset_path

    path = asset_path(BUNDLED_MODEL)
    return str(path) if path.is_file() else None


def display_name(source: str) -> str:
    """What the status bar and the model manager call a model source."""
    from pathlib import Path

    bundled = bundled_model()
    if bundled is not None and Path(source) == Path(bundled):
        return "Dinoscope tiny demo (bundled)"
    return source


class ModelService(QObject):
    changed = Signal(str)  # the model source the user picked
    loaded = Signal(str, str)  # source, device description ("CPU bf16", "CUDA (NVIDIA H100) bf16")

    def __init__(self, settings: QSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.source: str = str(settings.value("model/source", DEFAULT_MODEL))
        self.device_name: str = str(settings.value("model/device", "auto"))
        # Index with int8 on the CPU (engine/runtime/ov_int8.py): off by default, since vectors move by ~0.0005
        # in cosine and CPUs with AMX gain nothing; searches keep the automatic precision either way.
        self.index_int8: bool = str(settings.value("model/index_int8", "false")).lower() == "true"
        self._lock = threading.Lock()
        self._extractor: Any = None
        self._extractor_source: str | None = None
        self._quick: Any = None  # engine.runtime.ov_quick.QuickExtractor while the full extractor loads
        self._quick_loading = threading.Event()  # clear while warm_up_quick runs
        self._quick_loading.set()
        self.device_text = ""

    def set_source(self, source: str) -> None:
        if source == self.source:
            return
        self.source = source
        self.settings.setValue("model/source", source)
        with self._lock:
            self._extractor = None
            self._extractor_source = None
        self._quick = None
        self.changed.emit(source)

    def set_index_int8(self, on: bool) -> None:
        self.index_int8 = bool(on)
        self.settings.setValue("model/index_int8", "true" if on else "false")

    def probe_device(self) -> str:
        """The device and precision inference will use, without loading a model (call from a worker)."""
        from engine import device as dev

        d = dev.pick_device(self.device_name)
        names = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
        text = f"{dev.describe(d)} {names[str(dev.pick_dtype(d))]}"
        if not self.device_text:
            self.device_text = text
        return text

    def available_locally(self) -> bool:
        """Whether the model can load without a download (a zoo file in the cache, or a local checkpoint)."""
        from pathlib import Path

        from engine.models import zoo

        if self.source in zoo.ZOO:
            return zoo.local_path(self.source) is not None
        return Path(self.source).exists()

    def extractor(self, progress=None, patch_tokens: bool = False):
        """The current model wrapped for inference; loads it on first use (call from a worker thread)."""
        from engine import device as dev
        from engine.extract import Extractor
        from engine.models import load_backbone

        with self._lock:
            if self._extractor is not None and self._extractor_source == self.source:
                ex = self._extractor
            else:
                model = load_backbone(self.source, progress=progress)
                ex = Extractor(model, device=self.device_name)
                self._extractor, self._extractor_source = ex, self.source
                self._quick = None  # its infer request's buffers are not needed any more
                runtime = " · OpenVINO" if getattr(ex, "backend", "torch") == "openvino" else ""
                self.device_text = f"{dev.describe(ex.device)} {ex.precision}{runtime}"
                self.loaded.emit(self.source, self.device_text)
        if patch_tokens and not ex.patch_tokens:
            ex.patch_tokens = True
        return ex

    def quick_key(self) -> str | None:
        """The model source as engine.runtime.ov_quick records it (a zoo name or an absolute path), or None."""
        import os

        key = os.path.expanduser(self.source)
        return key if os.path.isabs(key) or key.startswith("dinov2_") else None

    def warm_up_quick(self) -> bool:
        """Load the compiled model of an earlier session without torch (engine.runtime.ov_quick), so that a drop
        right after start-up is searched while torch still loads (call from a worker)."""
        key = self.quick_key()
        if self._quick is not None and self._quick.source == key:
            return True
        if key is None or self._extractor is not None:
            return False
        self._quick_loading.clear()
        try:
            from engine.runtime.ov_quick import quick_extractor

            quick = quick_extractor(key, self.device_name)  # never raises
        finally:
            self._quick_loading.set()
        # Kept only if the user did not switch models meanwhile and the full model did not get there first.
        if quick is not None and quick.source == self.quick_key() and self._extractor is None:
            self._quick = quick
            log.info("quick start: %s compiled by an earlier session, loaded without torch", key)
        return quick is not None

    def query_extractor(self):
        """What a search by photos embeds them with: the loaded extractor, else the quick one while the full one
        still loads, else the full one (loaded here; call from a worker). A quick start still loading is waited
        for (a second at most: it loads in well under that), since loading the full model here costs more."""
        if self._extractor is None or self._extractor_source != self.source:
            self._quick_loading.wait(QUICK_WAIT_S)
        ex, quick = self._extractor, self._quick
        if ex is not None and self._extractor_source == self.source:
            return ex
        if quick is not None and quick.source == self.quick_key():
            log.info("search: the quick-start model (OpenVINO %s, no torch) while the full model loads",
                     quick.precision)
            return quick
        return self.extractor()

    def warm_up(self, library=None, probe: bool = False) -> str:
        """Load torch, the model and the library's vector index, and run one forward pass, so that the first drop
        after the window appears waits for none of them (call from a worker; does nothing that needs a download).
        A model compiled in an earlier session answers first, without torch; `probe` then names the device."""
        self.warm_up_quick()
        if probe:
            self.probe_device()
        if not self.available_locally():
            return "model not on disk"
        import torch

        ex = self.extractor()
        ex.embed_tensor(torch.zeros(1, 3, 224, 224))  # the first forward allocates and picks kernels
        if library is not None:
            self.warm_up_index(library)
        return "ready"

    def warm_up_index(self, library) -> None:
        """Read the library's vector index of the model in use into memory (call from a worker)."""
        from engine.store.vectors import vector_index

        record = library.model_by_source(self.source)
        if record is not None:
            vector_index(library, record.id)

    def warm_up_index_named(self, name: str) -> None:
        """`warm_up_index` for the library the window is about to open, through a Library of its own, so that the
        vector index loads while the window opens the library (call from a worker)."""
        from engine.store import Library, StoreError

        try:
            lib = Library.open(name, create=False)
        except StoreError:  # gone or damaged: the window's own open says so
            return
        try:
            self.warm_up_index(lib)
        finally:
            lib.engine.dispose()  # not close(): that would drop the index just cached for the window's Library

    def backbone(self, progress=None):
        return self.extractor(progress).model
