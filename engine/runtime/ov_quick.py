"""The first search after start-up without torch: the compiled OpenVINO model from the cache, run on numpy arrays.

Importing torch costs a 2-core machine about 1.2 s of one core, and at start-up it competes with the window opening
the library. A returning user's model was compiled by OpenVINO in an earlier session (`OpenVinoRuntime` stores
the blob); this module loads that same blob without torch, so a photo dropped right after the window appears is
embedded while torch and the full `engine.extract.Extractor` are still loading in the background.

The link from a model source to its blob is a small "recipe" written when the full extractor compiled or loaded
it: the checkpoint file's path, size, modification and change times and inode, and the cache key. It is written
only for the automatic precision on the automatic or CPU device (what the window asks for), and removed when such
an extractor ends up on torch. `quick_extractor` trusts a recipe only while the file is unchanged, the OpenVINO
version, the CPU and the model code are the same and the blob passes its checksum (`ov_cache.load`); anything else
returns None with one logged line, and the caller waits for the full extractor. Only 224-px CLS vectors are given
here: region queries, patch tokens and other sizes need the full extractor.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write
from engine.runtime import log
from engine.runtime.ov_cache import CacheInvalid, CacheKey, cache_folder, conversion_code, load

RECIPE_FORMAT = 3  # 3: the cache key names the model code (ov_cache.conversion_code)

# Blobs already imported by this process, by cache file: the full extractor takes the quick one's compiled model
# instead of importing the same blob a second time.
_COMPILED: dict[str, object] = {}
_COMPILED_LOCK = threading.Lock()


@dataclass(frozen=True)
class Recipe:
    source: str  # the model source as the app names it (a zoo name, or a checkpoint path)
    file: str  # the weights file it was loaded from
    identity: list[int]  # the file's size, mtime, ctime and inode when it was compiled (`_identity`)
    device_request: str  # what the extractor was asked for ("auto", "cpu")
    key: CacheKey
    config: dict  # the OpenVINO compile properties
    embed_dim: int


def recipe_path(source: str, device_request: str) -> Path:
    name = hashlib.blake2b(f"{source}\0{device_request}".encode(), digest_size=12).hexdigest()
    return cache_folder() / f"recipe-{name}.json"


def _identity(file: str | os.PathLike) -> list[int]:
    """What says a file is still the one compiled: size and mtime, and the ctime and inode that a copy which kept
    the mtime (cp -p, rsync -a, an unzip) cannot keep. OSError when it is gone."""
    st = os.stat(file)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def remember(source: str, file: str | os.PathLike, device_request: str, key: CacheKey, config: dict,
             embed_dim: int) -> None:
    """Record that `source`, read from `file`, compiles to the blob of `key` (the full extractor calls this, for
    the automatic precision only: the recipe must name what the window's own extractor runs)."""
    try:
        identity = _identity(file)
    except OSError:
        return
    body = {"format": RECIPE_FORMAT, "source": source, "file": os.path.abspath(file), "identity": identity,
            "device_request": device_request, "key": asdict(key), "config": config, "embed_dim": int(embed_dim)}
    path = recipe_path(source, device_request)
    text = json.dumps(body, indent=1, sort_keys=True).encode()
    try:
        if path.is_file() and path.read_bytes() == text:
            return  # the usual start: nothing changed, nothing written
        atomic_write(path, lambda f: f.write(text))
    except OSError as e:  # a read-only data folder: the quick path is only an optimisation
        log.info("could not write the quick-start recipe %s (%s)", path, e)


def forget(source: str, device_request: str) -> None:
    """No quick start for `source` any more (its extractor no longer runs OpenVINO: a GPU appeared, say)."""
    with contextlib.suppress(OSError):
        recipe_path(source, device_request).unlink(missing_ok=True)


def read_recipe(source: str, device_request: str) -> Recipe | None:
    path = recipe_path(source, device_request)
    try:
        body = json.loads(path.read_text())
        if not isinstance(body, dict) or body.get("format") != RECIPE_FORMAT or body.get("source") != source:
            return None
        return Recipe(body["source"], body["file"], [int(v) for v in body["identity"]], body["device_request"],
                      CacheKey(**body["key"]), dict(body["config"]), int(body["embed_dim"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.info("quick start: the recipe %s cannot be read (%s)", path, e)
        return None


def shared_compiled(path: Path):
    """The compiled model this process already imported from `path`, if any (see `_COMPILED`); handed over, so
    that it is not kept here once the full extractor owns it."""
    with _COMPILED_LOCK:
        return _COMPILED.pop(str(path), None)


class QuickExtractor:
    """224-px CLS vectors from a cached OpenVINO blob, on numpy inputs; no torch anywhere."""

    backend = "openvino"
    input_size = 224
    batch_size = 32

    def __init__(self, recipe: Recipe, compiled) -> None:
        self.source = recipe.source
        self.embed_dim = recipe.embed_dim
        self.precision = "bf16" if recipe.key.precision == "bf16" else "fp32"
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def embed_arrays(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, 224, 224) float32 normalised images (`engine.preprocess.eval_array`) -> (B, D) unit CLS vectors,
        as `Extractor.embed_tensor(...).cls` gives them."""
        if x.ndim != 4 or x.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(f"expected (B, 3, {self.input_size}, {self.input_size}) inputs, got {x.shape}")
        with self._lock:
            out = self._request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
            cls = np.array(out[0], dtype=np.float32, copy=True)
        norm = np.sqrt((cls * cls).sum(axis=-1, keepdims=True))
        return cls / np.maximum(norm, 1e-12)


def quick_extractor(source: str, device_request: str = "auto") -> QuickExtractor | None:
    """The quick extractor for `source`, or None when its recipe or blob cannot be trusted (see the module doc).
    Never raises: it is only a shortcut, and the caller loads the full model whatever happens here."""
    if (os.environ.get("DINOSCOPE_BACKEND") or "auto") not in ("auto", "openvino"):
        return None
    recipe = read_recipe(source, device_request)
    if recipe is None:
        return None
    try:
        identity = _identity(recipe.file)
    except OSError:
        return None
    if identity != recipe.identity:
        log.info("quick start: %s changed since it was compiled; the full model loads", recipe.file)
        return None
    if recipe.key.input_size != QuickExtractor.input_size:
        return None
    try:
        import openvino as ov

        core = ov.Core()
        device = recipe.key.device.split(":", 1)[0]
        here = f"{device}:{core.get_property(device, 'FULL_DEVICE_NAME')}"
        key = CacheKey(recipe.key.weights, recipe.key.input_size, recipe.key.precision, here, ov.get_version(),
                       conversion_code())
        if key != recipe.key:
            what = ("version of the model code (Dinoscope was updated)" if key.code != recipe.key.code else
                    "OpenVINO version" if key.ov_version != recipe.key.ov_version else "CPU")
            log.info("quick start: the compiled model was made for another %s; the full model loads", what)
            return None
        path = cache_folder() / key.filename()
        with _COMPILED_LOCK:
            compiled = _COMPILED.get(str(path))
            if compiled is None:
                blob = load(path, key)
                if blob is None:
                    return None
                compiled = core.import_model(io.BytesIO(blob), device, recipe.config)
                _COMPILED[str(path)] = compiled
        return QuickExtractor(recipe, compiled)
    except CacheInvalid as e:
        log.info("quick start: the compiled model is %s; the full model loads", e)
        return None
    except Exception as e:  # a broken OpenVINO install, a blob it rejects: the full path decides what to do
        log.info("quick start unavailable (%s: %s)", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None
