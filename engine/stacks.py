"""Stacks: near-identical copies and bursts folded into one photo, stored in the library and kept up to date.

Two photos are linked when
  * they are near-identical (dedup's "near" tier, cosine >= NEAR, any folder, any date), or
  * they are a burst: the same scene (dedup's "scene" tier, cosine >= SCENE), in the same folder, taken at most
    `window_s` (default 10 s) apart by their EXIF capture times (photos without one are never a burst).
A stack is a connected group of linked photos; its cover is dedup's keeper (most pixels, then oldest).

Storage (table stack_members): one row per photo that has been through stacking, (model, image) -> stack id (the
cover's image id) and the stack's size. The row hangs off the photo's embedding (ON DELETE CASCADE), so when the
indexer deletes a photo or re-embeds a changed one, its row disappears by itself, and:
  * a photo with an embedding but no row is new: its neighbours come from one k-NN query in the library's vector
    index (never an N x N comparison), and it joins (and merges) the stacks it links to;
  * a stack whose row count no longer matches its recorded size lost a member: it is split again from its
    remaining members alone (a stack is closed, so nobody outside it can be linked to them). That search runs
    only when the table has fewer rows than the last update left (kept in meta), since rows vanish only by cascade.
A photo arriving in a 100k library costs a few index-range counts, one k-NN query and one small write.
`update_stacks` does both and is what the watcher and the indexer's callers run after each batch; `rebuild_stacks`
starts over (`python -m app stack --rebuild`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from sqlalchemy import delete, func, select

from engine.dedup import NEAR, SCENE, Components, _keeper_order
from engine.progress import ProgressFn, Stopwatch, raise_if_cancelled
from engine.store.schema import Embedding, Image, Meta, StackMember
from engine.store.vectors import vector_index

if TYPE_CHECKING:
    from engine.store.library import Library

WINDOW_S = 10.0
KNN = 32  # neighbours looked at per new photo
QUERY_BLOCK = 512


@dataclass(frozen=True)
class StackRules:
    near: float = NEAR
    scene: float = SCENE
    window_s: float = WINDOW_S


@dataclass
class StackUpdate:
    added: int = 0  # photos stacked for the first time (new or re-embedded)
    repaired: int = 0  # stacks that had lost members and were split again
    touched: int = 0  # stacks of two or more photos written by this update


@dataclass(frozen=True)
class _Meta:
    folder: str
    when: datetime | None
    keeper: tuple  # (width, height, captured_at, mtime_ns) for dedup's keeper rule


def _meta(lib: Library, ids: Iterable[int]) -> dict[int, _Meta]:
    out: dict[int, _Meta] = {}
    id_list = sorted(set(int(i) for i in ids))
    with lib.session() as s:
        for start in range(0, len(id_list), 500):
            q = select(Image.id, Image.path, Image.width, Image.height, Image.captured_at, Image.mtime_ns).where(
                Image.id.in_(id_list[start : start + 500]))
            for i, path, w, h, when, mtime in s.execute(q):
                naive = when.replace(tzinfo=None) if when is not None else None
                out[i] = _Meta(os.path.dirname(path), naive, (w, h, when, mtime))
    return out


def linked(a: _Meta, b: _Meta, cosine: float, rules: StackRules) -> bool:
    if cosine >= rules.near:
        return True
    if cosine < rules.scene or a.folder != b.folder or a.when is None or b.when is None:
        return False
    return abs((a.when - b.when).total_seconds()) <= rules.window_s


def _cover(members: Sequence[int], meta: dict[int, _Meta]) -> int:
    return _keeper_order([(i, *meta[i].keeper) for i in members if i in meta] or [(min(members), 0, 0, None, 0)])[0]


def _write(lib: Library, model_id: int, groups: list[list[int]], meta: dict[int, _Meta]) -> None:
    """Replace the rows of every photo in `groups` by one stack per group (one transaction)."""
    everyone = [i for g in groups for i in g]
    rows = []
    for g in groups:
        cover = _cover(g, meta)
        rows += [{"model_id": model_id, "image_id": i, "stack_id": cover, "size": len(g)} for i in g]
    with lib.write_session.begin() as s:
        for start in range(0, len(everyone), 500):
            s.execute(delete(StackMember).where(StackMember.model_id == model_id,
                                                StackMember.image_id.in_(everyone[start : start + 500])))
        existing = set(s.scalars(select(Embedding.image_id).where(
            Embedding.model_id == model_id, Embedding.image_id.in_(everyone)))) if len(everyone) <= 30000 else None
        if existing is not None:  # a photo deleted since its vectors were read must not come back
            rows = [r for r in rows if r["image_id"] in existing]
        if rows:
            s.execute(StackMember.__table__.insert(), rows)


def _components(ids: list[int], links: list[tuple[int, int]]) -> list[list[int]]:
    pos = {i: n for n, i in enumerate(ids)}
    comp = Components(len(ids))
    if links:
        a = np.array([pos[x] for x, _ in links], np.int64)
        b = np.array([pos[y] for _, y in links], np.int64)
        comp.union(a, b)
    labels = comp.labels()
    groups: dict[int, list[int]] = {}
    for n, i in enumerate(ids):
        groups.setdefault(int(labels[n]), []).append(i)
    return list(groups.values())


def _repair(lib: Library, model_id: int, rules: StackRules) -> int:
    """Split again the stacks that lost members (deleted or re-embedded photos)."""
    with lib.session() as s:
        damaged = list(s.scalars(
            select(StackMember.stack_id).where(StackMember.model_id == model_id).group_by(StackMember.stack_id)
            .having(func.count() != func.max(StackMember.size))))
        if not damaged:
            return 0
        members: dict[int, list[int]] = {}
        for start in range(0, len(damaged), 500):
            q = select(StackMember.stack_id, StackMember.image_id).where(
                StackMember.model_id == model_id, StackMember.stack_id.in_(damaged[start : start + 500]))
            for stack_id, image_id in s.execute(q):
                members.setdefault(stack_id, []).append(image_id)
    index = vector_index(lib, model_id)
    ids, vectors = index.ids(), index.vectors()
    groups: list[list[int]] = []
    meta = _meta(lib, [i for m in members.values() for i in m])
    for m in members.values():
        m = [i for i in m if i in meta]
        rows = np.searchsorted(ids, m)
        ok = [(i, r) for i, r in zip(m, rows.tolist(), strict=True) if r < len(ids) and ids[r] == i]
        m = [i for i, _ in ok]
        v = np.asarray(vectors[[r for _, r in ok]], np.float32)
        sims = v @ v.T
        links = [(m[x], m[y]) for x in range(len(m)) for y in range(x + 1, len(m))
                 if linked(meta[m[x]], meta[m[y]], float(sims[x, y]), rules)]
        groups += _components(m, links)
    _write(lib, model_id, groups, meta)
    return len(damaged)


def _count_rows(lib: Library, model_id: int) -> int:
    with lib.session() as s:
        return s.scalar(select(func.count()).select_from(StackMember).where(StackMember.model_id == model_id)) or 0


def _unstacked(lib: Library, model_id: int) -> list[int]:
    """Photos with a vector but no stack row. Ids only grow (AUTOINCREMENT), so the new ones are usually those above
    the highest stacked id, which two index-range counts confirm; otherwise (a re-embedded photo) an anti-join."""
    with lib.session() as s:
        top = s.scalar(select(func.max(StackMember.image_id)).where(StackMember.model_id == model_id)) or 0
        above = list(s.scalars(select(Embedding.image_id).where(Embedding.model_id == model_id,
                                                                Embedding.image_id > top)))
        embedded = s.scalar(select(func.count()).select_from(Embedding).where(Embedding.model_id == model_id)) or 0
        if embedded == _count_rows(lib, model_id) + len(above):
            return sorted(above)
        q = select(Embedding.image_id).where(Embedding.model_id == model_id).where(
            ~select(StackMember.image_id).where(StackMember.model_id == model_id,
                                                StackMember.image_id == Embedding.image_id).exists())
        return sorted(s.scalars(q))


def _rows_key(model_id: int) -> str:
    return f"stacks.{model_id}.rows"  # stack rows after the last update: fewer now means a member went


def update_stacks(lib: Library, model_id: int, rules: StackRules = StackRules(), *,
                  progress: ProgressFn | None = None,
                  cancel: Callable[[], bool] | None = None) -> StackUpdate:
    """Bring the stacks up to date with the photos the model has vectors for: repair stacks that lost members,
    then fold each new photo in from its k nearest neighbours. Cheap when little changed."""
    with lib.session() as s:
        known = s.get(Meta, _rows_key(model_id))
    out = StackUpdate()
    if known is None or int(known.value) != _count_rows(lib, model_id):  # rows only vanish by cascade
        out.repaired = _repair(lib, model_id, rules)
    new = _unstacked(lib, model_id)
    clock = Stopwatch()
    if new:
        index = vector_index(lib, model_id)
        ids, vectors = index.ids(), index.vectors()
        for start in range(0, len(new), QUERY_BLOCK):
            raise_if_cancelled(cancel)
            out.touched += _add(lib, model_id, new[start : start + QUERY_BLOCK], index, ids, vectors, rules)
            out.added += len(new[start : start + QUERY_BLOCK])
            if progress is not None:
                progress(clock(out.added, len(new), phase="stacking"))
    with lib.write_session.begin() as s:
        s.merge(Meta(key=_rows_key(model_id), value=str(_count_rows(lib, model_id))))
    return out


def _add(lib: Library, model_id: int, new: list[int], index, ids: np.ndarray, vectors: np.ndarray,
         rules: StackRules) -> int:
    from engine.faiss_runtime import faiss_settings

    rows = np.searchsorted(ids, new)
    present = [(i, r) for i, r in zip(new, rows.tolist(), strict=True) if r < len(ids) and ids[r] == i]
    if not present:
        return 0
    query = np.ascontiguousarray(vectors[[r for _, r in present]], np.float32)
    with faiss_settings(len(present)):
        scores, found = index.search(query, min(KNN + 1, len(ids)))
    candidates: list[tuple[int, int, float]] = []
    for (i, _), row_scores, row_ids in zip(present, scores, found, strict=True):
        candidates += [(i, int(j), float(c)) for j, c in zip(row_ids, row_scores, strict=True)
                       if j >= 0 and j != i and c >= rules.scene]
    meta = _meta(lib, [i for i, _ in present] + [j for _, j, _ in candidates])
    links = [(i, j) for i, j, c in candidates if i in meta and j in meta and linked(meta[i], meta[j], c, rules)]
    # The stacks the new photos join: every member of them is regrouped with the new photos.
    touched = sorted({j for _, j in links} - {i for i, _ in present})
    stack_of: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    with lib.session() as s:
        for start in range(0, len(touched), 500):
            q = select(StackMember.image_id, StackMember.stack_id).where(
                StackMember.model_id == model_id, StackMember.image_id.in_(touched[start : start + 500]))
            stack_of.update(s.execute(q).all())
        stack_ids = sorted(set(stack_of.values()))
        for start in range(0, len(stack_ids), 500):
            q = select(StackMember.stack_id, StackMember.image_id).where(
                StackMember.model_id == model_id, StackMember.stack_id.in_(stack_ids[start : start + 500]))
            for stack_id, image_id in s.execute(q):
                members.setdefault(stack_id, []).append(image_id)
    everyone = sorted({i for i, _ in present} | set(touched) | {m for ms in members.values() for m in ms})
    chain = [(ms[0], m) for ms in members.values() for m in ms[1:]]  # existing stacks stay whole
    groups = _components(everyone, links + chain)
    meta.update(_meta(lib, [i for i in everyone if i not in meta]))
    _write(lib, model_id, groups, meta)
    return sum(len(g) > 1 for g in groups)


def rebuild_stacks(lib: Library, model_id: int, rules: StackRules = StackRules(), *,
                   progress: ProgressFn | None = None,
                   cancel: Callable[[], bool] | None = None) -> StackUpdate:
    """Forget the stacks and fold every photo in again (after changing the rules, or to check the incremental
    result). Each photo still costs one k-NN query."""
    with lib.write_session.begin() as s:
        s.execute(delete(StackMember).where(StackMember.model_id == model_id))
    return update_stacks(lib, model_id, rules, progress=progress, cancel=cancel)


def stacks(lib: Library, model_id: int) -> dict[int, list[int]]:
    """cover id -> member ids (cover first) of every stack of two or more photos."""
    out: dict[int, list[int]] = {}
    with lib.session() as s:
        q = select(StackMember.stack_id, StackMember.image_id).where(
            StackMember.model_id == model_id, StackMember.size > 1).order_by(StackMember.stack_id,
                                                                               StackMember.image_id)
        for stack_id, image_id in s.execute(q):
            group = out.setdefault(stack_id, [stack_id])
            if image_id != stack_id:
                group.append(image_id)
    return out


R = TypeVar("R")


def fold_results(lib: Library, model_id: int, results: Sequence[R]) -> list[R]:
    """Fold ranked search results by stack: each stack keeps its best-ranked member only, whose `stack` field
    lists the paths of the stack's other members (the whole stack, not only those in the results); ranks are
    renumbered. `results` are dataclasses with `image_id`, and `stack` (and optionally `rank`) fields."""
    if not results:
        return []
    fields = {f.name for f in dataclasses.fields(results[0])}  # type: ignore[arg-type]
    if "stack" not in fields:
        raise TypeError(f"{type(results[0]).__name__} has no 'stack' field to carry the folded members")
    ids = [int(r.image_id) for r in results]  # type: ignore[attr-defined]
    with lib.session() as s:
        stack_of: dict[int, int] = {}
        for start in range(0, len(ids), 500):
            q = select(StackMember.image_id, StackMember.stack_id).where(
                StackMember.model_id == model_id, StackMember.size > 1,
                StackMember.image_id.in_(ids[start : start + 500]))
            stack_of.update(s.execute(q).all())
        stack_ids = sorted(set(stack_of.values()))
        members: dict[int, list[tuple[int, str]]] = {}
        for start in range(0, len(stack_ids), 500):
            q = (select(StackMember.stack_id, Image.id, Image.path)
                 .join(Image, Image.id == StackMember.image_id)
                 .where(StackMember.model_id == model_id, StackMember.stack_id.in_(stack_ids[start : start + 500]))
                 .order_by(Image.path))
            for stack_id, image_id, path in s.execute(q):
                members.setdefault(stack_id, []).append((image_id, path))
    out: list[R] = []
    shown: set[int] = set()
    for r, image_id in zip(results, ids, strict=True):
        stack_id = stack_of.get(image_id)
        if stack_id is None:
            out.append(r)
            continue
        if stack_id in shown:
            continue
        shown.add(stack_id)
        others = [p for i, p in members.get(stack_id, []) if i != image_id]
        out.append(dataclasses.replace(r, stack=others))  # type: ignore[type-var]
    if "rank" in fields:
        out = [dataclasses.replace(r, rank=n) for n, r in enumerate(out, 1)]  # type: ignore[type-var]
    return out


__all__ = ["KNN", "WINDOW_S", "StackRules", "StackUpdate", "fold_results", "linked", "rebuild_stacks", "stacks",
           "update_stacks"]
