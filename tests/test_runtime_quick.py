"""The quick start (engine.runtime.ov_quick): a model an earlier session compiled with OpenVINO answers the first
search of the next start without torch, with the vectors the full extractor gives, and is never trusted once its
checkpoint, its blob or its recipe changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.extract import Extractor
from engine.imageio import load_rgb
from engine.models import load_backbone, save_backbone
from engine.preprocess import normalize_array
from engine.query import run_query
from engine.runtime import ov_cache, ov_quick
from engine.runtime.ov_cache import CacheKey, cache_folder
from engine.store import Library, index_library
from engine.transforms import eval_batch
from tests.helpers import tiny_backbone

pytestmark = pytest.mark.openvino  # in-process OpenVINO: run in its own pytest process (see the Makefile)

pytest.importorskip("openvino")

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "assets" / "sample").rglob("*.jpg"))[:5]

QUICK_PROBE = r"""
import json, sys
import numpy as np
from engine.imageio import load_rgb
from engine.preprocess import eval_array, normalize_array
from engine.runtime.ov_quick import quick_extractor
quick = quick_extractor(sys.argv[1], "auto")
x = np.stack([eval_array(load_rgb(p, min_side=256)) for p in sys.argv[3:]])
np.save(sys.argv[2], quick.embed_arrays(x))
print(json.dumps({"torch": "torch" in sys.modules}))
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DINOSCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DINOSCOPE_BACKEND", raising=False)
    return tmp_path / "home"


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_backbone(tiny_backbone(seed=5), tmp_path / "tiny.pth")


def full_extractor(checkpoint: Path) -> Extractor:
    ex = Extractor(load_backbone(str(checkpoint)), device="auto")
    if ex.backend != "openvino":
        pytest.skip(f"auto does not take OpenVINO here ({ex.backend_reason})")
    return ex


def test_a_fresh_process_embeds_like_the_full_extractor_without_importing_torch(home: Path, checkpoint: Path,
                                                                               tmp_path: Path) -> None:
    full = full_extractor(checkpoint)  # compiles, stores the blob and the recipe
    expected = full.embed_tensor(eval_batch([load_rgb(p, min_side=256) for p in PHOTOS])).cls
    out = tmp_path / "quick.npy"
    env = dict(os.environ, DINOSCOPE_HOME=str(home))
    r = subprocess.run([sys.executable, "-c", QUICK_PROBE, str(checkpoint), str(out), *map(str, PHOTOS)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"torch": False}
    got = np.load(out)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-6)  # same blob, same inputs: only the final norm may differ


def test_the_preprocessing_is_bit_identical_to_torchvisions_order_of_operations() -> None:
    img = load_rgb(PHOTOS[0], min_side=256)
    crop = img[:224, :224]
    t = torch.as_tensor(crop.copy()).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    t = t.sub_(mean).div_(std)

    assert np.array_equal(normalize_array(crop), t.numpy())


def test_a_changed_checkpoint_a_damaged_blob_or_recipe_is_never_used(home: Path, checkpoint: Path) -> None:
    full_extractor(checkpoint)
    assert ov_quick.quick_extractor(str(checkpoint)) is not None
    ov_quick._COMPILED.clear()  # as a new process: nothing imported yet

    st = checkpoint.stat()
    os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the user saved new weights over it
    assert ov_quick.quick_extractor(str(checkpoint)) is None
    full_extractor(checkpoint)  # the full extractor records the file as it is now
    ov_quick._COMPILED.clear()
    assert ov_quick.quick_extractor(str(checkpoint)) is not None
    ov_quick._COMPILED.clear()
    other = save_backbone(tiny_backbone(seed=7), checkpoint.with_name("other-weights.pth"))
    os.replace(other, checkpoint)  # other weights of the same size, given the old mtime, as `cp -p` would
    os.utime(checkpoint, ns=(st.st_atime_ns, checkpoint.stat().st_mtime_ns))
    assert checkpoint.stat().st_size == st.st_size
    recipe_body = json.loads(ov_quick.recipe_path(str(checkpoint), "auto").read_text())
    os.utime(checkpoint, ns=(st.st_atime_ns, recipe_body["identity"][1]))
    assert ov_quick.quick_extractor(str(checkpoint)) is None  # the inode and ctime give it away
    full_extractor(checkpoint)
    ov_quick._COMPILED.clear()

    Extractor(load_backbone(str(checkpoint)), device="auto", precision="fp32")  # `embed --dtype fp32`
    quick = ov_quick.quick_extractor(str(checkpoint))
    assert quick is not None and quick.precision == full_extractor(checkpoint).precision  # not fp32's recipe
    ov_quick._COMPILED.clear()

    assert ov_quick.quick_extractor(str(checkpoint), "cpu") is None  # recorded for "auto" only
    assert ov_quick.quick_extractor(str(checkpoint.with_name("other.pth"))) is None

    key = json.loads(ov_quick.recipe_path(str(checkpoint), "auto").read_text())["key"]
    blob = cache_folder() / CacheKey(**key).filename()  # the blob this recipe names
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])  # truncated by a crash or a full disk
    assert ov_quick.quick_extractor(str(checkpoint)) is None
    ex = full_extractor(checkpoint)  # the full path rebuilds it, and the quick path works again
    assert ex.runtime.cache_status == "rebuilt"
    ov_quick._COMPILED.clear()
    assert ov_quick.quick_extractor(str(checkpoint)) is not None
    ov_quick._COMPILED.clear()

    recipe = ov_quick.recipe_path(str(checkpoint), "auto")
    recipe.write_text("{not json")
    assert ov_quick.quick_extractor(str(checkpoint)) is None
    recipe.write_text("[]")  # JSON, but not a recipe
    assert ov_quick.quick_extractor(str(checkpoint)) is None
    body = json.loads(json.dumps({"format": 1, "source": str(checkpoint)}))
    recipe.write_text(json.dumps(body))  # fields missing
    assert ov_quick.quick_extractor(str(checkpoint)) is None


def test_after_an_update_of_the_model_code_the_old_blob_is_never_used(home: Path, checkpoint: Path, caplog) -> None:
    full_extractor(checkpoint)
    ov_quick._COMPILED.clear()
    recipe = ov_quick.recipe_path(str(checkpoint), "auto")
    body = json.loads(recipe.read_text())
    key = CacheKey(**body["key"])
    blob = cache_folder() / key.filename()
    old = CacheKey(**{**body["key"], "code": "an-older-release"})  # what the previous Dinoscope wrote
    ov_cache.save(blob, old, ov_cache.load(blob, key))
    recipe.write_text(json.dumps({**body, "key": {**body["key"], "code": old.code}}))

    with caplog.at_level("INFO", logger="dinoscope.runtime"):
        assert ov_quick.quick_extractor(str(checkpoint)) is None
    assert "another version of the model code" in caplog.text
    ex = full_extractor(checkpoint)
    assert ex.runtime.cache_status == "rebuilt"  # converted again from the code that runs now
    ov_quick._COMPILED.clear()
    assert ov_quick.quick_extractor(str(checkpoint)) is not None


def test_torch_forced_by_the_environment_skips_the_quick_path(home: Path, checkpoint: Path, monkeypatch) -> None:
    full_extractor(checkpoint)
    monkeypatch.setenv("DINOSCOPE_BACKEND", "torch")
    assert ov_quick.quick_extractor(str(checkpoint)) is None


def test_a_search_with_the_quick_extractor_ranks_as_the_full_one(home: Path, checkpoint: Path,
                                                                 tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((ROOT / "assets" / "sample").rglob("*.jpg"))[:12]:
        shutil.copy(p, folder / p.name)
    full = full_extractor(checkpoint)
    ov_quick._COMPILED.clear()
    quick = ov_quick.quick_extractor(str(checkpoint))
    assert quick is not None
    query = tmp_path / "query.jpg"
    shutil.copy(PHOTOS[0], query)  # same bytes as a library photo: make it a new file so it is embedded
    with query.open("ab") as f:
        f.write(b"\0")  # a different content hash, the same pixels
    with Library.open(tmp_path / "lib") as lib:
        report = index_library(lib, full.model, folders=[folder], device="cpu")
        assert report.failed == 0
        a = run_query(lib, full, [query], k=5, model_id=report.model_id)
        b = run_query(lib, lambda: quick, [query], k=5, model_id=report.model_id)
    assert [r.image_id for r in a.results] == [r.image_id for r in b.results]
    assert np.allclose([r.score for r in a.results], [r.score for r in b.results], atol=1e-5)


def test_the_window_searches_with_the_quick_extractor_until_the_full_one_is_loaded(home: Path, checkpoint: Path,
                                                                                  tmp_path: Path) -> None:
    from PySide6.QtCore import QSettings

    from app.gui.model_service import ModelService

    full_extractor(checkpoint)  # an earlier session
    ov_quick._COMPILED.clear()
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("model/source", str(checkpoint))
    models = ModelService(settings)
    assert models.warm_up_quick()
    assert isinstance(models.query_extractor(), ov_quick.QuickExtractor)
    assert models.warm_up(None) == "ready"  # torch and the full model: from now on every search uses it
    assert isinstance(models.query_extractor(), Extractor) and models._quick is None
    other = save_backbone(tiny_backbone(seed=6), tmp_path / "other.pth")
    models.set_source(str(other))  # no quick start recorded for it: the full model loads
    assert models._quick is None and isinstance(models.query_extractor(), Extractor)
