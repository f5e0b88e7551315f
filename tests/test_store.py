"""The library store on real SQLite files and real FAISS indexes: schema versions, folders, queries, vector files,
region pooling and the folder walk. The indexing pipeline itself is in test_indexer.py, faults in
test_index_faults.py."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest

from engine.store import Library, LibraryVersionError, StoreError
from engine.store import database as database_mod
from engine.store import schema as schema_mod
from engine.store.regions import N_REGIONS, pool_regions, region_boxes
from engine.store.scan import FolderScan, FoundFile, KnownImage, compare, scan_folder
from engine.store.schema import SCHEMA_VERSION, Embedding, Folder, Image, Label, Model, Region, Thumbnail
from engine.store.vectors import VectorIndex, file_paths, ids_checksum, library_vectors, vector_index


def _db(lib: Library) -> sqlite3.Connection:
    return sqlite3.connect(lib.db_path)


def add_vectors(lib: Library, n: int, dim: int = 16, seed: int = 0, clusters: int = 0, name: str = "m"):
    """A model with n stored unit vectors (clustered ones when `clusters`), as the indexer would leave them."""
    rng = np.random.default_rng(seed)
    if clusters:
        centres = rng.standard_normal((clusters, dim))
        matrix = centres[rng.integers(0, clusters, n)] + 0.15 * rng.standard_normal((n, dim))
    else:
        matrix = rng.standard_normal((n, dim))
    matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    with lib.session.begin() as s:
        folder = s.query(Folder).filter_by(path=f"/photos-{name}").one_or_none()
        if folder is None:
            folder = Folder(path=f"/photos-{name}")
            s.add(folder)
            s.flush()
        images = [Image(folder_id=folder.id, path=f"/photos-{name}/{seed}-{i}.jpg", size=1, mtime_ns=1, status="ok")
                  for i in range(n)]
        s.add_all(images)
        model = Model(name=name, source=name, checkpoint_hash=f"{name}-{seed}-{n}", dim=dim, patch_size=14)
        s.add(model)
        s.flush()
        s.add_all(Embedding(model_id=model.id, image_id=img.id, vector=matrix[i].tobytes())
                  for i, img in enumerate(images))
        ids = np.array([img.id for img in images], np.int64)
        return model.id, ids, matrix


# ------------------------------------------------------------------------------------------------ schema


def test_a_new_library_is_wal_with_a_schema_version(dinoscope_home: Path) -> None:
    with Library.open("holidays") as lib:
        assert lib.root == dinoscope_home / "libraries" / "holidays"
        assert lib.db_path.is_file()
    con = sqlite3.connect(dinoscope_home / "libraries" / "holidays" / "library.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"folders", "images", "thumbnails", "models", "embeddings", "regions", "labels", "map_coords",
            "clusters", "meta"} <= tables
    assert Library.list_names() == ["holidays"]


def test_every_connection_enforces_foreign_keys(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        with lib.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        with pytest.raises(Exception, match="FOREIGN KEY"), lib.session.begin() as s:
            s.add(Image(folder_id=12345, path="/x.jpg", size=1, mtime_ns=1, status="ok"))


def test_a_database_from_a_newer_version_is_refused_and_left_untouched(dinoscope_home: Path) -> None:
    Library.open("future").close()
    db = dinoscope_home / "libraries" / "future" / "library.db"
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    before, mtime = db.read_bytes(), db.stat().st_mtime_ns
    with pytest.raises(LibraryVersionError) as err:
        Library.open("future")
    expected = f"newer Dinoscope (schema 999, this version reads up to {SCHEMA_VERSION}); upgrade Dinoscope"
    assert expected in str(err.value)
    assert db.read_bytes() == before and db.stat().st_mtime_ns == mtime


def test_migrations_run_in_order_from_an_older_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Library.open(tmp_path / "lib") as lib:
        lib.add_folder(tmp_path)
    calls = []

    def to_v2(conn) -> None:  # "v2" and "v3": the two versions after the current one
        calls.append(2)
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN rating INTEGER")

    def to_v3(conn) -> None:
        calls.append(3)
        conn.exec_driver_sql("CREATE TABLE albums (id INTEGER PRIMARY KEY, name TEXT)")

    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    monkeypatch.setitem(database_mod.MIGRATIONS, SCHEMA_VERSION + 1, to_v2)
    monkeypatch.setitem(database_mod.MIGRATIONS, SCHEMA_VERSION + 2, to_v3)
    with Library.open(tmp_path / "lib") as lib:
        assert [f.path for f in lib.folders()] == [str(tmp_path.resolve())]  # the data survived
    assert calls == [2, 3]
    con = sqlite3.connect(tmp_path / "lib" / "library.db")
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION + 2)
    assert "rating" in [r[1] for r in con.execute("PRAGMA table_info(images)")]
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'albums'").fetchone()[0] == 1


def test_a_failing_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Library.open(tmp_path / "lib").close()

    def broken(conn) -> None:
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN rating INTEGER")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(database_mod.MIGRATIONS, SCHEMA_VERSION + 1, broken)
    with pytest.raises(RuntimeError, match="migration bug"):
        Library.open(tmp_path / "lib")
    con = sqlite3.connect(tmp_path / "lib" / "library.db")
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert "rating" not in [r[1] for r in con.execute("PRAGMA table_info(images)")]


def test_foreign_or_damaged_databases_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    con = sqlite3.connect(other / "library.db")
    con.execute("CREATE TABLE notes (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a Dinoscope library"):
        Library.open(other)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "library.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="damaged or not SQLite"):
        Library.open(junk)


def test_names_paths_and_missing_libraries(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a valid library name"):
        Library.open("bad*name")
    with pytest.raises(StoreError, match="there is no library 'absent'"):
        Library.open("absent", create=False)
    with Library.open(tmp_path / "elsewhere") as lib:
        assert lib.name == "elsewhere" and (tmp_path / "elsewhere" / "library.db").is_file()
    assert Library.list_names() == []  # a library given by path is not in the user's list


# ----------------------------------------------------------------------------------------- folders, queries


def test_folders_nest_merge_and_remove(tmp_path: Path) -> None:
    (tmp_path / "photos" / "2020").mkdir(parents=True)
    (tmp_path / "photos" / "2021").mkdir()
    with Library.open(tmp_path / "lib") as lib:
        y2020 = lib.add_folder(tmp_path / "photos" / "2020")
        with lib.session.begin() as s:
            s.add(Image(folder_id=y2020.id, path=str(tmp_path / "photos/2020/a.jpg"), size=1, mtime_ns=1,
                        status="ok"))
        parent = lib.add_folder(tmp_path / "photos")  # absorbs 2020, whose image keeps its row
        assert [f.path for f in lib.folders()] == [str((tmp_path / "photos").resolve())]
        assert lib.folders()[0].images == 1
        assert lib.add_folder(tmp_path / "photos" / "2021").id == parent.id  # already covered
        assert lib.images()[0].folder_id == parent.id
        with pytest.raises(StoreError, match="does not exist"):
            lib.add_folder(tmp_path / "nope")
        with pytest.raises(StoreError, match="is not a folder of library"):
            lib.remove_folder(tmp_path / "photos" / "2021")
        assert lib.remove_folder(tmp_path / "photos") == 1
        assert lib.folders() == [] and lib.counts()["total"] == 0


def test_queries_return_plain_records(tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    with Library.open(tmp_path / "lib") as lib:
        folder = lib.add_folder(tmp_path)
        tz = timezone(timedelta(hours=2))
        with lib.session.begin() as s:
            s.add_all([
                Image(folder_id=folder.id, path="/p/b.jpg", size=10, mtime_ns=5, status="ok",
                      captured_at=datetime(2021, 5, 1, 12, 0, tzinfo=tz), width=4, height=3),
                Image(folder_id=folder.id, path="/p/a.jpg", size=10, mtime_ns=5, status="ok",
                      captured_at=datetime(2020, 1, 1, 8, 30)),
                Image(folder_id=folder.id, path="/p/c.jpg", size=0, mtime_ns=5, status="error",
                      error="the file is empty (0 bytes)"),
            ])
            s.flush()
            b = s.query(Image).filter_by(path="/p/b.jpg").one()
            s.add(Thumbnail(image_id=b.id, jpeg=b"\xff\xd8jpeg", width=4, height=3))
            s.add(Label(image_id=b.id, name="cat", source="user"))
        assert [r.path for r in lib.images()] == ["/p/a.jpg", "/p/b.jpg", "/p/c.jpg"]
        assert [r.path for r in lib.images(order_by="captured_at", status="ok")] == ["/p/a.jpg", "/p/b.jpg"]
        assert [r.path for r in lib.images(limit=1, offset=1)] == ["/p/b.jpg"]
        assert [r.path for r in lib.images(folder=str(tmp_path))] == ["/p/a.jpg", "/p/b.jpg", "/p/c.jpg"]
        for order in ("path", "id", "captured_at"):  # the grid's light query agrees with the full records
            assert lib.image_paths("ok", order) == [(r.id, r.path) for r in lib.images("ok", order_by=order)]
        assert [p for _, p in lib.image_paths(None)] == ["/p/a.jpg", "/p/b.jpg", "/p/c.jpg"]
        with pytest.raises(ValueError, match="order_by"):
            lib.image_paths(order_by="size")
        rec = lib.image_by_path("/p/b.jpg")
        assert rec is not None and rec.captured_at == datetime(2021, 5, 1, 12, 0, tzinfo=tz)  # offset kept
        assert lib.image(rec.id) == rec and lib.image(99999) is None
        assert lib.thumbnail(rec.id) == b"\xff\xd8jpeg" and lib.thumbnail(99999) is None
        assert lib.errors() == [("/p/c.jpg", "the file is empty (0 bytes)")]
        assert lib.counts() == {"total": 3, "ok": 2, "error": 1, "pending": 0, "per_model": {}}
        with pytest.raises(ValueError, match="order_by"):
            lib.images(order_by="size")


def test_grid_rows_keep_order_and_names_that_are_not_utf8(tmp_path: Path) -> None:
    """The grid's one-JSON-row read: every order agrees with the full records, and a Latin-1 file name (stored as
    a BLOB, which JSON cannot hold) comes back exactly, in its place."""
    import random
    from datetime import datetime

    odd = os.fsdecode(b"/p/m-caf\xe9.jpg")
    names = [f"/p/{c}-{n:03d}.jpg" for c in "kxa" for n in range(40)] + [odd, "/p/z 'quote\".jpg", "/p/n\u00e9.jpg"]
    random.Random(0).shuffle(names)
    with Library.open(tmp_path / "lib") as lib:
        folder = lib.add_folder(tmp_path)
        with lib.session.begin() as s:
            s.add_all([Image(folder_id=folder.id, path=p, size=1, mtime_ns=1, status="ok" if k % 7 else "error",
                             captured_at=datetime(2020, 1, 1 + k % 28) if k % 3 else None)
                       for k, p in enumerate(names)])
        for status in ("ok", None):
            for order in ("path", "id", "captured_at"):
                rows = lib.image_paths(status, order)
                assert rows == [(r.id, r.path) for r in lib.images(status, order_by=order)]
        assert odd in [p for _, p in lib.image_paths(None)]


def test_settings_are_validated_and_persist(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        assert lib.setting("ann_threshold") == 1_000_000 and lib.setting("ann_kind") == "ivf"
        lib.set_setting("ann_threshold", 5000)
        with pytest.raises(StoreError, match="'ivf' or 'hnsw'"):
            lib.set_setting("ann_kind", "lsh")
        with pytest.raises(StoreError, match="unknown library setting"):
            lib.set_setting("colour", 3)
    with Library.open(tmp_path / "lib") as lib:
        assert lib.setting("ann_threshold") == 5000


# --------------------------------------------------------------------------------------------------- vectors


def test_flat_index_is_exact_keyed_by_image_id_and_written_atomically(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        model_id, ids, matrix = add_vectors(lib, 300, dim=32)
        index = vector_index(lib, model_id)
        assert (index.kind, index.count, index.dim) == ("flat", 300, 32)
        assert index.rebuilt == "no index files yet"
        assert np.array_equal(index.ids(), np.sort(ids))
        scores, found = index.search(matrix[:5], 3)
        assert np.array_equal(found[:, 0], ids[:5])
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
        exact = matrix @ matrix[7]  # the search is exact: same top 10 as brute force
        assert list(index.search(matrix[7], 10)[1][0]) == list(ids[np.argsort(-exact)[:10]])
        scores, found = index.search(matrix[:1], 400)  # more than there are: padded
        assert (found[0, 300:] == -1).all() and np.isneginf(scores[0, 300:]).all()

        files = file_paths(lib, model_id)
        on_disk = np.fromfile(files["f32"], np.float32).reshape(300, 32)
        assert np.array_equal(on_disk, matrix[np.argsort(ids)])
        stamp = json.loads(files["stamp"].read_text())
        assert stamp["count"] == 300 and stamp["ids_checksum"] == ids_checksum(np.sort(ids))
        assert stamp["kind"] == "flat" and stamp["max_image_id"] == int(ids.max())
        raw = faiss.read_index(str(files["faiss"]))
        assert np.array_equal(faiss.vector_to_array(raw.id_map), np.sort(ids))
        assert not list(lib.vectors_dir.glob(".*.tmp"))

        mtimes = {k: p.stat().st_mtime_ns for k, p in files.items()}
        again = VectorIndex.open(lib, model_id)  # fresh files are loaded, not rebuilt
        assert again.rebuilt is None and np.array_equal(np.asarray(again.vectors()), on_disk)
        assert {k: p.stat().st_mtime_ns for k, p in files.items()} == mtimes
        got_ids, got = library_vectors(lib, model_id)
        assert np.array_equal(got_ids, np.sort(ids)) and got.shape == (300, 32)


@pytest.mark.parametrize("damage", ["row deleted", "vector changed", "faiss truncated", "stamp missing", "f32 gone"])
def test_stale_or_damaged_files_are_rebuilt_from_the_database(tmp_path: Path, damage: str) -> None:
    with Library.open(tmp_path / "lib") as lib:
        model_id, ids, matrix = add_vectors(lib, 50)
        VectorIndex.open(lib, model_id)
        files = file_paths(lib, model_id)
        expected_count = 50
        if damage == "row deleted":
            with lib.session.begin() as s:
                s.query(Image).filter(Image.id == int(ids[3])).delete()
            expected_count = 49
        elif damage == "vector changed":  # same ids, new content: only the revision tells
            new = -matrix[0]
            with lib.session.begin() as s:
                s.query(Embedding).filter_by(image_id=int(ids[0])).update({"vector": new.tobytes()})
        elif damage == "faiss truncated":
            files["faiss"].write_bytes(files["faiss"].read_bytes()[:100])
        elif damage == "stamp missing":
            files["stamp"].unlink()
        else:
            files["f32"].unlink()
        index = VectorIndex.open(lib, model_id)
        assert index.rebuilt is not None and index.count == expected_count
        if damage == "vector changed":
            assert "revision" in index.rebuilt
            assert index.search(-matrix[0], 1)[1][0, 0] == ids[0]
        assert VectorIndex.open(lib, model_id).rebuilt is None  # the rebuilt files are good


def test_past_the_threshold_an_approximate_index_is_built(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        model_id, ids, matrix = add_vectors(lib, 2000, dim=32, clusters=20)
        lib.set_setting("ann_threshold", 1000)
        index = vector_index(lib, model_id)
        assert index.kind == "ivf"
        exact = matrix @ matrix[:50].T
        truth = ids[np.argsort(-exact, axis=0)[:10].T]  # (50, 10)
        found = index.search(matrix[:50], 10)[1]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
        assert recall > 0.9
        lib.set_setting("ann_kind", "hnsw")
        index = VectorIndex.open(lib, model_id)
        assert index.kind == "hnsw" and "kind" in (index.rebuilt or "")
        assert faiss.downcast_index(index._index.index).hnsw.efSearch == 64
        found = index.search(matrix[:50], 10)[1]
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]) > 0.9
        lib.set_setting("ann_threshold", 5000)
        assert VectorIndex.open(lib, model_id).kind == "flat"


def test_a_reader_rebuilds_in_memory_while_another_holds_the_lock(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib, Library.open(tmp_path / "lib") as indexer:
        model_id, _, _ = add_vectors(lib, 20)
        with indexer.lock("index"):  # a second open file: flock conflicts just as between processes
            index = VectorIndex.open(lib, model_id)
            assert index.count == 20 and index.rebuilt == "no index files yet"
            assert not file_paths(lib, model_id)["stamp"].exists()  # nothing written without the lock
        assert VectorIndex.open(lib, model_id).rebuilt is not None  # now it writes
        assert file_paths(lib, model_id)["stamp"].exists()


def test_an_empty_model_searches_to_nothing(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        model_id, _, _ = add_vectors(lib, 0)
        index = vector_index(lib, model_id)
        scores, ids = index.search(np.ones((2, 16), np.float32), 4)
        assert index.count == 0 and (ids == -1).all() and np.isneginf(scores).all()
        with pytest.raises(ValueError, match=r"queries must be \(n, 16\)"):
            index.search(np.ones((1, 8), np.float32), 1)


def test_regions_round_trip_through_the_library(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        model_id, ids, _ = add_vectors(lib, 3, dim=8)
        regions = pool_regions(np.random.default_rng(1).standard_normal((3, 256, 8)).astype(np.float16))
        with lib.session.begin() as s:
            s.add_all(Region(model_id=model_id, image_id=int(i), data=r.tobytes())
                      for i, r in zip(ids, regions, strict=True))
        got = lib.regions(model_id, [ids[2], ids[0]])
        assert got.dtype == np.float16 and got.shape == (2, N_REGIONS, 8)
        assert np.array_equal(got, regions[[2, 0]])
        with pytest.raises(KeyError, match="no region vectors"):
            lib.regions(model_id, [123456])
        with lib.session.begin() as s:  # regions go with their embedding
            s.query(Embedding).filter_by(image_id=int(ids[0])).delete()
        with pytest.raises(KeyError):
            lib.regions(model_id, [ids[0]])


# --------------------------------------------------------------------------------------------------- regions


def test_regions_are_normalised_grid_means() -> None:
    rng = np.random.default_rng(0)
    patch = rng.standard_normal((2, 16 * 16, 6)).astype(np.float32)
    out = pool_regions(patch)
    assert out.shape == (2, 20, 6) and out.dtype == np.float16
    grid = patch.reshape(2, 16, 16, 6)
    top_left_2x2 = grid[:, :8, :8].mean(axis=(1, 2))
    bottom_right_4x4 = grid[:, 12:, 12:].mean(axis=(1, 2))
    norm = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    np.testing.assert_allclose(out[:, 0], norm(top_left_2x2), atol=2e-3)
    np.testing.assert_allclose(out[:, 19], norm(bottom_right_4x4), atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float32), axis=-1), 1.0, atol=2e-3)
    assert pool_regions(np.zeros((1, 196, 4))).shape == (1, 20, 4)  # 14x14 grid (patch size 16), zeros stay 0
    assert not np.isnan(pool_regions(np.zeros((1, 196, 4)))).any()
    boxes = region_boxes()
    assert boxes.shape == (20, 4) and tuple(boxes[0]) == (0, 0, 0.5, 0.5) and tuple(boxes[-1]) == (0.75,) * 2 + (1, 1)
    with pytest.raises(ValueError, match="too small"):
        pool_regions(np.zeros((1, 9, 4)))


# ------------------------------------------------------------------------------------------------------ scan


def test_the_walk_skips_hidden_and_non_images_and_lists_each_file_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    for rel in ["a.jpg", "sub/b.PNG", "notes.txt", ".hidden.jpg", ".hidden_dir/c.jpg", "d.webp"]:
        (root / rel).write_bytes(b"x" * 10)
    os.symlink(root / "a.jpg", root / "sub" / "a_link.jpg")  # same file twice: listed once, by its real path
    os.symlink(root / "sub", root / "sub_link")  # a folder reachable twice: walked once, under its real path
    scan = scan_folder(str(root))
    rel = [os.path.relpath(f.path, root) for f in scan.files]
    assert rel == ["a.jpg", "d.webp", "sub/b.PNG"]
    assert scan.exists and scan.unreadable == []
    assert not scan_folder(str(tmp_path / "absent")).exists


def test_compare_sorts_files_and_protects_what_it_could_not_see(tmp_path: Path) -> None:
    def known(i, path, size=1, status="ok", emb=True, folder=1):
        return KnownImage(i, path, folder, size, 1, f"h{i}", status, emb)

    scan = FolderScan("/r", True, [
        FoundFile("/r/new.jpg", 1, 1),
        FoundFile("/r/same.jpg", 1, 1),
        FoundFile("/r/grown.jpg", 2, 1),
        FoundFile("/r/other_model.jpg", 1, 1),
        FoundFile("/r/broken.jpg", 1, 1),
    ], unreadable=[("/r/locked", "permission denied")])
    rows = [known(1, "/r/same.jpg"), known(2, "/r/grown.jpg"), known(3, "/r/other_model.jpg", emb=False),
            known(4, "/r/broken.jpg", status="error", emb=False), known(5, "/r/gone.jpg"),
            known(6, "/r/locked/hidden.jpg"), known(7, "/gone_root/x.jpg", folder=2), known(8, "/r/locked2.jpg")]
    plan = compare([(scan, 1), (FolderScan("/gone_root", False), 2)], rows)
    assert [f.path for f, _ in plan.new] == ["/r/new.jpg"]
    assert [r.id for _, r in plan.changed] == [2]
    assert [r.id for _, r in plan.embed] == [3]
    assert plan.unchanged == 2  # same.jpg, and broken.jpg which stays an error until it changes
    assert sorted(r.id for r in plan.missing) == [5, 8]
    assert plan.protected == 2  # under the unreadable folder, and in the missing source folder


def test_few_queries_search_with_blas_and_match_faiss_exactly() -> None:
    """The flat index answers a few queries with one BLAS product over the in-memory vectors (all cores): the
    same ids and scores as FAISS's flat scan, exact ties in row order, and the same padding when k exceeds the
    library."""
    import faiss

    from engine.store.vectors import _exact_search

    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 64)).astype(np.float32)
    x[100] = x[7]  # exact duplicates tie: the lower row first (FAISS's own tie order is its heap's)
    x[300] = x[7]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.permutation(10_000)[:500].astype(np.int64)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(64))
    index.add_with_ids(x, ids)
    q = np.concatenate([x[7:8], rng.standard_normal((5, 64)).astype(np.float32)])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for k in (1, 3, 20, 500):
        want_s, want_i = index.search(q, k)
        got_s, got_i = _exact_search(x, ids, q, k)
        np.testing.assert_allclose(got_s, want_s, atol=1e-5)
        assert [set(r) for r in got_i.tolist()] == [set(r) for r in want_i.tolist()], k
        if k <= 20:  # no ties at the top of random rows: the very same order (the far tail has float near-ties)
            assert np.array_equal(got_i[1:], want_i[1:]), k
    assert list(_exact_search(x, ids, q[:1], 3)[1][0]) == [ids[7], ids[100], ids[300]]
    got_s, got_i = _exact_search(x, ids, q[:2], 600)  # more than the library holds
    assert (got_i[:, 500:] == -1).all() and np.isneginf(got_s[:, 500:]).all()
    assert sorted(got_i[0, :500].tolist()) == sorted(ids.tolist())
