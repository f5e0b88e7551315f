"""Damaged, incomplete and read-only libraries (issue 15.6): each case is one clear line naming the library file
and exit 2, nothing is changed, and a read-only library stays searchable."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.models import save_backbone
from engine.store import Library
from tests.test_indexer import ROOT, load_small_photos, model, run_cli, write_photos


@pytest.fixture(scope="module")
def small_photos(skimage_data_dir: Path) -> dict[str, Image.Image]:
    return load_small_photos(skimage_data_dir)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, small_photos) -> tuple[Path, Path, Path]:
    """(library folder, photos folder, weights) of a library indexed once by the CLI, to be copied per test."""
    base = tmp_path_factory.mktemp("indexed")
    src = base / "photos"
    write_photos(src, small_photos)
    weights = base / "tiny.pt"
    save_backbone(model(), weights)
    home = base / "home"
    r = run_cli("index", str(src), "--library", str(base / "lib"), "--model", str(weights), home=home)
    assert r.returncode == 0, r.stderr
    return base / "lib", src, weights


def library_copy(indexed, tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    shutil.copytree(indexed[0], lib)
    return lib


def assert_one_clear_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    for word in words:
        assert word in errors[0], r.stderr


def library_commands(lib: Path, src: Path, out: Path) -> dict[str, list[str]]:
    return {
        "search": ["search", str(src / "coffee_q95.jpg"), "--library", str(lib)],
        "dedup": ["dedup", "--library", str(lib)],
        "cluster": ["cluster", "--library", str(lib), "--k", "2"],
        "map": ["map", "--library", str(lib), "--out", str(out / "map.png")],
        "index": ["index", "--library", str(lib), "--model", "unused.pt"],
    }


def thumbnail_pages(db: Path) -> tuple[int, list[int]]:
    con = sqlite3.connect(db)
    try:
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'thumbnails'").fetchone()[0]
        pages = [p for (p,) in con.execute("SELECT pageno FROM dbstat WHERE name = 'thumbnails'") if p != root]
    finally:
        con.close()
    return page_size, pages


@pytest.mark.parametrize("where", ["middle", "thumbnails"])
def test_garbage_inside_the_database_is_caught_when_it_opens(indexed, tmp_path: Path, dinoscope_home,
                                                             where: str) -> None:
    lib = library_copy(indexed, tmp_path)
    db = lib / "library.db"
    size = db.stat().st_size
    with open(db, "r+b") as f:
        if where == "middle":  # 200 KB of garbage inside the file, past its header page
            f.seek(size // 4)
            f.write(os.urandom(min(200_000, size // 2)))
        else:  # garbage only where searching never reads (the thumbnails): only a consistency check can tell
            page_size, pages = thumbnail_pages(db)
            assert pages
            for page in pages:
                f.seek((page - 1) * page_size)
                f.write(os.urandom(page_size))
    damaged = db.read_bytes()
    for name, args in library_commands(lib, indexed[1], tmp_path).items():
        r = run_cli(*args, home=dinoscope_home)
        assert_one_clear_line(r, str(db), "is damaged")
        assert db.read_bytes() == damaged, f"{name} changed the damaged file"
    r = run_cli("index", "--check", "--library", str(lib), home=dinoscope_home)
    assert r.returncode == 2 and "damaged:" in r.stdout and "is damaged" in r.stderr
    assert not (tmp_path / "map.png").exists()


def test_index_check_passes_an_intact_library(indexed, tmp_path: Path, dinoscope_home) -> None:
    lib = library_copy(indexed, tmp_path)
    r = run_cli("index", "--check", "--library", str(lib), home=dinoscope_home)
    assert r.returncode == 0 and "intact" in r.stdout, r.stderr


def test_a_dropped_table_is_named(indexed, tmp_path: Path, dinoscope_home) -> None:
    lib = library_copy(indexed, tmp_path)
    con = sqlite3.connect(lib / "library.db")
    con.executescript("PRAGMA foreign_keys=OFF; DROP TABLE regions; DROP TABLE embeddings;")
    con.close()
    for args in library_commands(lib, indexed[1], tmp_path).values():
        r = run_cli(*args, home=dinoscope_home)
        assert_one_clear_line(r, str(lib / "library.db"), "the tables embeddings, regions are missing")


def test_vectors_as_a_file_is_named(indexed, tmp_path: Path, dinoscope_home) -> None:
    lib = library_copy(indexed, tmp_path)
    shutil.rmtree(lib / "vectors")
    (lib / "vectors").write_text("not a folder")
    r = run_cli(*library_commands(lib, indexed[1], tmp_path)["search"], home=dinoscope_home)
    assert_one_clear_line(r, str(lib / "vectors"), "is a file")
    assert (lib / "vectors").read_text() == "not a folder"


def chattr(flag: str, *paths: Path) -> bool:
    try:
        r = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True)
    except FileNotFoundError:
        return False
    return r.returncode == 0


def test_a_read_only_library_is_searchable_and_refuses_changes_clearly(indexed, tmp_path: Path,
                                                                        dinoscope_home) -> None:
    lib = library_copy(indexed, tmp_path)
    src = indexed[1]
    if os.geteuid() != 0:
        for p in [*lib.rglob("*"), lib]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        frozen = []
    else:  # root ignores permissions: make the files immutable, as `chattr +i` or a read-only mount would
        frozen = [*lib.rglob("*"), lib]
        if not chattr("+i", *frozen):
            pytest.skip("chattr +i is not available here")
    try:
        before = {p: p.read_bytes() for p in lib.rglob("*") if p.is_file()}
        r = run_cli("search", str(src / "coffee_q95.jpg"), "--library", str(lib), "--k", "1", home=dinoscope_home)
        assert r.returncode == 0, r.stderr
        assert str(src) in r.stdout.splitlines()[1]  # a result, from the photos the library holds
        r = run_cli("dedup", "--library", str(lib), home=dinoscope_home)
        assert r.returncode == 0, r.stderr
        for name in ("cluster", "map", "index"):
            args = library_commands(lib, src, tmp_path)[name]
            if name == "index":
                args = ["index", str(src), "--library", str(lib), "--model", str(indexed[2])]
            r = run_cli(*args, home=dinoscope_home)
            assert_one_clear_line(r, "read-only")
        assert {p: p.read_bytes() for p in lib.rglob("*") if p.is_file()} == before
    finally:
        if frozen:
            chattr("-i", *frozen)
        for p in [*lib.rglob("*"), lib]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_full_disk_while_creating_a_library_is_one_line(indexed, tmp_path: Path, dinoscope_home) -> None:
    def small_files() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))

    env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-m", "app", "index", str(indexed[1]), "--library", str(tmp_path / "new"),
                        "--model", str(indexed[2])], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300, preexec_fn=small_files)
    assert_one_clear_line(r, str(tmp_path / "new" / "library.db"))
    assert not (tmp_path / "new" / "library.db").exists()
    with Library.open(tmp_path / "new") as lib:  # with space again, the library is made as if nothing happened
        assert lib.counts()["total"] == 0
