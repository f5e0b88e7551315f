"""Shared helpers for the benchmarks: timing with medians, markdown tables, real-photo test files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of fn (which returns how many items it processed), over at least `seconds`."""
    n = 0
    start = time.perf_counter()
    while True:
        n += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def interleaved_medians(fns: dict[str, Callable[[], int]], seconds: float, trials: int) -> dict[str, float]:
    """Run every contender once per trial, alternating, and report each one's median rate.

    On a shared 2-core VM throughput drifts by 2x between minutes; alternating makes a drift hit all equally.
    """
    for fn in fns.values():
        fn()  # warm-up: first-call allocations, oneDNN kernel selection
    results: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(trials):
        for name, fn in fns.items():
            results[name].append(rate(fn, seconds))
    return {k: statistics.median(v) for k, v in results.items()}


def table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def save_json(name: str, data: object) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def source_photos() -> list[Path]:
    try:
        import skimage
    except ImportError:
        return sorted((Path(__file__).resolve().parents[1] / "assets" / "sample").rglob("*.jpg"))
    data = Path(skimage.__file__).parent / "data"
    sources = [data / s for s in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
                                  "hubble_deep_field.jpg", "immunohistochemistry.png", "retina.jpg")]
    return [s for s in sources if s.exists()]


def make_photos(n: int, megapixels: float = 12.0, folder: Path | None = None) -> list[Path]:
    """Phone-sized JPEGs (4000x3000, q90, EXIF-free) made from real photos: crops, flips, noise.

    The sources are scikit-image's photos, or the bundled sample library's where scikit-image is not installed
    (the GPU machine). Made once and cached under bench/out; a real 12 MP phone JPEG decodes at about the same cost.
    """
    import numpy as np
    from PIL import Image

    folder = folder or OUT / f"photos_{int(megapixels)}mp"
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= n:
        return existing[:n]
    sources = source_photos()
    rng = np.random.default_rng(0)
    w = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    h = round(w * 3 / 4)
    for i in range(len(existing), n):
        img = Image.open(sources[i % len(sources)]).convert("RGB")
        cw, ch = img.size
        crop = (int(rng.integers(0, cw // 8)), int(rng.integers(0, ch // 8)))
        img = img.crop((crop[0], crop[1], cw - int(rng.integers(0, cw // 8)), ch - int(rng.integers(0, ch // 8))))
        if i % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        big = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        big = np.clip(big + rng.normal(0, 3, big.shape), 0, 255).astype(np.uint8)
        Image.fromarray(big).save(folder / f"photo_{i:04d}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))[:n]
