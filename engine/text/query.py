"""Search a library by words: text -> a unit vector in dino.txt's space, ranked against the library's dino.txt
image vectors, optionally averaged with image queries (each normalised first, as image searches already do).

The library's dino.txt vectors are `encode_image` outputs stored by `index --model dinov2_vitl14_reg4_dinotxt`
(or a folder of the three files); text search finds that model among the library's, loads the whole model
from the same source, and checks its image side against the weights hash the vectors were computed with.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine.models import zoo
from engine.models.dinotxt import DinoTxt
from engine.models.dinotxt_load import is_dinotxt_source, load_dinotxt
from engine.models.download import ProgressFn
from engine.store.library import Library, ModelRecord
from engine.store.schema import StoreError
from engine.text.tokenizer import Tokenizer

# Measured with bench/text.py and bench/backends.py (full-size ViT-L/14-reg + head, random weights, 224 px, bf16,
# Extractor as indexing runs it) on the quiet 2-core build machine, an Intel Xeon with AMX: 6.9-7.7 img/s (torch and
# OpenVINO alike; fp32 1.6-1.7). A CPU without AMX is several times slower (0.33 img/s on a shared 2-core EPYC).
# Stated in the "no dino.txt vectors" message so a user can judge the cost before starting.
CPU_IMAGES_PER_S = 7.0
DOWNLOAD_GB = zoo.text_entry(zoo.DINOTXT).approx_bytes / 1e9
TEXT_OPENVINO_PRECISION = "int8"  # the search box's text encoder (engine.text.openvino_text.PRECISIONS)


class NoTextVectors(StoreError):
    """The library has no dino.txt vectors; the message gives the one command that adds them and its cost."""


@dataclass
class TextQuery:
    vectors: np.ndarray  # (n, D) float32, unit rows
    notes: list[str] = field(default_factory=list)  # e.g. a text cut at the context length


def is_text_model(record: ModelRecord) -> bool:
    """Indexed from the zoo name or a dino.txt folder; a moved folder still counts by its name, so the error
    is then about the missing folder rather than about missing vectors."""
    names = [os.fspath(s) for s in (record.source, record.name) if s]
    return any(is_dinotxt_source(s) or _named_like_dinotxt(s) for s in names)


def _named_like_dinotxt(source: str) -> bool:
    """A folder (not a checkpoint file) whose own name says dino.txt; a parent folder's name says nothing."""
    from pathlib import PurePath

    last = PurePath(source).name.lower()
    return "dinotxt" in last.replace(".", "").replace("-", "").replace("_", "") and \
        PurePath(last).suffix not in (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


def text_model_record(lib: Library, source: str | os.PathLike | None = None,
                      counts: dict | None = None) -> ModelRecord:
    """The library's dino.txt model (the one indexed from `source`, or the most recent), or NoTextVectors.
    `counts`: lib.counts() if the caller has it (two GROUP BYs over 100k rows: 15-30 ms)."""
    counts = counts if counts is not None else lib.counts()
    per_model = counts.get("per_model", {})
    found = [m for m in lib.models() if is_text_model(m) and per_model.get(m.id)]
    if source is not None:
        wanted = {os.fspath(source), str(os.path.abspath(os.path.expanduser(os.fspath(source))))}
        found = [m for m in found if {m.name, m.source} & wanted]
    if found:
        return found[-1]
    cost = text_index_cost(lib, counts=counts)
    raise NoTextVectors(
        f"library '{lib.name}' has no dino.txt vectors, which text search needs. Add them with:\n"
        f"  python -m app index --library {lib.name} --model {zoo.DINOTXT}\n"
        f"(a one-time {DOWNLOAD_GB:.1f} GB download; its ViT-L ran at {CPU_IMAGES_PER_S:g} photos/s on a 2-core "
        f"CPU with AMX, where {cost.photos} photos would take about {_hours(cost.hours)}; CPUs without AMX are "
        "several times slower, a GPU far faster)"
    )


def _hours(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{max(1, round(hours * 60))} min"


@dataclass(frozen=True)
class TextIndexCost:
    """What adding dino.txt vectors to a library costs: photos still without them, the CPU time at the measured
    rate, and the bytes still to download (0 when the three files are on disk)."""

    photos: int
    hours: float
    download_bytes: int


def text_index_cost(lib: Library, source: str | os.PathLike = zoo.DINOTXT,
                    counts: dict | None = None) -> TextIndexCost:
    """`source`: the zoo name (its missing files count as the download) or a folder (nothing to download)."""
    counts = counts if counts is not None else lib.counts()
    done = max((n for m in lib.models() if is_text_model(m) for n in [counts.get("per_model", {}).get(m.id, 0)]),
               default=0)
    photos = max(0, counts.get("ok", 0) - done)
    download = 0
    if source in (zoo.DINOTXT, zoo.DINOTXT_HUB_NAME):
        download = zoo.text_download_bytes(str(source))
    return TextIndexCost(photos, photos / CPU_IMAGES_PER_S / 3600, download)


def text_backend(requested: str | None = None) -> str:
    """The backend a long-lived process (the window) encodes words with: OpenVINO on an x86 CPU where it is
    installed (a query reads every text weight once; OpenVINO does that several times faster), torch otherwise.
    `requested` (or DINOSCOPE_BACKEND) "torch" or "openvino" forces one."""
    from engine.runtime import is_x86
    from engine.text.openvino_text import available

    choice = requested or os.environ.get("DINOSCOPE_BACKEND", "auto") or "auto"
    if choice in ("torch", "openvino"):
        return choice
    return "openvino" if is_x86() and available() else "torch"


def load_text_model(record: ModelRecord, source: str | os.PathLike | None = None,
                    progress: ProgressFn | None = None) -> DinoTxt:
    """The whole dino.txt model the record's vectors came from, checked by the image side's weights hash."""
    given = source if source is not None else record.source
    model = load_dinotxt(given, progress=progress)
    check_text_model(model, record, given)
    return model


def check_text_model(model: DinoTxt, record: ModelRecord, given: str | os.PathLike | None = None) -> None:
    """ValueError unless the model's image side is the one the record's vectors were computed with."""
    from engine.store.indexer import model_hash

    if model_hash(model.image_encoder()) != record.checkpoint_hash:
        raise ValueError(f"the weights of {given or record.source} are not the ones the library's dino.txt vectors "
                         "were computed with (the files changed?); index the library again with it")


_OPENVINO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> compiled OpenVINO text encoder


def _openvino_encoder(model: DinoTxt):
    """The model's text encoder compiled by OpenVINO with int8 weights (cosine 0.9999 to torch fp32; 35 ms a query
    on the quiet build CPU against torch's 165 ms: bench/text.py)."""
    encoder = _OPENVINO.get(model)
    if encoder is None:
        from engine import data_home
        from engine.text.openvino_text import OpenVinoText, cache_key

        text_file = getattr(model, "files", {}).get("text_encoder")
        key = cache_key(text_file) if text_file is not None else None
        encoder = OpenVinoText(model.text_model, TEXT_OPENVINO_PRECISION, data_home.cache_dir() / "openvino", key)
        _OPENVINO[model] = encoder
    return encoder


def encode_text_ids(model: DinoTxt, ids: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """(n, D) unnormalised text features. backend "openvino" suits a long-lived process (the GUI's search box):
    the first use converts the model with int8 weights (seconds, then cached on disk) and each start compiles
    it, after which a query takes 35 ms instead of torch's 165 ms on the quiet build CPU (bench/text.py). A
    one-shot command is faster with "torch"."""
    if backend not in ("torch", "openvino"):
        raise ValueError(f"unknown backend {backend!r}; choose torch or openvino")
    if backend == "openvino":
        return _openvino_encoder(model)(ids)
    device = next(model.text_model.parameters()).device
    with torch.inference_mode():
        return model.encode_text(ids.to(device)).float().cpu()


def embed_texts(model: DinoTxt, texts: Sequence[str], tokenizer: Tokenizer | None = None,
                backend: str = "torch") -> TextQuery:
    """Unit text vectors; an empty text is refused, a text over the context length is cut (and said)."""
    tokenizer = tokenizer or Tokenizer()
    context = model.text_model.config.context_length
    notes = []
    for text in texts:
        if not text.strip():
            raise ValueError("the text is empty; give some words to search for")
        n = tokenizer.token_count(text)
        if n > context:
            notes.append(f"the text is {n - 2} tokens long; dino.txt reads the first {context - 2}, "
                         f"so it was cut after '{tokenizer.decode(tokenizer.encode(text)[: context - 2])[-40:]}'")
    ids = tokenizer.tokenize(list(texts), context_length=context)
    vectors = F.normalize(encode_text_ids(model, ids, backend).float(), dim=-1)
    return TextQuery(vectors.numpy().astype(np.float32), notes)


def region_text_vector(query: TextQuery) -> np.ndarray:
    """The text in region space: its patch half, normalised, beside zeros where the region cells have zeros.

    Region cells of a dino.txt library are pooled head patch tokens placed in the patch half (the global half is
    zero), so this cosine is the heatmap's, averaged over the cell.
    """
    vectors = np.array(query.vectors, np.float32, copy=True)
    half = vectors.shape[1] // 2
    vectors[:, :half] = 0.0
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


