"""Moves and copies never overwrite a photo, even when two processes move same-named files into one folder at once,
and a killed move across disks never leaves a truncated photo under a real name (issue 15.4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.photo_files import PartialMoveError, copy_files, move_files
from tests.test_indexer import ROOT

PER_PROCESS = 300

MOVER = """
import sys, time
from pathlib import Path
from engine.photo_files import move_files
src, dest, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
paths = sorted(src.glob("*/IMG_0001.jpg"))
while not go.exists():
    time.sleep(0.001)
move_files(paths, dest)
"""


def test_two_processes_moving_same_named_photos_into_one_folder_lose_none(tmp_path: Path) -> None:
    dest, go = tmp_path / "dest", tmp_path / "go"
    expected = set()
    for who in ("a", "b"):
        for i in range(PER_PROCESS):
            folder = tmp_path / who / f"{i:03d}"
            folder.mkdir(parents=True)
            payload = f"photo {who}{i}".encode()
            (folder / "IMG_0001.jpg").write_bytes(payload)
            expected.add(payload)
    dest.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", MOVER, str(tmp_path / who), str(dest), str(go)], env=env,
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    time.sleep(1.0)  # both have imported and wait on the same start signal
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    landed = list(dest.iterdir())
    assert len(landed) == 2 * PER_PROCESS
    assert {f.read_bytes() for f in landed} == expected  # every photo is there, none overwritten
    assert not list((tmp_path / "a").glob("*/*")) and not list((tmp_path / "b").glob("*/*"))


def other_disk() -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != Path(__file__).stat().st_dev:
        return shm
    return None


@pytest.fixture
def shm_dir(tmp_path: Path):
    base = other_disk()
    if base is None or tmp_path.stat().st_dev == base.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the temporary folder")
    folder = base / f"dinoscope-test-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    yield folder
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()


def test_a_move_across_disks_lands_complete_and_never_overwrites(tmp_path: Path, shm_dir: Path) -> None:
    (shm_dir / "IMG.jpg").write_bytes(b"from the card")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "IMG.jpg").write_bytes(b"already here")
    [(old, new)] = move_files([shm_dir / "IMG.jpg"], dest)
    assert new == dest / "IMG (2).jpg" and new.read_bytes() == b"from the card"
    assert (dest / "IMG.jpg").read_bytes() == b"already here" and not old.exists()
    assert sorted(p.name for p in dest.iterdir()) == ["IMG (2).jpg", "IMG.jpg"]  # no temporary file left


KILLED_MOVER = """
import sys
from engine.photo_files import move_files
move_files([sys.argv[1]], sys.argv[2])
"""


def test_a_move_across_disks_killed_midway_leaves_no_truncated_photo(tmp_path: Path, shm_dir: Path) -> None:
    source = shm_dir / "big.tif"
    data = os.urandom(1 << 20) * 300  # 300 MB: the copy takes long enough to be caught in the middle
    source.write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_MOVER), str(source), str(dest)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        started = [f for f in dest.iterdir() if f.stat().st_size > 0]
        if started:  # the copy is under way, whatever name it is written to
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    visible = [f for f in dest.iterdir() if not f.name.startswith(".")]
    for f in visible:
        assert f.stat().st_size == len(data)  # under a real name only ever the whole photo
    if not visible:
        assert source.read_bytes() == data  # the move did not finish: the original is untouched
    del data


def test_a_failure_after_some_files_reports_the_ones_already_moved(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (src / name).write_bytes(name.encode())
    with pytest.raises(PartialMoveError) as caught:
        move_files([src / "a.jpg", src / "gone.jpg", src / "b.jpg"], tmp_path / "dest")
    assert caught.value.done == [(src / "a.jpg", tmp_path / "dest" / "a.jpg")]
    assert "gone.jpg" in str(caught.value) and "1 file(s) already done" in str(caught.value)
    assert (src / "b.jpg").exists()
    copied = copy_files([src / "b.jpg", src / "b.jpg"], tmp_path / "dest")
    assert [p.name for p in copied] == ["b.jpg", "b (2).jpg"]


def test_the_duplicates_panel_reports_the_photos_moved_before_a_failure(qtbot, tmp_path: Path,
                                                                        skimage_data_dir: Path) -> None:
    import torch
    from PIL import Image
    from PySide6.QtCore import QSettings

    from app.gui.main_window import MainWindow
    from engine.store import Library
    from engine.store.indexer import index_library
    from tests.test_indexer import model

    ckpt = tmp_path / "tiny.pth"
    torch.save(model().state_dict(), ckpt)
    photos = tmp_path / "photos"
    photos.mkdir()
    cat = Image.open(skimage_data_dir / "chelsea.png").convert("RGB")
    cat.save(photos / "cat.jpg", quality=95)
    cat.save(photos / "cat-copy.jpg", quality=90)  # three copies of one photo: the keeper and two others
    cat.save(photos / "cat-copy2.jpg", quality=85)
    with Library.open("family") as lib:
        index_library(lib, str(ckpt), folders=[str(photos)], device="cpu")

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("library/name", "family")
    settings.setValue("model/source", str(ckpt))
    win = MainWindow(settings=settings, first_start_sample=False)
    qtbot.addWidget(win)
    panel = win.duplicates_panel
    task = panel.find()
    qtbot.waitUntil(lambda: task.outcome is not None, timeout=60000)
    qtbot.waitUntil(lambda: "groups;" in panel.summary.text(), timeout=5000)
    group = next(g for g in panel.groups if len(g.image_ids) == 3)
    panel.group_list.setCurrentRow(panel.groups.index(group))
    first, second = panel.others_in_current_group()
    Path(second).unlink()  # gone before the move reaches it (another program moved it away)

    errors: list[tuple[str, str]] = []
    panel.error.disconnect()  # the window would show the message in a modal box; read it here instead
    panel.error.connect(lambda title, text: errors.append((title, text)))
    with qtbot.waitSignal(panel.files_moved, timeout=10000) as moved:
        assert panel.move_others(str(tmp_path / "moved"), confirm=False) == 1
    assert moved.args == [1]
    (title, text), = errors
    assert title == "Could not move every photo"
    assert "1 of 2 photos were moved" in text and Path(first).name in text and Path(second).name in text
    assert (tmp_path / "moved" / Path(first).name).is_file()
