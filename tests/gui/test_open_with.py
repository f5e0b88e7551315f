""""Open with Dinoscope" on a photo, through the entry point the desktop entry runs (`dinoscope %F`, which is
`python -m app PHOTO`): on a first start with a fresh data folder the window opens, indexes the bundled sample
library with the bundled demo model, and only then shows the results for the photo, with no "No library" dialog."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_open_with_a_photo_on_a_first_start_shows_its_results(tmp_path: Path) -> None:
    original = ROOT / "assets" / "sample" / "nature" / "dandelion-seeds.jpg"
    photo = tmp_path / "Downloads" / "seeds from a friend.jpg"  # a re-encoded copy, outside the library
    photo.parent.mkdir()
    Image.open(original).save(photo, quality=80)
    home = tmp_path / "home"
    env = {**os.environ, "DINOSCOPE_HOME": str(home), "QT_QPA_PLATFORM": "offscreen",
           "DINOSCOPE_ZOO_URL": "http://127.0.0.1:9"}  # offline: the bundled demo model is the one at hand
    proc = subprocess.Popen([sys.executable, "-m", "app", str(photo)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = home / "logs" / "dinoscope.log"
    text = ""
    try:
        deadline = time.monotonic() + 240  # ~20 s on a quiet 2-core machine
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "search: " in text:
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            out = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert "search: " in text, f"no search ran; log:\n{text}\noutput:\n{out}"
    line = next(ln for ln in text.splitlines() if "search: " in ln)
    # the copy finds the sample photo it was made from, wherever the sample library lives
    assert "results for 1 query" in line and line.rstrip().endswith("dandelion-seeds.jpg"), line
    assert "No library" not in text and " ERROR " not in text, text
