"""Watched folders with a real watchdog observer on real files: new, changed, renamed, moved and deleted photos
reach the library; a file still being written waits; readers never wait on the watcher while another writer is
refused; a watched folder that disappears keeps its rows; a rename storm keeps every id. Waits poll the database
with a generous timeout; nothing asserts on timing."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.store import Library, LibraryBusyError, index_library
from engine.store.vectors import library_vectors, vector_index
from engine.watch import DirtySet, WatchBatch, WatchNotice, watch_library
from tests.test_indexer import model

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample"
PHOTOS = sorted((SAMPLE / "nature").glob("*.jpg"))[:6] + sorted((SAMPLE / "animals").glob("*.jpg"))[:2]
TIMEOUT = 90.0


def small_copy(src: Path, dst: Path, side: int = 160) -> Path:
    """A real photo, shrunk so that the tiny model embeds it quickly."""
    im = Image.open(src).convert("RGB")
    im.thumbnail((side, side))
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, quality=90)
    return dst


def rows(db: Path) -> dict[str, tuple]:
    """path -> (id, status, content_hash, has an embedding), read with plain sqlite3 as another reader would."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {p: (i, s, h, e) for i, p, s, h, e in con.execute(
            "SELECT id, path, status, content_hash, EXISTS(SELECT 1 FROM embeddings WHERE image_id = images.id) "
            "FROM images")}
    finally:
        con.close()


def wait_for(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


class Watcher:
    """watch_library in a thread, as the CLI runs it, stopped through its cancel callback."""

    def __init__(self, lib: Library, folders: list[Path] | None = None) -> None:
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.batches: list[WatchBatch] = []
        self.notices: list[str] = []
        self.error: BaseException | None = None
        self.net = model()

        def body() -> None:
            try:
                watch_library(lib, self.net, folders=folders, on_batch=self.batches.append,
                              on_notice=lambda n: self.notices.append(n.message), cancel=self.stop.is_set,
                              ready=self.ready, quiet_s=0.3, device="cpu", workers=1)
            except BaseException as exc:  # surfaced by the test
                self.error = exc

        self.thread = threading.Thread(target=body, daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        assert self.ready.wait(TIMEOUT), "the watcher did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        if self.error is not None and exc[0] is None:
            raise self.error


@pytest.fixture
def library(tmp_path: Path):
    photos = tmp_path / "photos"
    for src in PHOTOS[:3]:
        small_copy(src, photos / src.name)
    with Library.open(tmp_path / "lib") as lib:
        index_library(lib, model(), folders=[photos], device="cpu", workers=1)
        yield lib, photos


def test_new_changed_renamed_moved_and_deleted_files_reach_the_library(library) -> None:
    lib, photos = library
    db = lib.db_path
    before = rows(db)
    with Watcher(lib) as w:
        small_copy(PHOTOS[3], photos / "new" / "landed.jpg")
        wait_for(lambda: rows(db).get(str(photos / "new" / "landed.jpg"), (0, "", "", 0))[3] == 1, "a new photo")

        first = str(photos / PHOTOS[0].name)
        old_id, _, old_hash, _ = rows(db)[first]
        small_copy(PHOTOS[4], Path(first))  # other bytes under the same name
        wait_for(lambda: rows(db)[first][2] != old_hash and rows(db)[first][3] == 1, "a changed photo")
        assert rows(db)[first][0] == old_id

        second = str(photos / PHOTOS[1].name)
        renamed = str(photos / "renamed.jpg")
        second_id = rows(db)[second][0]
        os.rename(second, renamed)
        wait_for(lambda: renamed in rows(db) and second not in rows(db), "a renamed photo")
        assert rows(db)[renamed][0] == second_id  # the same row: its vectors, labels and thumbnail kept

        landed_id = rows(db)[str(photos / "new" / "landed.jpg")][0]
        shutil.move(str(photos / "new"), str(photos / "moved"))  # a whole folder
        wait_for(lambda: str(photos / "moved" / "landed.jpg") in rows(db), "a moved folder")
        assert rows(db)[str(photos / "moved" / "landed.jpg")][0] == landed_id

        third = str(photos / PHOTOS[2].name)
        os.remove(third)
        wait_for(lambda: third not in rows(db), "a deleted photo")

        (photos / "notes.txt").write_text("not a photo")  # ignored
    assert w.batches and all(b.error is None for b in w.batches)
    final = rows(db)
    assert len(final) == len(before)  # 3 - 1 deleted + 1 new: nothing indexed twice
    assert len({v[0] for v in final.values()}) == len(final)
    vectors = vector_index(lib, lib.models()[0].id)  # the search index follows
    assert sorted(vectors.ids().tolist()) == sorted(v[0] for v in final.values())


def test_a_file_still_being_written_is_indexed_whole(library) -> None:
    lib, photos = library
    source = small_copy(PHOTOS[5], photos.parent / "staging" / "slow.jpg", side=400).read_bytes()
    target = photos / "slow.jpg"
    with Watcher(lib), open(target, "wb") as f:
        for start in range(0, len(source), len(source) // 8 + 1):  # a slow copy: a chunk every 0.1 s
            f.write(source[start : start + len(source) // 8 + 1])
            f.flush()
            time.sleep(0.1)
        f.close()
        import hashlib

        whole = hashlib.blake2b(source, digest_size=16).hexdigest()
        wait_for(lambda: rows(lib.db_path).get(str(target), (0, "", "", 0))[1:] == ("ok", whole, 1),
                 "the whole file indexed")


def test_readers_never_wait_and_a_second_writer_is_refused(library) -> None:
    lib, _ = library
    with Watcher(lib):
        with pytest.raises(LibraryBusyError, match="busy"):
            index_library(lib, model(), device="cpu")
        with Library.open(lib.root) as reader:  # another reader, as search or the GUI would open it
            ids, vectors = library_vectors(reader, reader.models()[0].id)
            assert len(ids) == 3 and np.isfinite(vectors).all()
            assert reader.counts()["ok"] == 3


def test_a_watched_folder_that_disappears_keeps_its_rows_and_is_followed_when_back(tmp_path: Path) -> None:
    drive = tmp_path / "drive"
    small_copy(PHOTOS[0], drive / "a.jpg")
    small_copy(PHOTOS[1], drive / "b.jpg")
    with Library.open(tmp_path / "lib") as lib:
        index_library(lib, model(), folders=[drive], device="cpu", workers=1)
        aside = tmp_path / "unplugged"
        with Watcher(lib) as w:
            os.rename(drive, aside)  # the drive is unplugged (its mount point is gone)
            wait_for(lambda: any("folder not found" in n for n in w.notices), "the missing folder is reported")
            assert len(rows(lib.db_path)) == 2
            os.rename(aside, drive)  # plugged in again, with a photo added elsewhere meanwhile
            small_copy(PHOTOS[2], drive / "c.jpg")
            wait_for(lambda: str(drive / "c.jpg") in rows(lib.db_path), "the folder followed again")
            assert any("is back" in n for n in w.notices)
            shutil.rmtree(drive)  # deleted for good while watched: still kept, as the indexer does
            wait_for(lambda: len([n for n in w.notices if "folder not found" in n]) == 2, "deleted folder")
        assert len(rows(lib.db_path)) == 3


def test_a_rename_storm_keeps_every_row(library, tmp_path: Path) -> None:
    lib, photos = library
    storm = photos / "storm"
    src = small_copy(PHOTOS[6], tmp_path / "one.jpg", side=48)
    im = np.asarray(Image.open(src))
    for i in range(120):  # distinct bytes (a pixel differs), so that each move is told apart by content
        pixels = im.copy()
        pixels[0, 0] = (i, 255 - i, i // 2)
        small = storm / f"IMG_{i:04d}.png"
        small.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(small)
    index_library(lib, model(), device="cpu", workers=1)
    ids = {p: v[0] for p, v in rows(lib.db_path).items() if "/storm/" in p}
    assert len(ids) == 120
    with Watcher(lib):
        for i in range(120):
            os.rename(storm / f"IMG_{i:04d}.png", storm / f"renamed_{i:04d}.png")
        for i in range(0, 120, 2):
            os.rename(storm / f"renamed_{i:04d}.png", storm / f"final_{i:04d}.png")
        wait_for(lambda: sum("final_" in p for p in rows(lib.db_path)) == 60
                 and not any("IMG_" in p for p in rows(lib.db_path)), "the storm settled")
    after = {p: v[0] for p, v in rows(lib.db_path).items() if "/storm/" in p}
    assert sorted(after.values()) == sorted(ids.values())  # every row kept its id: nothing re-indexed or lost


def test_dirty_folders_wait_for_quiet_and_bursts_come_together() -> None:
    dirty = DirtySet(quiet_s=1.0, max_wait_s=5.0)
    for i in range(500):  # a burst: every folder of it is ready at once, for one index run
        dirty.mark(f"/p/burst{i % 7}", now=i / 1000)
    dirty.mark("/p/a", now=0.0)
    dirty.mark("/p/a", now=0.9)  # still being written
    assert dirty.take_ready(now=1.2) == []
    assert dirty.take_ready(now=1.6) == [(f"/p/burst{i}", False) for i in range(7)]
    assert dirty.take_ready(now=1.95) == [("/p/a", False)]
    assert len(dirty) == 0
    for t in range(12):  # a folder busy without pause is taken after max_wait_s anyway
        dirty.mark("/p/busy", deep=t == 3, now=t * 0.5)
        got = dirty.take_ready(now=t * 0.5)
        if got:
            break
    assert got == [("/p/busy", True)] and t * 0.5 >= 5.0
    assert isinstance(WatchNotice("x").message, str)


def test_a_copy_landing_in_a_watched_folder_joins_the_stack_of_its_original(library) -> None:
    lib, photos = library
    original = photos / PHOTOS[0].name
    db = lib.db_path

    def stacked_with_original() -> bool:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            row = con.execute(
                "SELECT count(*) FROM stack_members a JOIN stack_members b ON a.stack_id = b.stack_id "
                "JOIN images ia ON ia.id = a.image_id JOIN images ib ON ib.id = b.image_id "
                "WHERE ia.path = ? AND ib.path = ? AND a.size >= 2", (str(original), str(photos / "copy.jpg")))
            return row.fetchone()[0] == 1
        finally:
            con.close()

    with Watcher(lib) as w:
        Image.open(original).save(photos / "copy.jpg", quality=60)  # a re-encoded copy: near-identical
        wait_for(stacked_with_original, "the copy stacked with its original")
    assert any(b.stacks is not None and b.stacks.touched >= 1 for b in w.batches)
