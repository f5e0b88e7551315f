"""How good a backbone's features are on a labelled photo folder: k-NN and a linear probe (DINOV2_SPEC.md §5).

A labelled folder has one sub-folder per class (images anywhere below it), or `train/` and `val/` folders that
each hold such class folders. Without explicit splits, a deterministic stratified split holds out a share of
every class.

- k-NN (the official `eval/knn.py`): the model's normed CLS at the 224 eval transform, L2-normalised; cosine
  similarity to every training feature; the top k (20); weights softmax(sim / 0.07) over those k; a weighted
  class vote; top-1 accuracy.
- Linear probe: the frozen features [CLS, mean of the patch tokens] of the last block (the hub's linear
  classifiers' input), standardised, then L2-regularised multinomial logistic regression (scikit-learn); C is
  picked from a small grid on a held-out part of the training split, then refitted on all of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "LINEAR_C_GRID",
    "LabelledSplits",
    "evaluate_backbone",
    "extract_features",
    "knn_predict",
    "knn_top1",
    "labelled_folder",
    "labelled_splits",
    "linear_probe",
    "stratified_split",
]

LINEAR_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


# ------------------------------------------------------------------------------------------------ data
def _images_under(folder: Path) -> list[Path]:
    from engine.imageio import SUPPORTED_EXTENSIONS

    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in SUPPORTED_EXTENSIONS]
    return sorted(found)


def labelled_folder(root: str | os.PathLike) -> tuple[list[Path], list[int], list[str]]:
    """(image paths, class index of each, class names): one sub-folder of `root` per class, sorted by name.

    Sub-folders without a supported image are skipped; fewer than two classes is an error.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    paths: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = _images_under(sub)
        if not images:
            continue
        classes.append(sub.name)
        paths += images
        labels += [len(classes) - 1] * len(images)
    if len(classes) < 2:
        raise ValueError(
            f"{root}: a labelled folder needs at least two sub-folders with images (one per class); "
            f"found {len(classes)}"
        )
    return paths, labels, classes


def stratified_split(labels: Sequence[int], val_fraction: float = 0.25,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train indices, val indices): each class with two or more images puts
    max(1, round(n·val_fraction)) of them, chosen at random for `seed`, in val, and always keeps one in train."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction))) if len(idx) >= 2 else 0
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


@dataclass
class LabelledSplits:
    train_paths: list[Path]
    train_labels: np.ndarray
    val_paths: list[Path]
    val_labels: np.ndarray
    classes: list[str]
    explicit: bool  # True when the folder had train/ and val/


def labelled_splits(root: str | os.PathLike, val_fraction: float = 0.25, seed: int = 0) -> LabelledSplits:
    """train/ and val/ when the folder has both, else a stratified split of its class folders."""
    root = Path(root).expanduser()
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        tp, tl, tc = labelled_folder(train_dir)
        vp, vl, vc = labelled_folder(val_dir)
        classes = sorted(set(tc) | set(vc))
        remap_t = np.array([classes.index(c) for c in tc])
        remap_v = np.array([classes.index(c) for c in vc])
        return LabelledSplits(tp, remap_t[np.asarray(tl)], vp, remap_v[np.asarray(vl)], classes, True)
    paths, labels, classes = labelled_folder(root)
    tr, va = stratified_split(labels, val_fraction, seed)
    lab = np.asarray(labels)
    if len(va) == 0:
        raise ValueError(f"{root}: every class has a single image, so nothing is left to validate on")
    return LabelledSplits([paths[i] for i in tr], lab[tr], [paths[i] for i in va], lab[va], classes, False)


# ------------------------------------------------------------------------------------------------ classifiers
def knn_predict(train_feats: np.ndarray | torch.Tensor, train_labels: Sequence[int] | np.ndarray,
                query_feats: np.ndarray | torch.Tensor, n_classes: int | None = None, k: int = 20,
                temperature: float = 0.07) -> np.ndarray:
    """Weighted k-NN votes (official DINOv2 k-NN): cosine top-k, softmax(sim/T) weights, weighted class sum."""
    train = torch.nn.functional.normalize(torch.as_tensor(train_feats, dtype=torch.float32), dim=-1)
    query = torch.nn.functional.normalize(torch.as_tensor(query_feats, dtype=torch.float32), dim=-1)
    labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    n_classes = int(n_classes if n_classes is not None else labels.max().item() + 1)
    k = min(k, train.shape[0])
    preds = []
    for i in range(0, query.shape[0], 1024):
        sims = query[i : i + 1024] @ train.t()
        top, idx = sims.topk(k, dim=1)
        weights = torch.softmax(top / temperature, dim=1)
        scores = torch.zeros(sims.shape[0], n_classes).scatter_add_(1, labels[idx], weights)
        preds.append(scores.argmax(dim=1))
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def knn_top1(train_feats: np.ndarray, train_labels: np.ndarray, val_feats: np.ndarray, val_labels: np.ndarray,
             n_classes: int | None = None, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy (a fraction) of `knn_predict` on the validation features."""
    pred = knn_predict(train_feats, train_labels, val_feats, n_classes, k, temperature)
    return float(np.mean(pred == np.asarray(val_labels))) if len(pred) else float("nan")


def _fit_logreg(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000).fit(x, y)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 c_grid: Sequence[float] = LINEAR_C_GRID, seed: int = 0) -> tuple[float, float]:
    """(val top-1, chosen C) of a logistic-regression probe on standardised features.

    C is chosen on a stratified fifth of the training split (accuracy, ties broken by log-loss) when every
    class has two training images or more; otherwise C = 1.
    """
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    train_x, val_x = np.asarray(train_x, np.float64), np.asarray(val_x, np.float64)
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("a linear probe needs training images of at least two classes")
    counts = np.bincount(train_y)
    best_c = 1.0
    if len(c_grid) > 1 and counts[counts > 0].min() >= 2:
        fit_i, hold_i = stratified_split(train_y, 0.2, seed + 1)
        if len(np.unique(train_y[fit_i])) >= 2 and len(hold_i):
            scaler = StandardScaler().fit(train_x[fit_i])
            xf, xh = scaler.transform(train_x[fit_i]), scaler.transform(train_x[hold_i])
            scored = []
            for c in c_grid:
                clf = _fit_logreg(xf, train_y[fit_i], c)
                acc = float(np.mean(clf.predict(xh) == train_y[hold_i]))
                loss = log_loss(train_y[hold_i], clf.predict_proba(xh), labels=clf.classes_)
                scored.append((-acc, loss, c))
            best_c = min(scored)[2]
    scaler = StandardScaler().fit(train_x)
    clf = _fit_logreg(scaler.transform(train_x), train_y, best_c)
    acc = float(np.mean(clf.predict(scaler.transform(val_x)) == val_y)) if len(val_y) else float("nan")
    return acc, float(best_c)


# ------------------------------------------------------------------------------------------------ features
def extract_features(model: torch.nn.Module, paths: Sequence[str | os.PathLike], device: str | torch.device = "auto",
                     precision: str = "auto", batch_size: int | None = None,
                     progress: Callable[[Any], None] | None = None,
                     crop: int = 224) -> tuple[np.ndarray, np.ndarray, list[int], list[tuple[int, str]]]:
    """(L2-normalised CLS [n, D], [CLS, mean patch token] [n, 2D], kept input indices, unreadable (index, msg)).

    Both at the eval transform (resize to crop·256/224, centre crop) through engine.extract.Extractor; the patch
    tokens are averaged per batch.
    """
    from engine.extract import Extractor, eval_input

    resize = round(crop * 256 / 224)
    ex = Extractor(model, device=device, precision=precision, batch_size=batch_size, patch_tokens=True)
    cls_parts, lin_parts, kept, errors = [], [], [], []
    load = (lambda p: eval_input(p, resize, crop)) if crop != 224 else None
    for batch in ex.iter_files(paths, load=load, progress=progress):
        errors += batch.errors
        if not batch.indices:
            continue
        mean_patch = batch.patch.astype(np.float32).mean(axis=1)
        cls_parts.append(batch.cls)
        lin_parts.append(np.concatenate([batch.cls, mean_patch], axis=1))
        kept += batch.indices
    d = ex.embed_dim
    cls = np.concatenate(cls_parts) if cls_parts else np.zeros((0, d), np.float32)
    lin = np.concatenate(lin_parts) if lin_parts else np.zeros((0, 2 * d), np.float32)
    return cls, lin, kept, errors


def evaluate_backbone(
    model: torch.nn.Module,
    root: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
    val_fraction: float = 0.25,
    seed: int = 0,
    progress: Callable[[Any], None] | None = None,
    crop: int = 224,
) -> dict[str, Any]:
    """k-NN and linear-probe top-1 (fractions) of `model` on the labelled folder `root`.

    `crop` is the eval transform's size (the protocol's 224 by default); it must be a multiple of the patch size.

    Returns knn_top1, linear_top1, n_train, n_val, classes, k, temperature, linear_C, unreadable (paths that
    could not be decoded, left out of both splits) and split ("folders" for train/ + val/, else "stratified").
    """
    splits = labelled_splits(root, val_fraction, seed)
    paths = [*splits.train_paths, *splits.val_paths]
    labels = np.concatenate([splits.train_labels, splits.val_labels])
    is_val = np.r_[np.zeros(len(splits.train_paths), bool), np.ones(len(splits.val_paths), bool)]
    if crop % model.patch_size:
        raise ValueError(f"crop {crop} is not a multiple of the patch size {model.patch_size}")
    cls, lin, kept, errors = extract_features(model, paths, device, precision, batch_size, progress, crop)
    kept_arr = np.asarray(kept, dtype=np.int64)
    lab, val_mask = labels[kept_arr], is_val[kept_arr]
    tr, va = ~val_mask, val_mask
    if not tr.any() or not va.any():
        raise ValueError(f"{root}: too few readable images left for a train/val evaluation")
    n_classes = len(splits.classes)
    knn = knn_top1(cls[tr], lab[tr], cls[va], lab[va], n_classes, k, temperature)
    linear, c = linear_probe(lin[tr], lab[tr], lin[va], lab[va], seed=seed)
    return {
        "knn_top1": knn,
        "linear_top1": linear,
        "n_train": int(tr.sum()),
        "n_val": int(va.sum()),
        "classes": list(splits.classes),
        "k": k,
        "temperature": temperature,
        "linear_C": c,
        "unreadable": [str(paths[i]) for i, _ in errors],
        "split": "folders" if splits.explicit else "stratified",
        "crop": crop,
    }
