"""Faults while indexing: broken and hostile files, special files, link loops, folders vanishing before and during a
run, a full disk under the index files and under the database, two indexers at once, a newer database. In every
case the run finishes or stops with a clear message, and rows that were already indexed survive."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.store import Library, LibraryBusyError, index_library
from engine.store.vectors import VectorIndex, file_paths, vector_index
from tests.test_indexer import (
    ROOT,
    assert_index_matches_db,
    load_small_photos,
    model,
    run_cli,
    table_counts,
    write_photos,
)


@pytest.fixture(scope="module")
def small_photos(skimage_data_dir: Path) -> dict[str, Image.Image]:
    return load_small_photos(skimage_data_dir)


def huge_png(path: Path, side: int = 20000) -> None:
    """A real, valid 1-bit PNG of side x side pixels that weighs a few KB (all-black rows compress to nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def run_python(code: str, *args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, DINOSCOPE_HOME=str(home), TORCH_HOME=str(home / "torch"))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# -------------------------------------------------------------------------------------------------- bad files


def test_broken_files_become_error_rows_and_the_rest_is_indexed(tmp_path: Path, small_photos) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    small_photos["astronaut"].save(photos / "good.jpg", quality=80)
    small_photos["coffee"].save(photos / "good.png")
    (photos / "zero.jpg").write_bytes(b"")
    whole = (photos / "good.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (photos / "text.jpg").write_text("Dear diary, today I renamed a text file to .jpg.\n" * 20)
    huge_png(photos / "huge.png")
    assert (photos / "huge.png").stat().st_size < 100_000
    with Library.open("faults") as lib:
        report = index_library(lib, model(), folders=[photos], precision="fp32", batch_size=2)
        assert (report.new, report.failed) == (6, 4)
        errors = dict(lib.errors())
        assert errors[str(photos / "zero.jpg")] == "the file is empty (0 bytes)"
        assert "truncated" in errors[str(photos / "truncated.jpg")]
        assert errors[str(photos / "text.jpg")] == "not an image, or not in a format Dinoscope can read"
        assert "400.0 megapixels exceeds" in errors[str(photos / "huge.png")]
        assert sorted(errors) == sorted(p for p, _ in report.errors)
        assert lib.counts()["ok"] == 2 and table_counts(lib)["embeddings"] == 2
        assert_index_matches_db(lib, report.model_id)
        bad = lib.image_by_path(photos / "text.jpg")
        assert bad.status == "error" and bad.size > 0 and bad.content_hash and lib.thumbnail(bad.id) is None

        again = index_library(lib, model(), precision="fp32")  # known failures are not retried...
        assert (again.failed, again.unchanged) == (0, 6)
        small_photos["chelsea"].save(photos / "text.jpg", quality=80)  # ...until the file changes
        fixed = index_library(lib, model(), precision="fp32")
        assert (fixed.changed, fixed.failed) == (1, 0)
        rec = lib.image_by_path(photos / "text.jpg")
        assert rec.id == bad.id and rec.status == "ok" and rec.error is None and lib.thumbnail(rec.id)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their permissions; the read-failure path is covered by "
                           "test_special_files_are_recorded_without_hanging")
def test_an_unreadable_file_is_recorded(tmp_path: Path, small_photos) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    small_photos["astronaut"].save(photos / "ok.jpg")
    small_photos["coffee"].save(photos / "secret.jpg")
    os.chmod(photos / "secret.jpg", 0)
    try:
        with Library.open("faults") as lib:
            report = index_library(lib, model(), folders=[photos], precision="fp32")
            assert report.failed == 1 and lib.counts()["ok"] == 1
            assert dict(lib.errors())[str(photos / "secret.jpg")] == "permission denied (the file cannot be read)"
    finally:
        os.chmod(photos / "secret.jpg", 0o644)


def test_special_files_are_recorded_without_hanging(tmp_path: Path, small_photos) -> None:
    """Files that the OS cannot open as photos: a FIFO (opening it for reading would block forever), a dangling
    link and a link to itself. As root, these are how the can't-open path is exercised."""
    photos = tmp_path / "photos"
    photos.mkdir()
    small_photos["astronaut"].save(photos / "ok.jpg")
    os.mkfifo(photos / "pipe.jpg")
    os.symlink(photos / "nowhere.jpg", photos / "dangling.jpg")
    os.symlink(photos / "self.jpg", photos / "self.jpg")
    with Library.open("faults") as lib:
        report = index_library(lib, model(), folders=[photos], precision="fp32")
        errors = dict(lib.errors())
        assert report.failed == 3 and lib.counts()["ok"] == 1
        assert errors[str(photos / "pipe.jpg")] == "not a regular file (a pipe, socket or device)"
        assert errors[str(photos / "dangling.jpg")] == "broken symbolic link (its target does not exist)"
        assert errors[str(photos / "self.jpg")] == "symbolic link loop"


def test_a_folder_link_loop_ends_and_each_photo_is_indexed_once(tmp_path: Path, small_photos) -> None:
    photos = tmp_path / "photos"
    (photos / "a" / "b").mkdir(parents=True)
    small_photos["astronaut"].save(photos / "top.jpg")
    small_photos["coffee"].save(photos / "a" / "b" / "deep.jpg")
    os.symlink(photos, photos / "a" / "b" / "up")  # photos/a/b/up/a/b/up/... forever, if followed blindly
    os.symlink(".", photos / "a" / "here")
    with Library.open("faults") as lib:
        report = index_library(lib, model(), folders=[photos], precision="fp32")
        assert report.new == 2 and report.failed == 0
        assert sorted(r.path for r in lib.images()) == [str(photos / "a/b/deep.jpg"), str(photos / "top.jpg")]


# ------------------------------------------------------------------------------------------- vanishing folders


def test_a_folder_deleted_during_the_run(tmp_path: Path, small_photos) -> None:
    root = tmp_path / "photos"
    (root / "keep").mkdir(parents=True)
    names = list(small_photos)
    for i in range(3):
        small_photos[names[i]].save(root / "keep" / f"k{i}.jpg")
    with Library.open("faults") as lib:
        first = index_library(lib, model(), folders=[root], precision="fp32")
        kept_ids = {r.path: r.id for r in lib.images()}
        (root / "doomed").mkdir()  # sorts first, so it is being indexed when it disappears
        for i in range(12):
            small_photos[names[i % len(names)]].rotate(i * 10).save(root / "doomed" / f"d{i:02d}.jpg")

        def vandal(p) -> None:
            if p.phase == "embed" and p.done >= 2 and (root / "doomed").exists():
                shutil.rmtree(root / "doomed")

        report = index_library(lib, model(), precision="fp32", batch_size=2, commit_every=2, workers=1,
                               progress=vandal)
        assert not report.cancelled and report.vanished >= 1 and report.failed == 0
        assert report.new + report.vanished == 12
        rows = lib.images()
        assert {r.path: r.id for r in rows if "/keep/" in r.path} == kept_ids  # untouched
        assert all(r.status == "ok" for r in rows)  # what was indexed is whole; what vanished has no row
        assert table_counts(lib) == dict.fromkeys(("images", "thumbnails", "embeddings", "regions"), len(rows))
        assert_index_matches_db(lib, first.model_id)

        after = index_library(lib, model(), precision="fp32")  # the folder is gone for good now
        assert after.deleted == len(rows) - 3 and after.new == 0
        assert {r.path: r.id for r in lib.images()} == kept_ids
        assert_index_matches_db(lib, first.model_id)


def test_a_missing_source_folder_keeps_its_rows(tmp_path: Path, small_photos) -> None:
    a, b = tmp_path / "internal", tmp_path / "usb_drive"
    write_photos(a, small_photos)
    b.mkdir()
    small_photos["ihc"].save(b / "x.jpg")
    small_photos["hubble_deep_field"].save(b / "y.png")
    with Library.open("faults") as lib:
        first = index_library(lib, model(), folders=[a, b], precision="fp32")
        rows = lib.images()
        b.rename(tmp_path / "unplugged")
        report = index_library(lib, model(), precision="fp32")
        assert report.missing_folders == [str(b.resolve())] and report.deleted == 0 and report.protected == 2
        assert any("folder not found" in w for w in report.warnings)
        assert lib.images() == rows and vector_index(lib, first.model_id).count == len(rows)
        (tmp_path / "unplugged").rename(b)
        back = index_library(lib, model(), precision="fp32")
        assert back.unchanged == len(rows) and back.missing_folders == [] and lib.images() == rows


# -------------------------------------------------------------------------------------------------- full disk

_BUILD_UNDER_LIMIT = """
    import resource, signal, sys
    from engine.store import Library, StoreError
    from engine.store.vectors import VectorIndex
    lib = Library.open(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
    try:
        VectorIndex.build(lib, int(sys.argv[2]))
    except StoreError as e:
        print(e)
        sys.exit(3)
"""


def test_a_full_disk_while_writing_the_index_keeps_the_old_files(
    tmp_path: Path, small_photos, dinoscope_home: Path
) -> None:
    photos = tmp_path / "photos"
    files = write_photos(photos, small_photos)
    with Library.open("full") as lib:
        first = index_library(lib, model(), folders=[photos], precision="fp32")
        paths = file_paths(lib, first.model_id)
        old = {k: p.read_bytes() for k, p in paths.items()}
        small_photos["ihc"].save(photos / "more1.jpg")
        small_photos["hubble_deep_field"].save(photos / "more2.jpg")
        index_library(lib, model(), precision="fp32")
        for k, p in paths.items():  # put the old files back: the database is ahead of them, as after a crash
            p.write_bytes(old[k])
        n_rows = table_counts(lib)["embeddings"]
        assert n_rows == len(files) + 2

    limit = len(old["f32"]) + 256  # the new vector file needs 2 more rows x 512 bytes
    r = run_python(_BUILD_UNDER_LIMIT, str(dinoscope_home / "libraries" / "full"), str(first.model_id), str(limit),
                   home=dinoscope_home)
    assert r.returncode == 3, r.stderr
    assert "disk full while writing the vector index" in r.stdout and "intact" in r.stdout
    assert {k: p.read_bytes() for k, p in paths.items()} == old  # the previous files, byte for byte
    assert not list(paths["f32"].parent.glob(".*.tmp"))
    with Library.open("full") as lib:
        assert table_counts(lib)["embeddings"] == n_rows  # the database never depended on them
        index = VectorIndex.open(lib, first.model_id)  # with space again, it is rebuilt from the database
        assert index.rebuilt is not None and index.count == n_rows
        assert_index_matches_db(lib, first.model_id)


_INDEX_UNDER_LIMIT = """
    import resource, signal, sys
    from engine.store import Library, StoreError, index_library
    lib = Library.open(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
    try:
        index_library(lib, sys.argv[2], precision="fp32", batch_size=2, commit_every=2)
    except StoreError as e:
        print(e)
        sys.exit(3)
"""


def test_a_full_disk_while_writing_the_database_loses_no_committed_rows(
    tmp_path: Path, small_photos, dinoscope_home: Path
) -> None:
    photos = tmp_path / "photos"
    write_photos(photos, small_photos)
    torch.save(model().state_dict(), tmp_path / "tiny.pth")
    with Library.open("dbfull") as lib:
        index_library(lib, str(tmp_path / "tiny.pth"), folders=[photos], precision="fp32")
        before = lib.images()
    for i in range(10):  # more work, whose database writes will not fit
        small_photos[list(small_photos)[i % 8]].rotate(5 * i + 3).save(photos / f"new_{i}.jpg")
    r = run_python(_INDEX_UNDER_LIMIT, str(dinoscope_home / "libraries" / "dbfull"), str(tmp_path / "tiny.pth"),
                   "150000", home=dinoscope_home)
    assert r.returncode == 3, r.stderr
    assert "disk full or write error while writing the library database (disk I/O error)" in r.stdout
    assert "everything committed before them" in r.stdout
    with Library.open("dbfull") as lib:
        con = sqlite3.connect(lib.db_path)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        now = lib.images()
        assert [r for r in now if r.path in {b.path for b in before}] == before
        saved_in_run = int(re.search(r"\((\d+) files in this run\)", r.stdout)[1])
        assert len(now) == len(before) + saved_in_run
        counts = table_counts(lib)
        assert counts["images"] == counts["thumbnails"] == counts["embeddings"] == counts["regions"]
        done = index_library(lib, str(tmp_path / "tiny.pth"), precision="fp32")
        assert done.failed == 0 and lib.counts()["ok"] == len(before) + 10
        assert_index_matches_db(lib, done.model_id)


# ------------------------------------------------------------------------------------------ concurrency, version

_HOLD_LOCK = """
    import sys
    from engine.store import Library
    lib = Library.open(sys.argv[1])
    with lib.lock("index"):
        print("locked", flush=True)
        sys.stdin.read()
"""


def test_a_second_indexer_is_told_the_library_is_busy(tmp_path: Path, small_photos, dinoscope_home: Path) -> None:
    photos = tmp_path / "photos"
    write_photos(photos, small_photos)
    Library.open("shared").close()
    env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLD_LOCK), "shared"], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with Library.open("shared") as lib:
            with pytest.raises(LibraryBusyError) as err:
                index_library(lib, model(), folders=[photos], precision="fp32")
            assert err.value.pid == holder.pid
            assert str(err.value) == f"library 'shared' is busy: process {holder.pid} is indexing it"
            assert lib.folders() == [] and lib.counts()["total"] == 0  # nothing was touched
        torch.save(model().state_dict(), tmp_path / "tiny.pth")
        r = run_cli("index", str(photos), "--library", "shared", "--model", str(tmp_path / "tiny.pth"),
                    home=dinoscope_home)
        assert r.returncode == 2 and f"is busy: process {holder.pid} is indexing it" in r.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    with Library.open("shared") as lib:  # the lock died with its holder
        assert index_library(lib, model(), folders=[photos], precision="fp32").new == len(list(photos.rglob("*.*")))


def test_the_cli_refuses_a_newer_database_and_leaves_it_alone(tmp_path: Path, dinoscope_home: Path) -> None:
    Library.open("future").close()
    db = dinoscope_home / "libraries" / "future" / "library.db"
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    before = db.read_bytes()
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (64, 64), "red").save(tmp_path / "photos" / "red.png")
    r = run_cli("index", str(tmp_path / "photos"), "--library", "future", home=dinoscope_home)
    assert r.returncode == 2
    from engine.store.schema import SCHEMA_VERSION

    assert (f"was created by a newer Dinoscope (schema 7, this version reads up to {SCHEMA_VERSION}); "
            "upgrade Dinoscope") in r.stderr
    assert db.read_bytes() == before
