"""Start-up: seconds from process start to the first painted main window, in fresh processes.

Each run starts a new Python process (cold imports, as a user's double-click does), opens the window on a
library of the bundled sample photos (or an empty one), and reports when the first paint event reaches the
window, measured from the process's own creation time. Also reports whether torch was already imported by then
(it should not be: heavy imports are deferred). Offscreen platform unless DISPLAY is set.

Then the time to the first search results after a drop, on libraries of 10k and 100k photos (real library
databases whose rows and clustered 384-d vectors are written directly, as bench/index.py's query part does; a
random ViT-S/14 saved as a .pth is the model in use, loaded the way a user's checkpoint is). Each fresh process
opens the window, drops a real 12 MP JPEG on it as soon as the library is open (a QDropEvent with the file's URL,
as a file manager sends), and records when the result grid is filled; then it drops two more photos at once, and
the three again once everything has loaded in the background. "First drop" waits for the vector index and the
model (the OpenVINO blob an earlier session compiled, without torch: engine.runtime.ov_quick); the next two run
while torch and the full model still load; the last three are what every further search costs.

    python bench/startup.py [--runs 5] [--drop-sizes 10000 100000] [--drop-runs 3]
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


DROP_PROBE = r"""
import json, os, sys, time
import psutil
born = psutil.Process().create_time()
from PySide6.QtCore import QEvent, QMimeData, QObject, QPointF, QSettings, Qt, QTimer, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication
app = QApplication(sys.argv[:1])
from app.gui.main_window import MainWindow

photos = json.loads(os.environ["BENCH_PHOTOS"])
marks = {"dropped": [], "results": [], "errors": []}
settings = QSettings(os.path.join(os.environ["DINOSCOPE_HOME"], "settings.ini"), QSettings.Format.IniFormat)
win = MainWindow(settings=settings, first_start_sample=False, open_library_now=False)
win.search_panel.error.disconnect()  # a dialog would block the run: record the message instead
win.search_panel.error.connect(lambda title, msg: (marks["errors"].append(f"{title}: {msg}"), app.quit()))

def drop(path):
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(path)])
    marks["dropped"].append(time.time())
    args = (QPointF(400, 300), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(win, QDragEnterEvent(*args))  # as a file manager's drag does: enter, then drop
    QApplication.sendEvent(win, QDropEvent(*args))

def on_results(_queries, ids):
    marks["results"].append((time.time(), len(ids)))
    n = len(marks["results"])
    if n < len(photos):
        QTimer.singleShot(0, lambda: drop(photos[n]))
    elif n < 2 * len(photos):  # then the same drops again once everything has loaded in the background
        QTimer.singleShot(0, lambda: when_loaded(lambda: drop(photos[n - len(photos)])))
    else:
        QTimer.singleShot(0, app.quit)

def when_loaded(then):
    idle = win.models._extractor is not None and all(t.outcome for t in win._warming)
    QTimer.singleShot(0 if idle else 100, then if idle else lambda: when_loaded(then))

class FirstPaint(QObject):
    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.Type.Paint and "paint" not in marks:
            marks["paint"] = time.time()
        return False

win.search_panel.results_changed.connect(on_results)
win.libraries.opened.connect(lambda _lib: (marks.setdefault("library", time.time()),
                                           QTimer.singleShot(0, lambda: drop(photos[0]))))
probe = FirstPaint()
win.installEventFilter(probe)
QTimer.singleShot(300000, app.quit)
win.show()
app.exec()
r = marks["results"]
print(json.dumps({"paint_s": marks["paint"] - born, "library_s": marks["library"] - born,
                  "first_results_s": r[0][0] - born if r else None,
                  "drops_s": [t - d for (t, _), d in zip(r, marks["dropped"])][:len(photos)],
                  "steady_drops_s": [t - d for (t, _), d in zip(r, marks["dropped"])][len(photos):],
                  "n_results": [n for _, n in r][:len(photos)], "errors": marks["errors"]}))
"""


def _env(home: Path, **more: str) -> dict:
    """The probes' environment. Python may write bytecode (a sandbox's PYTHONDONTWRITEBYTECODE would make every
    start compile the app's own modules again, which no user's second start does: pip and PyInstaller ship it)."""
    env = dict(os.environ, DINOSCOPE_HOME=str(home), **more)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("QT_QPA_PLATFORM", "offscreen" if not env.get("DISPLAY") else "xcb")
    return env


def drop_run(home: Path, photos: list[Path]) -> dict:
    env = _env(home, BENCH_PHOTOS=json.dumps([str(p) for p in photos]))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", DROP_PROBE], cwd=root, env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"] or len(result["drops_s"]) != len(photos) or len(result["steady_drops_s"]) != len(photos):
        raise RuntimeError(f"the drop run did not finish: {result}\n{out.stderr[-2000:]}")
    return result


def bench_drops(sizes: list[int], runs: int, n_drops: int = 3) -> tuple[list[list], dict]:
    import torch

    from bench._common import make_photos
    from bench.index import synthetic_library
    from engine.models import build_backbone
    from engine.models.checkpoint import save_backbone
    from engine.store.indexer import model_hash

    photos = make_photos(n_drops, megapixels=12.0)
    rows, results = [], {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            home = Path(d)
            torch.manual_seed(0)
            model = build_backbone("dinov2_vits14").eval()
            ckpt = save_backbone(model, home / "vits14-random.pth")
            synthetic_library(home / "libraries" / "big", n, model.embed_dim, model_hash(model), source=str(ckpt))
            (home / "settings.ini").write_text(f"[library]\nname=big\n\n[model]\nsource={ckpt}\n")
            # A first session with the library: warms the page cache, writes the vector-index file, compiles the
            # model with OpenVINO (its blob and quick-start recipe) and the app's bytecode, as a user's would.
            drop_run(home, photos)
            runs_out = [drop_run(home, photos) for _ in range(runs)]
        med = {key: statistics.median(r[key] for r in runs_out)
               for key in ("paint_s", "library_s", "first_results_s")}
        first = statistics.median(r["drops_s"][0] for r in runs_out)
        later = statistics.median(t for r in runs_out for t in r["drops_s"][1:])
        steady = statistics.median(t for r in runs_out for t in r["steady_drops_s"])
        results[n] = {**med, "first_drop_s": first, "later_drops_s": later, "steady_drops_s": steady,
                      "runs": runs_out}
        rows.append([n, med["paint_s"], med["library_s"], first, later, steady, med["first_results_s"]])
    return rows, results


def one_run(home: Path) -> dict:
    env = _env(home)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=root, env=env, capture_output=True, text=True,
                         timeout=120)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--drop-sizes", type=int, nargs="*", default=[10000, 100000],
                    help="library sizes for the drop benchmark (none: skip it)")
    ap.add_argument("--drop-runs", type=int, default=3)
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
    drops = {}
    if args.drop_sizes:
        drop_rows, drops = bench_drops(args.drop_sizes, args.drop_runs)
        print(f"\n## First results after a drop (12 MP JPEG, random ViT-S/14 .pth, median of {args.drop_runs} fresh "
              "processes; seconds)")
        print(table(["library photos", "first paint", "library open", "drop -> results, first drop",
                     "later drops (torch still loading)", "later drops (all loaded)",
                     "process start -> first results"], drop_rows))
    print(f"\nsaved {save_json('startup', {'machine': machine(), 'results': results, 'drops': drops})}")


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
