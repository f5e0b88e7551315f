"""`python -m app index ... --watch` as a real subprocess: it follows the folder, Ctrl+C exits 130 keeping what was
done, other commands read the library meanwhile, and a watcher killed with SIGKILL mid-burst leaves a library that
the next `index` completes without indexing anything twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.test_indexer import model
from tests.test_watch import PHOTOS, rows, small_copy, wait_for

ROOT = Path(__file__).resolve().parents[1]


def start(photos: Path, ckpt: Path, home: Path) -> subprocess.Popen:
    env = dict(os.environ, DINOSCOPE_HOME=str(home), TORCH_HOME=str(home / "torch"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "app", "index", str(photos), "--library", "watched", "--model", str(ckpt),
           "--device", "cpu", "--workers", "1", "--watch", "--quiet-s", "0.3", "--commit-every", "4"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_watching(proc: subprocess.Popen) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("watching "):
            return "".join(seen)
    raise AssertionError(f"the watcher never started: {''.join(seen)} {proc.stderr.read()}")


def test_watch_follows_the_folder_and_ctrl_c_exits_130(tmp_path: Path, dinoscope_home: Path) -> None:
    photos = tmp_path / "photos"
    small_copy(PHOTOS[0], photos / "first.jpg")
    ckpt = tmp_path / "tiny.pth"
    torch.save(model().state_dict(), ckpt)
    proc = start(photos, ckpt, dinoscope_home)
    try:
        head = wait_watching(proc)
        assert "1 new" in head
        db = dinoscope_home / "libraries" / "watched" / "library.db"
        small_copy(PHOTOS[1], photos / "second.jpg")
        wait_for(lambda: rows(db).get(str(photos / "second.jpg"), (0, "", "", 0))[3] == 1, "the new photo")
        env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home))
        r = subprocess.run([sys.executable, "-m", "app", "dedup", "--library", "watched", "--json"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)  # a reader beside the watcher
        assert r.returncode == 0, r.stderr
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "1 new" in out  # the batch line for second.jpg
    assert "stopped watching" in err
    assert set(rows(db)) == {str(photos / "first.jpg"), str(photos / "second.jpg")}


def test_a_watcher_killed_mid_burst_is_completed_by_the_next_index(tmp_path: Path, dinoscope_home: Path) -> None:
    photos = tmp_path / "photos"
    small_copy(PHOTOS[0], photos / "first.jpg")
    ckpt = tmp_path / "tiny.pth"
    torch.save(model().state_dict(), ckpt)
    proc = start(photos, ckpt, dinoscope_home)
    db = dinoscope_home / "libraries" / "watched" / "library.db"
    try:
        wait_watching(proc)
        burst = [small_copy(PHOTOS[i % len(PHOTOS)], photos / "burst" / f"IMG_{i:03d}.jpg", side=96 + i)
                 for i in range(40)]
        wait_for(lambda: len(rows(db)) > 1, "the burst starts to land")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home))
    r = subprocess.run([sys.executable, "-m", "app", "index", "--library", "watched", "--model", str(ckpt),
                        "--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    final = rows(db)
    assert set(final) == {str(photos / "first.jpg"), *map(str, burst)}
    assert all(v[1] == "ok" and v[3] == 1 for v in final.values())
    assert len({v[0] for v in final.values()}) == 41
