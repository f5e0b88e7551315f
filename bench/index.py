"""Library benchmarks: indexing throughput beside the model alone, search latency and recall, a dropped-image query.

    python bench/index.py                         # all three parts, default sizes (about 10 minutes on 2 cores)
    python bench/index.py --parts indexing --photos 200
    python bench/index.py --parts indexing --precisions auto int8     # int8 indexing beside the default
    python bench/index.py --parts search --sizes 100000 1000000 --dims 384 --hnsw-1m
    python bench/index.py --parts query

indexing  Random ViT-S/14 weights saved to a .pth and loaded like a user's checkpoint. Model-only: the same
          Extractor on the files' preprocessed tensors, batches of its default size. End-to-end: index_library into
          a fresh library (read, hash, decode, thumbnail, model, region pooling, commit), as files/s through that
          pipeline and as wall time including the scan and the vector-file write. Alternated, median of 3 trials.
search    Clustered synthetic vectors (2000 centres in a 32-dim subspace, per-point noise, a little full-dim noise,
          L2-normalised; never uniform random vectors, on which approximate indexes look broken), the store's own
          index builders (engine.store.vectors.build_faiss: flat, ivf with fp16 lists, hnsw) plus IVF with float32
          ("ivf-flat") and 8-bit ("ivf-sq8") lists for comparison.
          Single-query latency p50/p95 (one FAISS thread, as the app searches), recall@10 against exact search,
          index size (FAISS's serialised size, which is what it holds in RAM) and build time.
query     A dropped 12 MP photo against a 100k-photo library whose rows (paths, fake clustered 384-d vectors) are
          written straight into a real library database: decode + embed (ViT-S/14) + search + result rows.
"""

from __future__ import annotations

import argparse
import gc
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.store.vectors import vector_index

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, make_photos, save_json, table

# ---------------------------------------------------------------------------------------------------- helpers


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def clustered(n: int, dim: int, seed: int = 0, centres: int = 2000, intrinsic: int = 32) -> np.ndarray:
    """(n, dim) float32 unit vectors: cluster centres and per-point noise in a random 32-dim subspace, plus a
    little noise in every dimension. Generated in chunks to keep the peak memory at the output's size."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, intrinsic)))  # (dim, 32) orthonormal columns
    basis = basis.T.astype(np.float32)
    c = rng.standard_normal((centres, intrinsic)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        low = c[rng.integers(0, centres, e - s)] + 0.45 * rng.standard_normal((e - s, intrinsic), np.float32)
        block = low @ basis + 0.03 * rng.standard_normal((e - s, dim), np.float32)
        out[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


# -------------------------------------------------------------------------------------------------- indexing


def bench_indexing(args) -> dict:
    """One result per precision in --precisions (the first's keys also at the top level, as before); the
    precisions alternate within each trial, so their ratio comes from one run."""
    import torch

    from engine.extract import Extractor, eval_input
    from engine.models import build_backbone, load_backbone
    from engine.store import Library, index_library

    files = make_photos(args.photos, megapixels=12.0)
    print(f"\n## indexing: {len(files)} JPEGs of 12 MP, random ViT-S/14 ({machine()})", flush=True)
    precisions = list(dict.fromkeys(args.precisions))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        torch.save(build_backbone("dinov2_vits14").state_dict(), tmp / "vits14.pth")
        model = load_backbone(tmp / "vits14.pth")
        extractors = {p: Extractor(model, backend=args.backend, precision=p) for p in precisions}
        t0 = time.perf_counter()
        tensors = torch.stack([eval_input(p) for p in files])
        prep_s = time.perf_counter() - t0
        folder = tmp / "photos"
        folder.mkdir()
        for p in files:  # links: the indexer reads the same bytes, without copying 12 MP files around
            (folder / p.name).symlink_to(p.resolve())
        for ex in extractors.values():
            ex.embed_tensor(tensors[: ex.batch_size])  # warm-up: kernel selection

        def model_only(ex) -> float:
            t = time.perf_counter()
            for s in range(0, len(tensors), ex.batch_size):
                ex.embed_tensor(tensors[s : s + ex.batch_size])
            return len(tensors) / (time.perf_counter() - t)

        def end_to_end(name: str, precision: str, bs: int) -> tuple[float, float]:
            with Library.open(tmp / name) as lib:
                t = time.perf_counter()
                report = index_library(lib, model, folders=[folder], batch_size=bs, backend=args.backend,
                                       precision=precision)
                wall = time.perf_counter() - t
            assert report.failed == 0 and report.new == len(files), report.summary()
            return report.files_per_s, len(files) / wall

        runs = {p: {"model": [], "pipeline": [], "wall": []} for p in precisions}
        for trial in range(args.trials):
            for p, ex in extractors.items():
                r = runs[p]
                r["model"].append(model_only(ex))
                pipe, wall = end_to_end(f"lib{trial}-{p}", p, ex.batch_size)
                r["pipeline"].append(pipe)
                r["wall"].append(wall)
                print(f"  trial {trial + 1} {p}: model {r['model'][-1]:.1f} img/s, indexing {pipe:.1f} files/s "
                      f"({wall:.1f} with scan and index write)", flush=True)
    results = {}
    for p, ex in extractors.items():
        med = {k: statistics.median(v) for k, v in runs[p].items()}
        rows = [["model only (same Extractor, preprocessed tensors)", med["model"], 1.0],
                ["index_library: read, hash, decode, thumbnail, model, commit", med["pipeline"],
                 med["pipeline"] / med["model"]],
                ["index_library wall clock (with scan and vector files)", med["wall"], med["wall"] / med["model"]]]
        print(f"\n--precision {p}: {ex.backend} {ex.precision}, batch {ex.batch_size}, {ex.workers} decode threads")
        print(table(["path", "img/s (median)", "ratio to model only"], rows))
        results[p] = {"photos": len(files), "backend": ex.backend, "precision": ex.precision,
                      "batch": ex.batch_size, "runs": runs[p], "median": med,
                      "ratio": med["pipeline"] / med["model"], "ratio_wall": med["wall"] / med["model"]}
    print(f"(preprocessing the model-only tensors took {prep_s:.1f} s, {len(files) / prep_s:.1f} files/s "
          "single-threaded)")
    first = results[precisions[0]]
    for p in precisions[1:]:
        for key in ("model", "pipeline", "wall"):
            first.setdefault("vs_first", {}).setdefault(p, {})[key] = (results[p]["median"][key]
                                                                      / first["median"][key])
        print(f"{p} / {precisions[0]}: model {first['vs_first'][p]['model']:.2f}x, indexing "
              f"{first['vs_first'][p]['pipeline']:.2f}x, wall {first['vs_first'][p]['wall']:.2f}x")
    return {**first, "by_precision": results} if len(results) > 1 else first


# ---------------------------------------------------------------------------------------------------- search


def build(kind: str, x: np.ndarray, ids: np.ndarray):
    """The store's builders for flat / ivf (fp16 lists) / hnsw; IVF with float32 or 8-bit lists for comparison,
    built the same way (same nlist, same training sample)."""
    import faiss

    from engine.store.vectors import build_faiss

    if kind in ("flat", "ivf", "hnsw"):
        return build_faiss(x, ids, kind)
    n, dim = x.shape
    nlist = max(1, min(65536, int(math.sqrt(n)), n // 39))
    if kind == "ivf-flat":
        inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        inner = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    sample = x if n <= 64 * nlist else x[np.sort(np.random.default_rng(0).choice(n, 64 * nlist, replace=False))]
    inner.train(np.ascontiguousarray(sample))
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(x, ids)
    return index


def configure(index, kind: str, nprobe: int, ef: int) -> None:
    import faiss

    if kind.startswith("ivf"):
        faiss.extract_index_ivf(index).nprobe = nprobe
    elif kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = ef


def bench_search(args) -> list[dict]:
    import faiss

    from engine.faiss_runtime import faiss_settings

    results = []
    print(f"\n## search: clustered synthetic vectors, {args.queries} held-out queries, k=10 ({machine()})",
          flush=True)
    for dim in args.dims:
        for n in args.sizes:
            x = clustered(n + args.queries, dim, seed=n + dim)
            queries, x = x[: args.queries].copy(), x[args.queries :]
            ids = np.arange(1, n + 1, dtype=np.int64)
            kinds = ["flat", "ivf", "ivf-flat", "ivf-sq8"]
            if n <= 100_000 or args.hnsw_1m:
                kinds.append("hnsw")
            truth = None
            for kind in kinds:
                t0 = time.perf_counter()
                index = build(kind, x, ids)
                build_s = time.perf_counter() - t0
                configure(index, kind, args.nprobe, args.ef)
                if truth is None:  # exact answers, one batched search
                    with faiss_settings(None):
                        _, truth = index.search(queries, 10)
                lat, found = [], []
                count = args.queries if kind != "flat" or n < 1_000_000 else min(args.queries, 50)
                with faiss_settings(1):
                    index.search(queries[:1], 10)  # warm-up
                    for q in queries[:count]:
                        t = time.perf_counter()
                        _, got = index.search(q[None], 10)
                        lat.append((time.perf_counter() - t) * 1000)
                        found.append(got[0])
                recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=False)]))
                row = {"n": n, "dim": dim, "kind": kind, "build_s": build_s, "p50_ms": percentile(lat, 50),
                       "p95_ms": percentile(lat, 95), "recall10": recall, "index_mb": index_bytes(index) / 2**20,
                       "queries": count, "nprobe": args.nprobe if kind.startswith("ivf") else None,
                       "ef_search": args.ef if kind == "hnsw" else None}
                results.append(row)
                print(f"  {n:>8} x {dim}: {kind:8s} build {build_s:6.1f} s, p50 {row['p50_ms']:7.2f} ms, "
                      f"p95 {row['p95_ms']:7.2f} ms, recall@10 {recall:.3f}, {row['index_mb']:7.0f} MB", flush=True)
                del index
                gc.collect()
            del x, queries
            gc.collect()
    print(table(["N", "D", "index", "build s", "p50 ms", "p95 ms", "recall@10", "index MB"],
                [[r["n"], r["dim"], r["kind"], r["build_s"], r["p50_ms"], r["p95_ms"], r["recall10"],
                  round(r["index_mb"])] for r in results]))
    print(f"(IVF: nlist = sqrt(N), nprobe {args.nprobe}; HNSW: M 32, efConstruction 40, efSearch {args.ef}; "
          f"FAISS threads for queries: 1, builds: {faiss.omp_get_max_threads()})")
    return results


# ----------------------------------------------------------------------------------------------------- query


def synthetic_library(root: Path, n: int, dim: int, checkpoint_hash: str, source: str = "vits14.pth") -> int:
    """A real library database with n ok images and their (fake, clustered) vectors; returns the model id.

    ``source`` is the model source recorded for the vectors (the app picks the model indexed from its source)."""
    from engine.store import Library

    Library.open(root).close()  # creates the schema
    x = clustered(n, dim, seed=1)
    con = sqlite3.connect(root / "library.db")
    con.execute("PRAGMA journal_mode=WAL")
    with con:
        con.execute("INSERT INTO folders (id, path, added_at) VALUES (1, '/photos', '2026-01-01T00:00:00')")
        con.execute("INSERT INTO models (id, name, source, checkpoint_hash, dim, patch_size, created_at, revision) "
                    "VALUES (1, 'vits14', ?, ?, ?, 14, '2026-01-01T00:00:00', 0)", (source, checkpoint_hash, dim))
        con.executemany(
            "INSERT INTO images (id, folder_id, path, size, mtime_ns, content_hash, width, height, status) "
            "VALUES (?, 1, ?, 3000000, 0, ?, 4000, 3000, 'ok')",
            ((i + 1, f"/photos/{i // 1000:03d}/IMG_{i:06d}.jpg", f"{i:032x}") for i in range(n)))
        con.executemany("INSERT INTO embeddings (model_id, image_id, vector) VALUES (1, ?, ?)",
                        ((i + 1, x[i].tobytes()) for i in range(n)))
    con.close()
    return 1


def bench_query(args) -> dict:
    import torch

    from engine import search
    from engine.extract import Extractor
    from engine.faiss_runtime import faiss_settings
    from engine.imageio import load_rgb
    from engine.models import build_backbone
    from engine.store import Library
    from engine.store.indexer import model_hash
    from engine.transforms import eval_transform

    n = args.query_library
    photos = make_photos(max(args.query_photos, 2), megapixels=12.0)[: args.query_photos]
    print(f"\n## dropped-image query: {len(photos)} different 12 MP JPEGs, library of {n} rows with synthetic "
          f"384-d vectors ({machine()})", flush=True)
    torch.manual_seed(0)
    model = build_backbone("dinov2_vits14").eval()
    extractor = Extractor(model)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_id = synthetic_library(Path(tmp) / "lib", n, model.embed_dim, model_hash(model))
        fill_s = time.perf_counter() - t0
        with Library.open(Path(tmp) / "lib", create=False) as lib:
            t0 = time.perf_counter()
            index = vector_index(lib, model_id)
            open_s = time.perf_counter() - t0
            assert index.count == n and index.kind == "flat"
            search.search_by_images(lib, extractor, [photos[0]], k=20, model_id=model_id)  # warm-up
            parts: dict[str, list[float]] = {"decode": [], "embed": [], "search": [], "rows": [], "total": []}
            for p in photos * args.query_rounds:
                t_start = time.perf_counter()
                x = eval_transform(load_rgb(p, min_side=256))
                t_decoded = time.perf_counter()
                vector = extractor.embed_tensor(x[None]).cls
                t_embedded = time.perf_counter()
                with faiss_settings(1):
                    scores, ids = index.search(vector, 20)
                t_searched = time.perf_counter()
                results = search._results(lib, scores[0], ids[0])
                t_rows = time.perf_counter()
                assert len(results) == 20
                parts["decode"].append((t_decoded - t_start) * 1000)
                parts["embed"].append((t_embedded - t_decoded) * 1000)
                parts["search"].append((t_searched - t_embedded) * 1000)
                parts["rows"].append((t_rows - t_searched) * 1000)
                # the public call, end to end (the same steps plus the mean of one query)
                t = time.perf_counter()
                search.search_by_images(lib, extractor, [p], k=20, model_id=model_id)
                parts["total"].append((time.perf_counter() - t) * 1000)
    rows = [[k, percentile(v, 50), percentile(v, 95)] for k, v in parts.items()]
    print(table(["step", "p50 ms", "p95 ms"], rows))
    print(f"(ViT-S/14 {extractor.precision}, batch 1, {torch.get_num_threads()} torch threads; library written "
          f"in {fill_s:.1f} s, flat index built from the database in {open_s:.1f} s; {len(parts['total'])} queries)")
    return {"library": n, "precision": extractor.precision, "torch_threads": torch.get_num_threads(), "ms": parts,
            "fill_s": fill_s, "index_open_s": open_s,
            "p50_total_ms": percentile(parts["total"], 50)}


# ------------------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["indexing", "search", "query"],
                    choices=["indexing", "search", "query"])
    ap.add_argument("--photos", type=int, default=96, help="12 MP JPEGs for the indexing part")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"],
                    help="the Extractor backend of the indexing part")
    ap.add_argument("--precisions", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16", "int8"],
                    help="indexing part: one or more precisions, alternated within each trial")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 768])
    ap.add_argument("--queries", type=int, default=200, help="held-out queries per index")
    ap.add_argument("--nprobe", type=int, default=16, help="IVF lists probed (the library's default)")
    ap.add_argument("--ef", type=int, default=64, help="HNSW efSearch (the library's default)")
    ap.add_argument("--hnsw-1m", action="store_true", help="also build HNSW at 1M (minutes on 2 cores)")
    ap.add_argument("--query-library", type=int, default=100_000)
    ap.add_argument("--query-photos", type=int, default=8)
    ap.add_argument("--query-rounds", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own choice, all cores)")
    args = ap.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    out: dict = {"machine": machine(), "args": vars(args)}
    if "indexing" in args.parts:
        out["indexing"] = bench_indexing(args)
    if "search" in args.parts:
        out["search"] = bench_search(args)
    if "query" in args.parts:
        out["query"] = bench_query(args)
    name = "index" if args.parts == ["indexing", "search", "query"] else "index_" + "_".join(args.parts)
    if args.torch_threads:
        name += f"_torch{args.torch_threads}"
    if args.backend != "auto":
        name += f"_{args.backend}"
    if args.precisions != ["auto"]:
        name += "_" + "_".join(args.precisions)
    print(f"\nsaved {save_json(name, out)}")


if __name__ == "__main__":
    main()
