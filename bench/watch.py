"""Watched folders: seconds from a photo landing in a watched folder to its vector being searchable.

A library of `--base` photos is indexed first, then `watch_library` runs in a thread (as the CLI's --watch does)
with the default debounce (engine.watch.QUIET_S), and the benchmark copies photos in:

  * 20 single files, one at a time: the time from the copy's end to the end of the index run that made the photo
    searchable (database committed and vector files rewritten), median and worst;
  * one 500-file copy into a new folder, as fast as the disk allows: from the last file landing to all 500 being
    searchable, and from the first file landing to the end.

The model is a random-weight ViT-S/14 (the zoo architecture: the weights do not change the cost) on the CPU; the
photos are 2 MP JPEGs made from scikit-image's photos (bench/_common.make_photos).

    python bench/watch.py                      # about 3 minutes on 2 idle cores
    python bench/watch.py --burst 100 --singles 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import machine, make_photos, save_json, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=200, help="photos already in the library")
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument("--burst", type=int, default=500)
    args = parser.parse_args()

    from engine.models import build_backbone
    from engine.store import Library, index_library
    from engine.watch import QUIET_S, watch_library

    model = build_backbone("dinov2_vits14").eval()
    sources = make_photos(args.base + args.singles + args.burst, megapixels=2.0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        photos = tmp / "photos"
        (photos / "base").mkdir(parents=True)
        for p in sources[: args.base]:
            shutil.copy(p, photos / "base" / p.name)
        lib = Library.open(tmp / "lib")
        t = time.perf_counter()
        index_library(lib, model, folders=[photos], device="cpu")
        print(f"base library: {args.base} photos indexed in {time.perf_counter() - t:.1f} s")

        searchable: dict[str, float] = {}
        ready, stop = threading.Event(), threading.Event()

        def on_batch(batch) -> None:
            done = time.perf_counter()
            with lib.session() as s:
                from sqlalchemy import select

                from engine.store.schema import Embedding, Image

                for path in s.scalars(select(Image.path).join(Embedding, Embedding.image_id == Image.id)):
                    searchable.setdefault(path, done)

        thread = threading.Thread(target=watch_library, args=(lib, model), daemon=True,
                                  kwargs={"on_batch": on_batch, "cancel": stop.is_set, "ready": ready,
                                          "device": "cpu"})
        thread.start()
        ready.wait()
        time.sleep(2 * QUIET_S + 1)  # let the start-up walk finish

        def wait(paths: list[str], timeout: float = 600) -> None:
            deadline = time.perf_counter() + timeout
            while not all(p in searchable for p in paths):
                if time.perf_counter() > deadline:
                    raise SystemExit(f"timed out: {sum(p in searchable for p in paths)}/{len(paths)} searchable")
                time.sleep(0.01)

        singles = []
        (photos / "singles").mkdir()
        for p in sources[args.base : args.base + args.singles]:
            dst = photos / "singles" / p.name
            shutil.copy(p, dst)
            landed = time.perf_counter()
            wait([str(dst)])
            singles.append(searchable[str(dst)] - landed)

        burst_dir = photos / "burst"
        burst_dir.mkdir()
        first = time.perf_counter()
        dsts = []
        for p in sources[args.base + args.singles :]:
            dsts.append(str(burst_dir / p.name))
            shutil.copy(p, dsts[-1])
        last = time.perf_counter()
        wait(dsts)
        end = max(searchable[p] for p in dsts)
        stop.set()
        thread.join()
        lib.close()

    rows = [[f"{args.singles} single files, median", statistics.median(singles)],
            [f"{args.singles} single files, worst", max(singles)],
            [f"{args.burst}-file copy: last file landed -> all searchable", end - last],
            [f"{args.burst}-file copy: first file landed -> all searchable", end - first]]
    print(f"\n{machine()}; debounce {QUIET_S} s; library of {args.base} + new photos, ViT-S/14 on CPU\n")
    print(table(["landing -> searchable", "seconds"], rows))
    save_json("watch", {"machine": machine(), "singles_s": singles, "burst_last_s": end - last,
                        "burst_total_s": end - first, "burst": args.burst, "base": args.base})


if __name__ == "__main__":
    main()
