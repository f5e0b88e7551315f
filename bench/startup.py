"""Start-up: seconds from process start to the first painted main window, in fresh processes.

Each run starts a new Python process (cold imports, as a user's double-click does), opens the window on a
library of the bundled sample photos (or an empty one), and reports when the first paint event reaches the
window, measured from the process's own creation time. Also reports whether torch was already imported by then
(it should not be: heavy imports are deferred). Offscreen platform unless DISPLAY is set.

    python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, save_json, table

PROBE = r"""
import os, sys, time, json
import psutil
born = psutil.Process().create_time()
from PySide6.QtCore import QEvent, QObject, QSettings, QTimer
from PySide6.QtWidgets import QApplication
app = QApplication(sys.argv[:1])
from app.gui.main_window import MainWindow

class FirstPaint(QObject):
    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.Type.Paint and not hasattr(self, "t"):
            self.t = time.time() - born
            self.torch = "torch" in sys.modules
            QTimer.singleShot(0, app.quit)
        return False

settings = QSettings(os.path.join(os.environ["DINOSCOPE_HOME"], "settings.ini"), QSettings.Format.IniFormat)
win = MainWindow(settings=settings, first_start_sample=False, open_library_now=False)
probe = FirstPaint()
win.installEventFilter(probe)
win.show()
app.exec()
print(json.dumps({"first_paint_s": probe.t, "torch_imported": probe.torch}))
"""


def one_run(home: Path) -> dict:
    env = dict(os.environ, DINOSCOPE_HOME=str(home))
    env.setdefault("QT_QPA_PLATFORM", "offscreen" if not env.get("DISPLAY") else "xcb")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=root, env=env, capture_output=True, text=True,
                         timeout=120)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        one_run(home)  # creates the empty default library; also warms the page cache like a second launch
        for label in ("empty library", "sample library (42 photos)"):
            if label.startswith("sample"):
                _index_sample(home)
            runs = [one_run(home) for _ in range(args.runs)]
            times = [r["first_paint_s"] for r in runs]
            results[label] = {"median_s": statistics.median(times), "runs": times,
                              "torch_imported": any(r["torch_imported"] for r in runs)}
            rows.append([label, statistics.median(times), min(times), max(times),
                         "yes" if results[label]["torch_imported"] else "no"])
    print(f"## Start-up to first paint ({machine()}, {args.runs} fresh processes each)")
    print(table(["library", "median s", "min s", "max s", "torch imported before paint"], rows))
    print(f"\nsaved {save_json('startup', {'machine': machine(), 'results': results})}")


def _index_sample(home: Path) -> None:
    """Index the bundled sample photos with a random tiny ViT so the window opens on a real, full library."""
    code = r"""
import sys, torch
sys.path.insert(0, ".")
from engine.models import DinoVisionTransformer
from engine.store import Library
from engine.store.indexer import index_library
from tests.helpers import tiny_config
torch.manual_seed(0)
with Library.open("sample") as lib:
    index_library(lib, DinoVisionTransformer(tiny_config()), folders=["assets/sample"], device="cpu")
"""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, env=dict(os.environ, DINOSCOPE_HOME=str(home)),
                   check=True, capture_output=True, timeout=600)
    (home / "settings.ini").write_text("[library]\nname=sample\n")


if __name__ == "__main__":
    main()
