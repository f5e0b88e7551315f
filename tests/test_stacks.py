"""Stacks on a real library of real photos: near-identical copies and a burst fold into stacks with dedup's keeper as
cover; new photos join incrementally, a deleted cover or member is repaired, the incremental result equals a
rebuild; search results fold by stack; the `stack` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from engine.stacks import StackRules, _Meta, fold_results, linked, rebuild_stacks, stacks, update_stacks
from engine.store import Library, index_library
from tests.test_indexer import model

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample"


def save(src: str, dst: Path, side: int, quality: int = 90, when: str | None = None) -> Path:
    im = Image.open(SAMPLE / src).convert("RGB")
    im.thumbnail((side, side))
    dst.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if when:
        exif.get_ifd(0x8769)[0x9003] = when
    im.save(dst, quality=quality, exif=exif)
    return dst


def names(lib: Library, model_id: int) -> set[frozenset[str]]:
    paths = dict(lib.image_paths(status=None))
    return {frozenset(Path(paths[i]).name for i in members) for members in stacks(lib, model_id).values()}


def covers(lib: Library, model_id: int) -> set[str]:
    paths = dict(lib.image_paths(status=None))
    return {Path(paths[c]).name for c in stacks(lib, model_id)}


@pytest.fixture
def library(tmp_path: Path):
    photos = tmp_path / "photos"
    # near-identical copies of one photo (re-encoded, resized): one stack, the largest is the cover
    save("nature/forest-path.jpg", photos / "copies" / "forest_q95.jpg", 320, 95)
    save("nature/forest-path.jpg", photos / "copies" / "forest_q40.jpg", 300, 40)
    save("nature/forest-path.jpg", photos / "copies" / "forest_small.jpg", 240)
    # a burst: two different photos of one "scene" for the tiny model (cosine ~0.90), 3 s apart, one folder
    save("nature/fallen-leaf.jpg", photos / "burst" / "leaf.jpg", 320, when="2024:06:01 10:00:00")
    save("nature/marigold-garden.jpg", photos / "burst" / "marigold.jpg", 300, when="2024:06:01 10:00:03")
    # unrelated photos stay alone
    save("nature/dune-grass.jpg", photos / "dune.jpg", 320)
    save("animals/ladybird.jpg", photos / "ladybird.jpg", 320)
    with Library.open(tmp_path / "lib") as lib:
        report = index_library(lib, model(), folders=[photos], device="cpu", workers=1)
        yield lib, photos, report.model_id


def test_copies_and_a_burst_fold_into_stacks_kept_up_to_date(library) -> None:
    lib, photos, model_id = library
    first = update_stacks(lib, model_id)
    assert first.added == 7 and first.touched == 2 and len(stacks(lib, model_id)) == 2
    assert names(lib, model_id) == {frozenset({"forest_q95.jpg", "forest_q40.jpg", "forest_small.jpg"}),
                                    frozenset({"leaf.jpg", "marigold.jpg"})}
    assert covers(lib, model_id) == {"forest_q95.jpg", "leaf.jpg"}  # the most pixels
    assert update_stacks(lib, model_id).added == 0  # nothing new: nothing done

    save("nature/forest-path.jpg", photos / "elsewhere" / "forest_q70.jpg", 320, 70)  # a copy in another folder
    index_library(lib, model(), device="cpu", workers=1)
    step = update_stacks(lib, model_id)
    assert step.added == 1
    assert frozenset({"forest_q95.jpg", "forest_q40.jpg", "forest_small.jpg", "forest_q70.jpg"}) in names(
        lib, model_id)

    (photos / "copies" / "forest_q95.jpg").unlink()  # the cover goes
    (photos / "burst" / "marigold.jpg").unlink()  # a burst of two loses one: no stack left
    index_library(lib, model(), device="cpu", workers=1)
    step = update_stacks(lib, model_id)
    assert step.repaired == 2
    assert names(lib, model_id) == {frozenset({"forest_q40.jpg", "forest_small.jpg", "forest_q70.jpg"})}
    assert covers(lib, model_id) == {"forest_q70.jpg"}  # 320 px, the largest left

    save("animals/ladybird.jpg", photos / "copies" / "forest_small.jpg", 320)  # changed: no longer a copy
    index_library(lib, model(), device="cpu", workers=1)
    update_stacks(lib, model_id)
    incremental = names(lib, model_id)
    assert incremental == {frozenset({"forest_q40.jpg", "forest_q70.jpg"}),
                           frozenset({"forest_small.jpg", "ladybird.jpg"})}  # identical content: near
    rebuild_stacks(lib, model_id)
    assert names(lib, model_id) == incremental


def test_burst_rules_need_one_folder_and_a_short_window() -> None:
    rules = StackRules()
    t0 = datetime(2024, 6, 1, 10, 0, 0)

    def meta(folder: str, seconds: float | None) -> _Meta:
        when = None if seconds is None else t0 + timedelta(seconds=seconds)
        return _Meta(folder, when, (100, 100, when, 0))

    assert linked(meta("/a", 0), meta("/a", 9), 0.85, rules)
    assert not linked(meta("/a", 0), meta("/a", 11), 0.85, rules)  # too far apart
    assert not linked(meta("/a", 0), meta("/b", 1), 0.85, rules)  # another folder
    assert not linked(meta("/a", None), meta("/a", 1), 0.85, rules)  # no capture time: never a burst
    assert not linked(meta("/a", 0), meta("/a", 1), 0.70, rules)  # not the same scene
    assert linked(meta("/a", None), meta("/b", None), 0.97, rules)  # near-identical: anywhere, any time
    assert linked(meta("/a", 0), meta("/a", 25), 0.85, StackRules(window_s=30))


@dataclass(frozen=True)
class Hit:
    image_id: int
    path: str
    score: float
    rank: int
    stack: list[str] = field(default_factory=list)


def test_search_results_fold_into_their_best_ranked_member(library) -> None:
    lib, _, model_id = library
    update_stacks(lib, model_id)
    by_name = {Path(p).name: (i, p) for i, p in lib.image_paths()}
    order = ["forest_small.jpg", "dune.jpg", "forest_q95.jpg", "marigold.jpg", "forest_q40.jpg", "ladybird.jpg"]
    hits = [Hit(by_name[n][0], by_name[n][1], 1.0 - r / 10, r) for r, n in enumerate(order, 1)]
    folded = fold_results(lib, model_id, hits)
    assert [Path(h.path).name for h in folded] == ["forest_small.jpg", "dune.jpg", "marigold.jpg", "ladybird.jpg"]
    assert [h.rank for h in folded] == [1, 2, 3, 4]
    assert sorted(Path(p).name for p in folded[0].stack) == ["forest_q40.jpg", "forest_q95.jpg"]
    assert [Path(p).name for p in folded[2].stack] == ["leaf.jpg"]  # the whole stack, not only the hits
    assert folded[1].stack == [] and folded[1].score == hits[1].score
    with pytest.raises(TypeError, match="no 'stack' field"):
        fold_results(lib, model_id, [_NoStack(1)])


@dataclass(frozen=True)
class _NoStack:
    image_id: int


def test_the_stack_command(library, dinoscope_home: Path) -> None:
    lib, _, _ = library
    env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home))
    cmd = [sys.executable, "-m", "app", "stack", "--library", str(lib.root)]
    r = subprocess.run([*cmd, "--rebuild"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "2 stack(s) holding 5 photos (rebuilt: 7 photo(s) folded in, 0 stack(s) repaired)" in r.stdout
    r = subprocess.run([*cmd, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    listed = {Path(s["cover"]).name: sorted(Path(m).name for m in s["members"]) for s in json.loads(r.stdout)}
    assert listed == {"forest_q95.jpg": ["forest_q40.jpg", "forest_small.jpg"], "leaf.jpg": ["marigold.jpg"]}
    r = subprocess.run([*cmd, "--near", "0.5", "--scene", "0.9"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--scene <= --near" in r.stderr
    with lib.lock("index"):  # a writer holds the library: stacking waits for no one, it says so
        r = subprocess.run([*cmd, "--rebuild"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "busy" in r.stderr
