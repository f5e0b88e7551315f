"""Tag a few photos, let the embeddings suggest the rest, review, export: on a real indexed library."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from engine import labels
from engine.models import DinoVisionTransformer
from engine.photo_files import copy_files, move_files
from engine.store import Library
from engine.store.indexer import index_library
from tests.helpers import tiny_config


@pytest.fixture
def library(tmp_path: Path, skimage_data_dir: Path):
    """Two 'classes': mild variants (2% crops, brightness, JPEG quality) of the cat and of the coffee photo.

    The model has random weights, so only near-identical pictures are near in its space: the test checks the
    mechanics of tagging, suggesting and reviewing, not semantic quality.
    """
    d = tmp_path / "photos"
    d.mkdir()
    for cls, name in (("cat", "chelsea.png"), ("coffee", "coffee.png")):
        base = Image.open(skimage_data_dir / name).convert("RGB")
        w, h = base.size
        for i in range(6):
            v = base.crop((i * w // 300, i * h // 300, w - (5 - i) * w // 300, h - i * h // 300))
            v = ImageEnhance.Brightness(v).enhance(0.9 + 0.04 * i)
            v.save(d / f"{cls}_{i}.jpg", quality=70 + 5 * i)
    torch.manual_seed(0)
    model = DinoVisionTransformer(tiny_config())
    lib = Library.open("labels")
    report = index_library(lib, model, folders=[str(d)], device="cpu", precision="fp32")
    yield lib, report.model_id
    lib.close()


def _ids(lib, prefix: str) -> list[int]:
    return [r.id for r in lib.images(status="ok") if Path(r.path).name.startswith(prefix)]


@pytest.mark.parametrize("method", ["knn", "probe"])
def test_suggestions_label_the_untagged_photos(library, method: str) -> None:
    lib, model_id = library
    cats, cups = _ids(lib, "cat_"), _ids(lib, "coffee_")
    labels.tag(lib, cats[:2], "cat")
    labels.tag(lib, cups[:2], "coffee")
    out = labels.suggest(lib, model_id, method=method, k=4)
    assert {s.image_id for s in out} == set(cats[2:] + cups[2:])  # every untagged photo, no tagged one
    right = sum((s.label == "cat") == (s.image_id in cats) for s in out)
    assert right == len(out), [(Path(s.path).name, s.label, round(s.confidence, 3)) for s in out]
    assert all(0.5 < s.confidence <= 1.0 for s in out)
    assert [s.confidence for s in out] == sorted((s.confidence for s in out), reverse=True)


def test_accept_stores_suggestions_without_touching_user_labels(library) -> None:
    lib, model_id = library
    cats, cups = _ids(lib, "cat_"), _ids(lib, "coffee_")
    labels.tag(lib, cats[:2], "cat")
    labels.tag(lib, cups[:2], "coffee")
    chosen = labels.suggest(lib, model_id, "knn")[:3]
    labels.accept(lib, chosen)
    table = labels.labels(lib)
    for s in chosen:
        assert table[s.image_id] == [(s.label, "knn", pytest.approx(s.confidence))]
    assert table[cats[0]] == [("cat", "user", 1.0)]
    assert labels.label_names(lib) == ["cat", "coffee"]
    # Suggesting again only covers photos without a user label (accepted ones are still offered for review).
    assert {s.image_id for s in labels.suggest(lib, model_id)} == set(cats[2:] + cups[2:])


def test_one_label_is_not_enough(library) -> None:
    lib, model_id = library
    labels.tag(lib, _ids(lib, "cat_")[:2], "cat")
    with pytest.raises(ValueError, match="two different labels"):
        labels.suggest(lib, model_id)


def test_export_csv_and_json_and_copy(library, tmp_path: Path) -> None:
    lib, _ = library
    cats = _ids(lib, "cat_")
    labels.tag(lib, cats[:3], "cat")
    labels.export(lib, tmp_path / "labels.csv")
    with open(tmp_path / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["label"] for r in rows} == {"cat"} and all(Path(r["path"]).exists() for r in rows)
    labels.export(lib, tmp_path / "sel.json", image_ids=cats[:1])
    assert json.loads((tmp_path / "sel.json").read_text())[0]["image_id"] == cats[0]
    with pytest.raises(ValueError, match=r"csv or \.json"):
        labels.export(lib, tmp_path / "x.txt")
    paths = [lib.image(i).path for i in cats[:2]]
    first = copy_files(paths, tmp_path / "out")
    again = copy_files(paths, tmp_path / "out")  # same names: nothing overwritten
    assert len(list((tmp_path / "out").iterdir())) == 4
    assert again[0].name.endswith(" (2).jpg") and first[0].read_bytes() == again[0].read_bytes()
    steps: list[tuple[int, int]] = []
    partial = copy_files(paths, tmp_path / "part", progress=lambda p: steps.append((p.done, p.total)),
                         cancel=lambda: len(steps) >= 1)  # cancelled after the first file: one whole copy
    assert steps == [(1, 2)] and [p.name for p in (tmp_path / "part").iterdir()] == [partial[0].name]


def test_knn_vote_matches_a_hand_computation() -> None:
    train = np.array([[1, 0], [0, 1], [0.8, 0.6]], dtype=np.float32)
    y = np.array([0, 1, 1])
    q = np.array([[1, 0]], dtype=np.float32)
    p = labels.knn_probabilities(train, y, q, 2, k=2, temperature=0.1)
    w = np.exp(np.array([1.0, 0.8]) / 0.1)
    assert p[0] == pytest.approx([w[0] / w.sum(), w[1] / w.sum()])


def test_move_files_never_overwrites(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"1")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "a.jpg").write_bytes(b"old")
    [(old, new)] = move_files([src / "a.jpg"], tmp_path / "dest")
    assert not old.exists() and new.name == "a (2).jpg" and new.read_bytes() == b"1"
    assert (tmp_path / "dest" / "a.jpg").read_bytes() == b"old"
