"""Evaluation: the weighted k-NN vote and the linear probe on features with known structure, labelled folders and
their splits, and `evaluate_backbone` end to end on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.models import load_backbone
from trainer.evaluate import (
    evaluate_backbone,
    knn_predict,
    knn_top1,
    labelled_folder,
    labelled_splits,
    linear_probe,
    stratified_split,
)

DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "models" / "dinoscope-tiny-demo.pth"


def _reference_knn(train, labels, query, n_classes, k, t):
    """The official formula written plainly: cosine, top-k, softmax(sim/T) over the k, weighted one-hot sum."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    out = []
    for q in query:
        sims = train @ q
        top = np.argsort(-sims, kind="stable")[:k]
        w = np.exp((sims[top] - sims[top].max()) / t)
        w /= w.sum()
        scores = np.zeros(n_classes)
        for i, wi in zip(top, w, strict=True):
            scores[labels[i]] += wi
        out.append(int(np.argmax(scores)))
    return np.array(out)


def test_knn_weights_close_neighbours_over_a_far_majority():
    # one very close class-0 neighbour against three farther class-1 neighbours
    train = np.array([[1.0, 0.02], [0.6, 0.8], [0.55, 0.83], [0.5, 0.86]])
    labels = np.array([0, 1, 1, 1])
    q = np.array([[1.0, 0.0]])
    assert knn_predict(train, labels, q, 2, k=4, temperature=0.07)[0] == 0  # softmax(sim/0.07) weighting
    assert knn_predict(train, labels, q, 2, k=4, temperature=100.0)[0] == 1  # ~uniform weights: majority
    assert knn_predict(train, labels, q, 2, k=1)[0] == 0
    assert knn_predict(train, labels, q, 2, k=50)[0] == 0  # k larger than the training set is clipped


def test_knn_equals_the_plain_formula_on_random_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    labels = rng.integers(0, 5, 200)
    train = centres[labels] + rng.normal(scale=0.8, size=(200, 16))
    qlab = rng.integers(0, 5, 60)
    query = centres[qlab] + rng.normal(scale=0.8, size=(60, 16))
    ours = knn_predict(train, labels, query, 5, k=20, temperature=0.07)
    assert np.array_equal(ours, _reference_knn(train, labels, query, 5, 20, 0.07))
    acc = knn_top1(train, labels, query, qlab, 5)
    assert acc == pytest.approx(np.mean(ours == qlab)) and acc > 0.8  # clustered data: easy


def test_linear_probe_separates_linear_classes_that_knn_cannot():
    """Classes set by the sign of one coordinate, buried under large noise in others: linear, not local."""
    rng = np.random.default_rng(1)
    n = 240
    x = rng.normal(scale=3.0, size=(n, 20))
    y = (rng.random(n) < 0.5).astype(int)
    x[:, 0] = np.where(y == 1, 1.0, -1.0) + rng.normal(scale=0.2, size=n)
    tr, va = stratified_split(y, 0.25, seed=0)
    acc, c = linear_probe(x[tr], y[tr], x[va], y[va])
    assert acc > 0.95 and c in (0.01, 0.1, 1.0, 10.0, 100.0)
    assert knn_top1(x[tr], y[tr], x[va], y[va], 2) < 0.8


def test_stratified_split_is_deterministic_and_keeps_every_class_on_both_sides():
    labels = [0] * 10 + [1] * 3 + [2] * 1 + [3] * 2
    tr, va = stratified_split(labels, 0.25, seed=0)
    tr2, va2 = stratified_split(labels, 0.25, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert sorted([*tr, *va]) == list(range(len(labels)))
    lab = np.array(labels)
    assert np.bincount(lab[va], minlength=4).tolist() == [2, 1, 0, 1]  # round(n/4), at least 1, single stays
    assert set(lab[tr]) == {0, 1, 2, 3}
    assert not np.array_equal(va, stratified_split(labels, 0.25, seed=1)[1])


@pytest.fixture
def labelled(tmp_path, skimage_data_dir):
    """Three classes of real photo crops, 6 each, plus a broken file and a non-image."""
    root = tmp_path / "labelled"
    sources = {"astronaut": "astronaut.png", "cat": "chelsea.png", "coffee": "coffee.png"}
    rng = np.random.default_rng(0)
    for name, f in sources.items():
        (root / name / "nested").mkdir(parents=True)
        img = Image.open(skimage_data_dir / f).convert("RGB")
        w, h = img.size
        for i in range(6):
            s = rng.uniform(0.5, 0.9)
            x, y = int(rng.integers(0, w - w * s + 1)), int(rng.integers(0, h - h * s + 1))
            crop = img.crop((x, y, x + int(w * s), y + int(h * s))).resize((96, 96))
            crop.save(root / name / ("nested" if i == 0 else ".") / f"{i}.jpg")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "cat" / "notes.txt").write_text("ignored")
    (root / "empty_class").mkdir()
    return root


def test_labelled_folder_and_splits(labelled, tmp_path):
    paths, labels, classes = labelled_folder(labelled)
    assert classes == ["astronaut", "cat", "coffee"]  # the empty folder is no class
    assert len(paths) == 19 and labels.count(1) == 7  # nested images count, the broken file is listed
    s = labelled_splits(labelled)
    assert not s.explicit and len(s.train_paths) + len(s.val_paths) == 19
    with pytest.raises(ValueError, match="two sub-folders"):
        labelled_folder(labelled / "cat")
    with pytest.raises(FileNotFoundError):
        labelled_folder(tmp_path / "nope")
    # explicit train/ and val/ folders are used as they are
    explicit = tmp_path / "explicit"
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("a", "b"):
            (explicit / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(explicit / split / cls / f"{i}.png")
    e = labelled_splits(explicit)
    assert e.explicit and len(e.train_paths) == 6 and len(e.val_paths) == 4 and e.classes == ["a", "b"]


def test_evaluate_backbone_on_real_photos(labelled):
    model = load_backbone(DEMO_MODEL)  # trained weights (the app's bundled demo model): features that mean something
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = evaluate_backbone(model, labelled, device="cpu", precision="fp32")
    assert r["classes"] == ["astronaut", "cat", "coffee"] and r["split"] == "stratified"
    assert r["n_train"] + r["n_val"] == 18  # the broken file is left out of both splits
    assert len(r["unreadable"]) == 1 and r["unreadable"][0].endswith("broken.jpg")
    # Crops of three different photos are told apart; the same crops with labels that do not follow the photo
    # are not (next test).
    assert r["knn_top1"] == 1.0 and r["linear_top1"] == 1.0
    assert r["k"] == 20 and r["temperature"] == 0.07 and r["crop"] == 224
    # deterministic, and the model is left as it was
    assert evaluate_backbone(model, labelled, device="cpu", precision="fp32") == r
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="multiple of the patch size"):
        evaluate_backbone(model, labelled, device="cpu", crop=100)


def test_evaluate_backbone_is_at_chance_when_labels_do_not_follow_the_photos(labelled, tmp_path):
    """The same 18 crops, relabelled so that every class holds two crops of each photo: no features can help."""
    shuffled = tmp_path / "shuffled"
    paths, labels, _ = labelled_folder(labelled)
    readable = [(p, c) for p, c in zip(paths, labels, strict=True) if p.name != "broken.jpg"]
    for i, (path, source) in enumerate(readable):
        dest = shuffled / f"class{(i + source) % 3}"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / f"{source}-{path.name}").write_bytes(path.read_bytes())
    assert [len(list(d.iterdir())) for d in sorted(shuffled.iterdir())] == [6, 6, 6]
    r = evaluate_backbone(load_backbone(DEMO_MODEL), shuffled, device="cpu", precision="fp32")
    assert r["n_val"] == 6 and r["knn_top1"] <= 2 / 6 and r["linear_top1"] <= 2 / 6
