"""Indexing real photos into a real library: counts, thumbnails, vectors, re-runs, changes, moves, deletions, a
second model, cancellation, the CLI, and a SIGKILL in the middle of a run followed by a resume."""

from __future__ import annotations

import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select

from engine.models import DinoVisionTransformer
from engine.store import Library, index_library
from engine.store import indexer as indexer_mod
from engine.store.schema import Embedding, Label, Region, Thumbnail
from engine.store.vectors import file_paths, library_vectors, vector_index
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
           "hubble_deep_field.jpg", "ihc.png"]


def load_small_photos(skimage_data_dir: Path) -> dict[str, Image.Image]:
    """scikit-image's photos shrunk to a longest side of 300 px, so that tests stay fast."""
    photos = {}
    for name in SOURCES:
        im = Image.open(skimage_data_dir / name).convert("RGB")
        im.thumbnail((300, 300))
        photos[name.split(".")[0]] = im
    return photos


@pytest.fixture(scope="session")
def small_photos(skimage_data_dir: Path) -> dict[str, Image.Image]:
    return load_small_photos(skimage_data_dir)


def heic_available() -> bool:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def write_photos(folder: Path, photos: dict[str, Image.Image]) -> dict[str, Path]:
    """Real encoded files in several formats and qualities, one of them rotated by EXIF and dated."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    files = {
        "astronaut": folder / "astronaut_q50.jpg",
        "coffee": folder / "coffee_q95.jpg",
        "chelsea": folder / "sub" / "chelsea.png",
        "camera": folder / "sub" / "camera.webp",
        "rocket": folder / "rocket_rotated.jpg",
    }
    photos["astronaut"].save(files["astronaut"], quality=50)
    photos["coffee"].save(files["coffee"], quality=95)
    photos["chelsea"].save(files["chelsea"])
    photos["camera"].save(files["camera"], quality=80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif.get_ifd(0x8769)[0x9003] = "2021:07:14 09:30:00"
    photos["rocket"].save(files["rocket"], quality=90, exif=exif)
    if heic_available():
        import pillow_heif

        pillow_heif.register_heif_opener()
        files["motorcycle"] = folder / "sub" / "motorcycle.heic"
        photos["motorcycle_left"].save(files["motorcycle"], quality=80)
    return files


def model(seed: int = 0) -> torch.nn.Module:
    """The tiny test architecture with its regular initialisation. (tiny_backbone's N(0, 0.05)-everywhere weights
    give every photo nearly the same CLS vector, cosine > 0.9999, too close for "finds itself first" checks.)"""
    torch.manual_seed(seed)
    return DinoVisionTransformer(tiny_config()).eval()


def embedding_blob(lib: Library, image_id: int, model_id: int) -> bytes | None:
    with lib.session() as s:
        row = s.get(Embedding, (model_id, image_id))
        return None if row is None else row.vector


def table_counts(lib: Library) -> dict[str, int]:
    con = sqlite3.connect(lib.db_path)
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("images", "thumbnails", "embeddings", "regions")}


def assert_index_matches_db(lib: Library, model_id: int) -> None:
    with lib.session() as s:
        db_ids = sorted(s.scalars(select(Embedding.image_id).where(Embedding.model_id == model_id)))
    files = file_paths(lib, model_id)
    raw = faiss.read_index(str(files["faiss"]))
    assert raw.ntotal == len(db_ids)
    assert list(faiss.vector_to_array(raw.id_map)) == db_ids
    assert files["f32"].stat().st_size == len(db_ids) * lib.model(model_id).dim * 4


# ------------------------------------------------------------------------------------------------- indexing


def test_indexing_real_photos(tmp_path: Path, small_photos) -> None:
    files = write_photos(tmp_path / "photos", small_photos)
    progress = []
    with Library.open("main") as lib:
        report = index_library(lib, model(), folders=[tmp_path / "photos"], precision="fp32", batch_size=2,
                               commit_every=3, progress=progress.append)
        n = len(files)
        assert (report.new, report.failed, report.changed, report.deleted, report.cancelled) == (n, 0, 0, 0, False)
        assert report.files_per_s > 0 and report.errors == []
        assert lib.counts() == {"total": n, "ok": n, "error": 0, "pending": 0, "per_model": {report.model_id: n}}
        assert table_counts(lib) == {"images": n, "thumbnails": n, "embeddings": n, "regions": n}
        assert {p.phase for p in progress} == {"scan", "embed", "index"}
        embed = [p for p in progress if p.phase == "embed"]
        assert embed[-1].done == embed[-1].total == n and embed[-1].rate > 0 and embed[-1].failed == 0

        for key, path in files.items():
            rec = lib.image_by_path(path)
            assert rec is not None and rec.status == "ok" and rec.error is None
            assert rec.size == path.stat().st_size and rec.mtime_ns == path.stat().st_mtime_ns
            assert len(rec.content_hash) == 32
            thumb = Image.open(io.BytesIO(lib.thumbnail(rec.id)))
            assert thumb.format == "JPEG" and max(thumb.size) == 256
            source = small_photos[key if key != "motorcycle" else "motorcycle_left"]
            if key == "rocket":  # EXIF orientation 6: displayed rotated, so width and height swap
                assert (rec.width, rec.height) == (source.height, source.width) and rec.orientation == 6
                assert rec.captured_at == datetime(2021, 7, 14, 9, 30)
                assert thumb.height > thumb.width
            else:
                assert (rec.width, rec.height) == source.size and rec.orientation == 1
                assert abs(thumb.width / thumb.height - source.width / source.height) < 0.02
        assert {r.format for r in lib.images()} >= {"JPEG", "PNG", "WEBP"}

        ids, vectors = library_vectors(lib, report.model_id)
        assert len(ids) == n
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        regions = lib.regions(report.model_id, ids)
        assert regions.shape == (n, 20, 128) and regions.dtype == np.float16
        np.testing.assert_allclose(np.linalg.norm(regions.astype(np.float32), axis=-1), 1.0, atol=3e-3)
        index = vector_index(lib, report.model_id)
        assert index.kind == "flat" and index.count == n
        assert np.array_equal(index.search(np.asarray(vectors), 1)[1][:, 0], ids)
        assert_index_matches_db(lib, report.model_id)
        model_rec = lib.models()[0]
        assert (model_rec.dim, model_rec.patch_size, len(model_rec.checkpoint_hash)) == (128, 14, 64)


def test_a_second_run_changes_nothing(tmp_path: Path, small_photos) -> None:
    write_photos(tmp_path / "photos", small_photos)
    with Library.open("main") as lib:
        first = index_library(lib, model(), folders=[tmp_path / "photos"], precision="fp32")
        files = file_paths(lib, first.model_id)
        before = {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in files.items()}
        rows = lib.images()
        second = index_library(lib, model(), precision="fp32")
        assert (second.new, second.changed, second.moved, second.deleted, second.failed) == (0, 0, 0, 0, 0)
        assert second.unchanged == first.new and second.embedded == 0
        assert lib.images() == rows  # not even indexed_at moved
        assert {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in files.items()} == before
        assert len(lib.models()) == 1


def test_changed_moved_and_deleted_files(tmp_path: Path, small_photos) -> None:
    photos = tmp_path / "photos"
    files = write_photos(photos, small_photos)
    with Library.open("main") as lib:
        report = index_library(lib, model(), folders=[photos], precision="fp32")
        mid = report.model_id
        total = report.new

        # changed: new content at the same path -> same row, new hash, new vectors and thumbnail
        old = lib.image_by_path(files["coffee"])
        old_vec, old_thumb = embedding_blob(lib, old.id, mid), lib.thumbnail(old.id)
        small_photos["ihc"].save(files["coffee"], quality=95)
        report = index_library(lib, model(), precision="fp32")
        assert (report.changed, report.new, report.unchanged) == (1, 0, total - 1)
        new = lib.image_by_path(files["coffee"])
        assert new.id == old.id and new.content_hash != old.content_hash and new.size != old.size
        assert embedding_blob(lib, new.id, mid) != old_vec and lib.thumbnail(new.id) != old_thumb

        # touched only: the bytes are the same, so nothing is decoded again
        calls = []
        real = indexer_mod.make_thumbnail
        indexer_mod.make_thumbnail = lambda *a, **k: calls.append(1) or real(*a, **k)
        try:
            os.utime(files["chelsea"], ns=(time.time_ns(), time.time_ns() + 10**9))
            before = embedding_blob(lib, lib.image_by_path(files["chelsea"]).id, mid)
            report = index_library(lib, model(), precision="fp32")
        finally:
            indexer_mod.make_thumbnail = real
        assert report.changed == 1 and calls == []
        assert embedding_blob(lib, lib.image_by_path(files["chelsea"]).id, mid) == before
        assert lib.image_by_path(files["chelsea"]).mtime_ns == files["chelsea"].stat().st_mtime_ns

        # moved to another subfolder: same row id, vectors, thumbnail and labels; nothing recomputed
        moved_from = lib.image_by_path(files["astronaut"])
        blob, thumb = embedding_blob(lib, moved_from.id, mid), lib.thumbnail(moved_from.id)
        with lib.write_session.begin() as s:
            s.add(Label(image_id=moved_from.id, name="astronaut", source="user"))
        (photos / "elsewhere").mkdir()
        target = photos / "elsewhere" / "renamed.jpg"
        shutil.move(files["astronaut"], target)
        report = index_library(lib, model(), precision="fp32")
        assert (report.moved, report.new, report.deleted, report.changed) == (1, 0, 0, 0)
        moved_to = lib.image_by_path(target)
        assert moved_to.id == moved_from.id and lib.image_by_path(files["astronaut"]) is None
        assert embedding_blob(lib, moved_to.id, mid) == blob and lib.thumbnail(moved_to.id) == thumb
        with lib.session() as s:
            assert s.get(Label, (moved_to.id, "astronaut")) is not None
        assert vector_index(lib, mid).count == total

        # deleted: the row and everything derived from it go; the index shrinks
        gone = lib.image_by_path(files["rocket"])
        files["rocket"].unlink()
        report = index_library(lib, model(), precision="fp32")
        assert (report.deleted, report.new, report.moved) == (1, 0, 0)
        assert lib.image(gone.id) is None
        with lib.session() as s:
            assert s.get(Thumbnail, gone.id) is None and s.get(Region, (mid, gone.id)) is None
        assert vector_index(lib, mid).count == total - 1
        assert table_counts(lib) == dict.fromkeys(("images", "thumbnails", "embeddings", "regions"), total - 1)
        assert_index_matches_db(lib, mid)


def test_a_copy_is_new_when_its_original_is_still_there(tmp_path: Path, small_photos) -> None:
    photos = tmp_path / "photos"
    files = write_photos(photos, small_photos)
    with Library.open("main") as lib:
        index_library(lib, model(), folders=[photos], precision="fp32")
        shutil.copy2(files["coffee"], photos / "coffee_copy.jpg")
        shutil.move(files["chelsea"], photos / "chelsea_1.png")
        shutil.copy2(photos / "chelsea_1.png", photos / "chelsea_2.png")  # two copies of one missing file
        report = index_library(lib, model(), precision="fp32")
        assert (report.new, report.moved, report.deleted) == (2, 1, 0)
        a, b = lib.image_by_path(photos / "chelsea_1.png"), lib.image_by_path(photos / "chelsea_2.png")
        assert a.content_hash == b.content_hash and a.id != b.id


def test_a_second_model_reuses_the_thumbnails(tmp_path: Path, small_photos, monkeypatch) -> None:
    write_photos(tmp_path / "photos", small_photos)
    with Library.open("main") as lib:
        first = index_library(lib, model(), folders=[tmp_path / "photos"], precision="fp32")
        thumbs = {r.id: lib.thumbnail(r.id) for r in lib.images()}
        calls = []
        real = indexer_mod.make_thumbnail
        monkeypatch.setattr(indexer_mod, "make_thumbnail", lambda *a, **k: calls.append(1) or real(*a, **k))
        second = index_library(lib, model(seed=1), precision="fp32", model_name="other")
        assert second.model_id != first.model_id
        assert (second.new, second.changed, second.embedded) == (0, 0, first.new)
        assert calls == []  # decoded for the tensor, but no thumbnail made again
        assert {r.id: lib.thumbnail(r.id) for r in lib.images()} == thumbs
        assert lib.counts()["per_model"] == {first.model_id: first.new, second.model_id: first.new}
        assert [m.name for m in lib.models()] == ["DinoVisionTransformer", "other"]
        assert lib.model_by_source("other").id == second.model_id
        assert_index_matches_db(lib, first.model_id)
        assert_index_matches_db(lib, second.model_id)


def test_the_same_weights_in_another_file_format_are_the_same_model(tmp_path: Path, small_photos) -> None:
    from engine.models import load_backbone, save_backbone

    write_photos(tmp_path / "photos", small_photos)
    torch.save(model().state_dict(), tmp_path / "tiny.pth")
    save_backbone(model(), tmp_path / "tiny_dinoscope.pt")
    with Library.open("main") as lib:
        first = index_library(lib, str(tmp_path / "tiny.pth"), folders=[tmp_path / "photos"], precision="fp32")
        again = index_library(lib, load_backbone(tmp_path / "tiny_dinoscope.pt"), precision="fp32")
        assert again.model_id == first.model_id and again.embedded == 0
        assert len(lib.models()) == 1 and lib.models()[0].name == str(tmp_path / "tiny.pth")


def test_cancelling_commits_what_is_done_and_the_next_run_finishes(tmp_path: Path, small_photos) -> None:
    files = write_photos(tmp_path / "photos", small_photos)
    seen = []
    with Library.open("main") as lib:
        report = index_library(lib, model(), folders=[tmp_path / "photos"], precision="fp32", batch_size=2,
                               commit_every=100, progress=seen.append,
                               cancel=lambda: any(p.phase == "embed" and p.done >= 2 for p in seen))
        assert report.cancelled and report.deleted == 0
        done = lib.counts()["ok"]
        assert 2 <= done < len(files)
        assert_index_matches_db(lib, report.model_id)  # the index covers what was committed
        rest = index_library(lib, model(), precision="fp32")
        assert not rest.cancelled and rest.new == len(files) - done
        assert lib.counts()["ok"] == len(files)


# ---------------------------------------------------------------------------------------------------- CLI


def run_cli(*args: str, home: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, DINOSCOPE_HOME=str(home), TORCH_HOME=str(home / "torch"))
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_indexes_reports_the_broken_file_and_lists_it(tmp_path: Path, small_photos, dinoscope_home) -> None:
    photos = tmp_path / "photos"
    files = write_photos(photos, small_photos)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "readme.txt").write_text("skipped: not an image")
    torch.save(model().state_dict(), tmp_path / "tiny.pth")
    r = run_cli("index", str(photos), "--library", "cli", "--model", str(tmp_path / "tiny.pth"), "--batch", "2",
                home=dinoscope_home)
    assert r.returncode == 1, r.stderr  # partial: one file could not be read, the rest is indexed
    assert f"{len(files) + 1} new" in r.stdout and "1 failed" in r.stdout and "files/s" in r.stdout
    assert "broken.jpg" in r.stderr and "indexing" in r.stderr
    r = run_cli("index", "--errors", "--library", "cli", home=dinoscope_home)
    assert r.returncode == 0
    assert r.stdout.strip() == f"{photos / 'broken.jpg'}: the file is truncated (an incomplete copy or download?)"
    with Library.open("cli") as lib:
        assert lib.counts()["ok"] == len(files)
        assert [f.path for f in lib.folders()] == [str(photos.resolve())]


# --------------------------------------------------------------------------------------------- kill, resume


def ok_rows(db: Path) -> int:
    """Committed rows, read the way a second process would (read-only, beside the writer)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=0.1)
        try:
            return con.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0  # the schema is not there yet


def signal_when(cmd: list[str], env: dict, db: Path, at_least: int, sig: int) -> subprocess.CompletedProcess:
    """Start the indexer and send `sig` as soon as `at_least` rows are committed."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ok_rows(db) >= at_least:
                proc.send_signal(sig)
                break
            time.sleep(0.005)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_ctrl_c_then_sigkill_mid_run_then_a_rerun_leaves_a_complete_consistent_library(
    tmp_path: Path, small_photos, dinoscope_home: Path
) -> None:
    photos = tmp_path / "many"
    photos.mkdir()
    names = list(small_photos)
    for i in range(40):  # 40 distinct small images: crops of the photos at several sizes and qualities
        src = small_photos[names[i % len(names)]]
        w, h = src.size
        box = (i % 5 * 7, i // 5 * 5, w - i % 3 * 11, h - i % 4 * 9)
        src.crop(box).resize((160 + i * 3, 120 + i * 2)).save(photos / f"img_{i:02d}.jpg", quality=60 + i)
    torch.save(model().state_dict(), tmp_path / "tiny.pth")
    env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home), TORCH_HOME=str(dinoscope_home / "torch"))
    cmd = [sys.executable, "-m", "app", "index", str(photos), "--library", "L", "--model", str(tmp_path / "tiny.pth"),
           "--batch", "2", "--commit-every", "2", "--dtype", "fp32"]
    db = dinoscope_home / "libraries" / "L" / "library.db"

    # Ctrl-C: the run stops after the current batch, commits it, writes a matching index and exits 130
    r = signal_when(cmd, env, db, 2, signal.SIGINT)
    assert r.returncode == 130, r.stderr
    assert "stopping after the current batch" in r.stderr and "(cancelled)" in r.stdout
    after_ctrl_c = ok_rows(db)
    assert 2 <= after_ctrl_c < 40
    with Library.open("L") as lib:
        assert vector_index(lib, lib.models()[0].id).rebuilt is None  # the cancelled run left it consistent

    # SIGKILL: no chance to clean up at all
    r = signal_when(cmd, env, db, after_ctrl_c + 2, signal.SIGKILL)
    assert r.returncode == -signal.SIGKILL, "the indexer finished before it could be killed"
    con = sqlite3.connect(db)
    after_kill = con.execute("SELECT count(*) FROM images").fetchone()[0]
    con.close()
    assert after_ctrl_c + 2 <= after_kill < 40 and (after_kill - after_ctrl_c) % 2 == 0  # whole batches only

    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert f"{40 - after_kill} new" in r.stdout and "0 failed" in r.stdout

    with Library.open("L") as lib:
        rows = lib.images()
        assert sorted(Path(r.path).name for r in rows) == [f"img_{i:02d}.jpg" for i in range(40)]
        assert {r.status for r in rows} == {"ok"}
        assert table_counts(lib) == {"images": 40, "thumbnails": 40, "embeddings": 40, "regions": 40}
        con = sqlite3.connect(lib.db_path)
        per_image = con.execute("SELECT image_id, count(*) FROM embeddings GROUP BY image_id").fetchall()
        assert len(per_image) == 40 and {c for _, c in per_image} == {1}
        mid = lib.models()[0].id
        assert_index_matches_db(lib, mid)
        index = vector_index(lib, mid)
        assert index.rebuilt is None and index.count == 40
        ids, vectors = library_vectors(lib, mid)
        assert np.array_equal(index.search(np.asarray(vectors), 1)[1][:, 0], ids)
