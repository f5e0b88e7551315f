"""Stack maintenance: milliseconds per new photo in a library of 100k photos, against rebuilding every stack.

A real library database is filled with `--n` photos (default 100,000) and 384-d vectors: random directions, with
5 % of the photos planted as near-identical copies (cosine ~0.97) and 5 % as bursts (cosine ~0.85, one folder,
capture times 2 s apart). Then:

  * full rebuild: `rebuild_stacks` (one k-NN query per photo, batched);
  * incremental: `--add` new photos (half of them copies of existing ones) arrive one at a time, each followed by
    `update_stacks`, as the watcher runs it after an index batch. The vector files are rewritten before each
    update, as the indexer does at the end of its run, and that rewrite is the indexer's cost, reported apart.

    python bench/stacks.py                 # a few minutes on 2 cores (most of it the full rebuild)
    python bench/stacks.py --n 20000
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import machine, save_json, table  # noqa: E402

DIM = 384


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted(n: int, rng: np.random.Generator) -> np.ndarray:
    x = unit(rng.standard_normal((n, DIM)))
    chosen = rng.choice(n, n // 20 // 2 * 2, replace=False)
    originals, copies = chosen[: len(chosen) // 2], chosen[len(chosen) // 2 :]
    x[copies] = unit(x[originals] + 0.013 * rng.standard_normal((len(copies), DIM)))  # cosine ~0.97
    return x


def fill(root: Path, n: int, rng: np.random.Generator) -> None:
    from engine.store import Library

    Library.open(root).close()
    x = planted(n, rng)
    bursts = set(range(0, n, 40)) | set(range(1, n, 40))  # 2 of every 40: a burst pair
    for i in range(1, n, 40):
        x[i] = unit(x[i - 1] + 0.032 * rng.standard_normal(DIM))  # cosine ~0.85
    con = sqlite3.connect(root / "library.db")
    with con:
        con.execute("INSERT INTO folders (id, path, added_at) VALUES (1, '/photos', '2026-01-01T00:00:00')")
        con.execute("INSERT INTO models (id, name, source, checkpoint_hash, dim, patch_size, created_at, revision) "
                    "VALUES (1, 'vits14', 'vits14', 'x', ?, 14, '2026-01-01T00:00:00', 0)", (DIM,))
        con.executemany(
            "INSERT INTO images (id, folder_id, path, size, mtime_ns, width, height, captured_at, status) "
            "VALUES (?, 1, ?, 3000000, 0, 4000, 3000, ?, 'ok')",
            ((i + 1, f"/photos/{i // 40:05d}/IMG_{i:06d}.jpg",
              f"2024-01-01T{(i // 40) % 24:02d}:00:{(i % 40) * 2 if i in bursts else 0:02d}"
              if i in bursts else None) for i in range(n)))
        con.executemany("INSERT INTO embeddings (model_id, image_id, vector) VALUES (1, ?, ?)",
                        ((i + 1, x[i].tobytes()) for i in range(n)))
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--add", type=int, default=20)
    args = parser.parse_args()

    from engine.stacks import rebuild_stacks, stacks, update_stacks
    from engine.store import Library
    from engine.store.schema import Embedding, Image
    from engine.store.vectors import VectorIndex, library_vectors, vector_index

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        root = Path(tmp_name) / "lib"
        fill(root, args.n, rng)
        with Library.open(root) as lib:
            VectorIndex.open(lib, 1)
            t = time.perf_counter()
            rebuild_stacks(lib, 1)
            rebuild_s = time.perf_counter() - t
            print(f"rebuild: {len(stacks(lib, 1))} stacks from {args.n} photos in {rebuild_s:.1f} s")
            ids, vectors = library_vectors(lib, 1)
            per_photo, index_rewrite = [], []
            for k in range(args.add):
                source = vectors[int(rng.integers(len(ids)))]
                v = unit(source + 0.013 * rng.standard_normal(DIM)) if k % 2 else unit(rng.standard_normal(DIM))
                with lib.write_session.begin() as s:
                    img = Image(folder_id=1, path=f"/photos/new/NEW_{k:03d}.jpg", size=1, mtime_ns=0, width=4000,
                                height=3000, status="ok")
                    s.add(img)
                    s.flush()
                    s.add(Embedding(model_id=1, image_id=img.id, vector=v.astype(np.float32).tobytes()))
                t = time.perf_counter()
                VectorIndex.open(lib, 1)  # what the indexer does at the end of its run
                index_rewrite.append(time.perf_counter() - t)
                vector_index(lib, 1)
                t = time.perf_counter()
                step = update_stacks(lib, 1)
                per_photo.append(time.perf_counter() - t)
                assert step.added == 1
    rows = [["full rebuild", rebuild_s * 1000, 1.0],
            ["incremental, per new photo (median)", statistics.median(per_photo) * 1000,
             rebuild_s / statistics.median(per_photo)],
            ["incremental, per new photo (worst)", max(per_photo) * 1000, rebuild_s / max(per_photo)]]
    print(f"\n{machine()}; {args.n} photos, {DIM}-d, exact (flat) index\n")
    print(table(["stack maintenance", "ms", "x faster than rebuild"], rows))
    print(f"\n(the indexer's own vector-file rewrite before each update: median "
          f"{statistics.median(index_rewrite) * 1000:.0f} ms, not included above)")
    save_json("stacks", {"machine": machine(), "n": args.n, "rebuild_s": rebuild_s, "per_photo_s": per_photo,
                         "index_rewrite_s": index_rewrite})


if __name__ == "__main__":
    main()
