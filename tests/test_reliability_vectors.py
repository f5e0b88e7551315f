"""Vector files that belong to another model or another library are never used (issue 15.1), and the temporary
files of a killed vector write are cleaned when the library is next used (15.7)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.search import search_by_vectors
from engine.store import Library, index_library
from engine.store.vectors import file_paths, library_vectors, vector_index
from tests.test_indexer import load_small_photos, model, write_photos


@pytest.fixture(scope="module")
def small_photos(skimage_data_dir: Path) -> dict[str, Image.Image]:
    return load_small_photos(skimage_data_dir)


def db_vectors(lib: Library, model_id: int) -> dict[int, np.ndarray]:
    con = sqlite3.connect(lib.db_path)
    try:
        rows = con.execute("SELECT image_id, vector FROM embeddings WHERE model_id = ?", (model_id,)).fetchall()
    finally:
        con.close()
    return {i: np.frombuffer(v, np.float32) for i, v in rows}


def assert_every_photo_finds_itself(lib: Library, model_id: int) -> None:
    stored = db_vectors(lib, model_id)
    assert stored
    for image_id, vector in stored.items():
        top = search_by_vectors(lib, model_id, vector[None, :], k=1)[0]
        assert top.image_id == image_id and top.score == pytest.approx(1.0, abs=1e-4)
    ids, vectors = library_vectors(lib, model_id)
    assert np.array_equal(vectors, np.stack([stored[int(i)] for i in ids]))


def test_a_recreated_database_never_takes_the_old_models_vector_files(tmp_path: Path, small_photos) -> None:
    src = tmp_path / "photos"
    write_photos(src, small_photos)
    with Library.open("A") as lib:
        first = index_library(lib, model(seed=0), folders=[src], precision="fp32")
        old_stamp = file_paths(lib, first.model_id)["stamp"].read_text()
    root = lib.root
    for f in root.glob("library.db*"):  # the user deletes the database and keeps vectors/
        f.unlink()
    assert (root / "vectors").is_dir()
    with Library.open("A") as lib:
        # Same photos, same ids, same revision, same width: only the weights (and the library) differ.
        second = index_library(lib, model(seed=1), folders=[src], precision="fp32")
        assert second.model_id == first.model_id and second.index_error is None
        assert file_paths(lib, second.model_id)["stamp"].read_text() != old_stamp
        assert_every_photo_finds_itself(lib, second.model_id)


def test_another_librarys_vector_files_are_rebuilt(tmp_path: Path, small_photos) -> None:
    src_a, src_b = tmp_path / "a", tmp_path / "b"
    write_photos(src_a, small_photos)
    write_photos(src_b, {k: v.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for k, v in small_photos.items()})
    m = model(seed=0)
    with Library.open("A") as a, Library.open("B") as b:
        ra = index_library(a, m, folders=[src_a], precision="fp32")
        index_library(b, m, folders=[src_b], precision="fp32")
        a_root, b_root = a.root, b.root
    shutil.rmtree(a_root / "vectors")
    shutil.copytree(b_root / "vectors", a_root / "vectors")  # B's files, same model, same ids and revision
    with Library.open("A") as a:
        index = vector_index(a, ra.model_id)
        assert index.rebuilt is not None and "library_id" in index.rebuilt
        assert_every_photo_finds_itself(a, ra.model_id)
    with Library.open("A") as a:  # the rebuilt files are A's now and are used as they are
        assert vector_index(a, ra.model_id).rebuilt is None


def test_temp_files_of_a_killed_vector_write_are_removed_at_the_next_use(tmp_path: Path, small_photos) -> None:
    src = tmp_path / "photos"
    write_photos(src, small_photos)
    with Library.open("A") as lib:
        report = index_library(lib, model(), folders=[src], precision="fp32")
        vectors_dir = lib.vectors_dir
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    left = vectors_dir / f".model_{report.model_id}.f32.{dead_pid}.tmp"
    left.write_bytes(b"\0" * 100_000)  # what a writer killed mid-write leaves
    running = vectors_dir / f".model_{report.model_id}.faiss.1.tmp"  # pid 1 runs: a writer still at work
    running.write_bytes(b"\0" * 10)
    with Library.open("A") as lib:
        assert vector_index(lib, report.model_id).rebuilt is None  # the index itself is current
    assert not left.exists()
    assert running.exists()
