"""Labels: a user tags a few photos, the embeddings suggest the rest, the user reviews the suggestions.

k-NN uses the DINOv2 evaluation vote (cosine to the tagged photos, top-k, weights softmax(sim/T), T=0.07); the
linear probe is a multinomial logistic regression on the L2-normalised embeddings. Both give, per photo, the
winning label and its probability, which the review sorts by. A photo's label for this purpose is one name
(single-label classification); a photo may carry more tags, and the first user tag counts.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select

from engine.atomic import atomic_write
from engine.store.schema import Image, Label
from engine.store.vectors import library_vectors

METHODS = ("knn", "probe")


@dataclass(frozen=True)
class Suggestion:
    image_id: int
    path: str
    label: str
    confidence: float  # probability of `label` under the method, in [0, 1]
    method: str


def tag(lib, image_ids: Iterable[int], name: str) -> int:
    """Give photos a user label (replacing a suggestion of the same name)."""
    name = name.strip()
    if not name:
        raise ValueError("a label needs a name")
    ids = sorted(set(int(i) for i in image_ids))
    with lib.write_session.begin() as s:
        s.execute(delete(Label).where(Label.image_id.in_(ids), Label.name == name))
        s.add_all(Label(image_id=i, name=name, source="user", confidence=1.0) for i in ids)
    return len(ids)


def untag(lib, image_ids: Iterable[int], name: str | None = None) -> int:
    ids = sorted(set(int(i) for i in image_ids))
    with lib.write_session.begin() as s:
        q = delete(Label).where(Label.image_id.in_(ids))
        if name is not None:
            q = q.where(Label.name == name)
        return s.execute(q).rowcount


def labels(lib, source: str | None = None) -> dict[int, list[tuple[str, str, float | None]]]:
    """image id -> [(name, source, confidence)], user labels first."""
    with lib.session() as s:
        q = select(Label.image_id, Label.name, Label.source, Label.confidence)
        if source is not None:
            q = q.where(Label.source == source)
        out: dict[int, list] = {}
        for image_id, name, src, conf in s.execute(q.order_by(Label.image_id, Label.source != "user", Label.name)):
            out.setdefault(image_id, []).append((name, src, conf))
    return out


def label_names(lib) -> list[str]:
    with lib.session() as s:
        return list(s.scalars(select(Label.name).distinct().order_by(Label.name)))


def suggest(lib, model_id: int, method: str = "knn", k: int = 20, temperature: float = 0.07,
            min_confidence: float = 0.0) -> list[Suggestion]:
    """Suggestions for every indexed photo without a user label, most confident first."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose knn or probe")
    ids, vectors = library_vectors(lib, model_id)
    tagged = {i: tags[0][0] for i, tags in labels(lib, source="user").items()}
    names = sorted(set(tagged.values()))
    if len(names) < 2:
        raise ValueError("tag photos with at least two different labels first, so there is something to tell apart")
    row_of = {int(i): r for r, i in enumerate(ids)}
    train_rows = [row_of[i] for i in tagged if i in row_of]
    if not train_rows:
        raise ValueError("none of the tagged photos is indexed with this model")
    train_y = np.array([names.index(tagged[int(ids[r])]) for r in train_rows])
    todo = np.array([r for r in range(len(ids)) if int(ids[r]) not in tagged], dtype=np.int64)
    if len(todo) == 0:
        return []
    x = np.asarray(vectors, dtype=np.float32)
    if method == "knn":
        probs = knn_probabilities(x[train_rows], train_y, x[todo], len(names), k=k, temperature=temperature)
    else:
        probs = probe_probabilities(x[train_rows], train_y, x[todo], len(names))
    best = probs.argmax(1)
    conf = probs[np.arange(len(todo)), best]
    paths = _paths(lib, [int(ids[r]) for r in todo])
    out = [Suggestion(int(ids[r]), paths.get(int(ids[r]), ""), names[b], float(c), method)
           for r, b, c in zip(todo, best, conf, strict=True) if c >= min_confidence]
    return sorted(out, key=lambda s: -s.confidence)


def knn_probabilities(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, n_classes: int,
                      k: int = 20, temperature: float = 0.07) -> np.ndarray:
    """DINOv2's weighted k-NN vote as class probabilities: Σ over the top-k of softmax(sim/T)·onehot."""
    import faiss

    k = min(k, len(train_x))
    index = faiss.IndexFlatIP(train_x.shape[1])
    index.add(np.ascontiguousarray(train_x, dtype=np.float32))
    sims, nn = index.search(np.ascontiguousarray(query_x, dtype=np.float32), k)
    w = np.exp((sims - sims.max(1, keepdims=True)) / temperature)
    w /= w.sum(1, keepdims=True)
    probs = np.zeros((len(query_x), n_classes), dtype=np.float64)
    np.add.at(probs, (np.repeat(np.arange(len(query_x)), k), train_y[nn].ravel()), w.ravel())
    return probs


def probe_probabilities(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, n_classes: int,
                        c: float = 10.0) -> np.ndarray:
    """A linear probe (L2-regularised logistic regression) on the frozen embeddings."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(train_y)
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit(train_x, train_y)
    probs = np.zeros((len(query_x), n_classes))
    probs[:, present] = clf.predict_proba(query_x)
    return probs


def accept(lib, suggestions: Iterable[Suggestion]) -> int:
    """Store accepted suggestions as labels, with their source and confidence (user labels stay as they are)."""
    rows = list(suggestions)
    with lib.write_session.begin() as s:
        for sg in rows:
            s.execute(delete(Label).where(Label.image_id == sg.image_id, Label.name == sg.label,
                                          Label.source != "user"))
            if s.get(Label, (sg.image_id, sg.label)) is None:
                s.add(Label(image_id=sg.image_id, name=sg.label, source=sg.method, confidence=sg.confidence))
    return len(rows)


def export(lib, path: str | os.PathLike, image_ids: Iterable[int] | None = None) -> Path:
    """Labels (all, or of the given photos) to CSV or JSON by the file's suffix; written atomically."""
    path = Path(path)
    wanted = None if image_ids is None else set(int(i) for i in image_ids)
    table = labels(lib)
    ids = sorted(table if wanted is None else wanted)
    paths = _paths(lib, ids)
    rows = [{"path": paths.get(i, ""), "image_id": i, "label": name, "source": src, "confidence": conf}
            for i in ids for name, src, conf in table.get(i, [(None, None, None)])]
    if path.suffix.lower() == ".json":
        text = json.dumps(rows, indent=1)
    elif path.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["path", "image_id", "label", "source", "confidence"])
        w.writeheader()
        w.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
        text = buf.getvalue()
    else:
        raise ValueError(f"{path.name}: export to .csv or .json")
    # a non-UTF-8 file name is written as its own bytes, so the exported path still opens the photo
    return atomic_write(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula (a label "=HYPERLINK(...)") gets a leading ', which
    Excel, LibreOffice and Google Sheets show as plain text (OWASP's advice for CSV injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _paths(lib, ids: list[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    with lib.session() as s:
        for chunk in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            part = ids[chunk : chunk + 900]
            out.update(dict(s.execute(select(Image.id, Image.path).where(Image.id.in_(part))).all()))
    return out
