"""Camera RAW decoding: the embedded JPEG preview (what indexing uses) against demosaicing the sensor mosaic.

A DNG is written from a real sample photo upscaled to a 24 MP Bayer mosaic (6000 x 4000, 16-bit, uncompressed)
with a 1620 x 1080 JPEG preview, the size many cameras embed. Each contender decodes it from bytes in memory, on one
thread (OMP_NUM_THREADS=1 is set before LibRaw loads), so the figures are images per second per core:

  * preview @256: engine.imageio.load_rgb(data, min_side=256), the indexer's call (preview, JPEG DCT-downscaled);
  * half-size demosaic: what the indexer falls back to for a RAW without a big enough preview;
  * full demosaic: LibRaw's default AHD interpolation at full resolution (what a RAW converter does).

    python bench/raw.py               # about a minute
    python bench/raw.py --seconds 1
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import interleaved_medians, machine, save_json, table  # noqa: E402
from tests.test_raw_dng import SAMPLE, dng_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per contender per trial")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--width", type=int, default=6000)
    args = parser.parse_args()

    import rawpy

    from engine.imageio import load_rgb

    width, height = args.width, args.width * 2 // 3
    scene = Image.open(SAMPLE / "nature" / "forest-path.jpg").convert("RGB").resize((width, height))
    data = dng_bytes(np.asarray(scene), preview_longest=1620)
    print(f"DNG: {width} x {height} mosaic ({width * height / 1e6:.0f} MP), {len(data) / 2**20:.0f} MiB")

    def preview() -> int:
        load_rgb(data, min_side=256)
        return 1

    def demosaic(half: bool) -> int:
        with rawpy.imread(io.BytesIO(data)) as raw:
            raw.postprocess(half_size=half, use_camera_wb=True, output_bps=8)
        return 1

    rates = interleaved_medians({"preview @256 (indexer)": preview, "half-size demosaic": lambda: demosaic(True),
                                 "full demosaic (AHD)": lambda: demosaic(False)}, args.seconds, args.trials)
    base = rates["full demosaic (AHD)"]
    rows = [[name, r, r / base] for name, r in rates.items()]
    print(f"\n{machine()}, one thread, median of {args.trials} interleaved trials\n")
    print(table(["decode", "img/s per core", "x full demosaic"], rows))
    save_json("raw", {"machine": machine(), "megapixels": width * height / 1e6, "rates": rates})


if __name__ == "__main__":
    main()
