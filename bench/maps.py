"""Maps and overlays: UMAP layouts of 10k-100k vectors, placing new points, and PCA part overlays of 12 MP photos.

UMAP part (clustered synthetic data: 50 clusters in a 32-d subspace of R^384, labelled):
  * fit time with and without the PCA-50 pre-reduction, in a warm process (numba already compiled), and the k-NN
    label agreement of each 2-D layout beside that of the 384-d vectors themselves (what a layout can keep);
  * fit time in a fresh process (a real subprocess: interpreter start, `import umap`, numba compilation, fit);
  * umap-learn on its own (its NN-descent neighbours, its default epochs) on the same input, warm and fresh;
  * placing 1k new points: Dinoscope's `place_new` beside umap-learn's own `transform` on the same fitted map
    (first call, which includes compilation, and the median of later calls), and in a fresh process from the
    saved layout file.
Overlay part: decode + patch tokens + PCA recipe + render of a 12 MP JPEG at 448 and 896 px with a random-weight
ViT-S/14 (the zoo architecture; the weights do not change the cost), beside the same recipe with sklearn's PCA.

    python bench/maps.py                         # everything, about 10 min on 2 idle cores
    python bench/maps.py --sizes 10000 50000     # skip 100k
    python bench/maps.py --skip-umap             # overlays only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import interleaved_medians, machine, make_photos, save_json, table  # noqa: E402


def clustered(n: int, seed: int = 0, d: int = 384, k: int = 50, intrinsic: int = 32, spread: float = 1.0):
    """Labelled vectors whose clusters overlap a little (384-d 10-NN label agreement about 0.95, not a trivial 1.0).

    The subspace and centres come from a fixed seed so that "new" points (another ``seed``) share the clusters.
    """
    fixed = np.random.default_rng(1234)
    basis = np.linalg.qr(fixed.normal(size=(d, intrinsic)))[0].T
    centres = fixed.normal(size=(k, intrinsic))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    z = centres[labels] + rng.normal(0, spread, (n, intrinsic))
    x = z @ basis + rng.normal(0, 0.05, (n, d))
    return x.astype(np.float32), labels


def agreement_384(x: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """10-NN label agreement by cosine in the original space: the ceiling for a 2-D layout."""
    import faiss

    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    faiss.cvar.distance_compute_blas_threshold = 20
    _, idx = index.search(unit, k + 1)
    return float((labels[idx[:, 1:]] == labels[:, None]).mean())


# ------------------------------------------------------------------------------------------- fresh-process children
def child_fit(n: int, pca_dims: int | None, save_to: str | None, use_peer: bool = False) -> None:
    """Runs in a fresh interpreter: import umap, fit once (compilation included), print timings as JSON.

    ``use_peer``: umap-learn on its own (its NN-descent neighbours, its default epochs) on the same PCA-reduced input.
    """
    x, labels = clustered(n)
    t0 = time.perf_counter()
    import umap  # noqa: F401  (timed: numba-compiled module loading)

    from engine.viz.umap_layout import fit_layout, knn_agreement, save_layout

    t_import = time.perf_counter() - t0
    layout = fit_layout(x, pca_dims=pca_dims, **(peer(n) if use_peer else {}))
    total = time.perf_counter() - t0
    out = {"import_s": t_import, "import_fit_s": total, "agreement": knn_agreement(layout.coords, labels)}
    if save_to:
        t = time.perf_counter()
        path = save_layout(layout, save_to)
        out.update(save_s=time.perf_counter() - t, file_mb=path.stat().st_size / 1e6)
    print(json.dumps(out))


def child_place(folder: str, n_new: int) -> None:
    """Runs in a fresh interpreter: load a saved layout and place new points (compilation included)."""
    new, _ = clustered(n_new, seed=7)
    t0 = time.perf_counter()
    from engine.viz.umap_layout import load_layout, place_new

    layout = load_layout(folder)
    t_load = time.perf_counter() - t0
    place_new(layout, new)
    total = time.perf_counter() - t0
    t = time.perf_counter()
    place_new(layout, new)
    print(json.dumps({"load_s": t_load, "load_place_s": total, "place_again_s": time.perf_counter() - t}))


def run_child(*args: str) -> tuple[dict, float]:
    start = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]), wall


# ------------------------------------------------------------------------------------------------------- UMAP runs
# umap-learn as a user would run it on its own: its NN-descent neighbours (kept for its transform) and its default
# epochs (500 up to 10k points, 200 beyond), on the same unit-length, PCA-reduced vectors as ours.
def peer(n: int) -> dict:
    return {"keep_reducer": True, "n_epochs": 500 if n <= 10000 else 200}


def bench_umap(sizes: list[int], trials: int, n_new: int, fresh_size: int, fresh_trials: int) -> dict:
    import umap  # noqa: F401

    from engine.viz.umap_layout import fit_layout, knn_agreement, place_new

    configs = {"pca50": 50, "no-pca": None}
    print("warming up numba (one fit per metric on 5000 points, one with NN-descent, one placement) ...", flush=True)
    warm_x, _ = clustered(5000, seed=99)
    for dims in configs.values():
        warm = fit_layout(warm_x, pca_dims=dims)
        place_new(warm, warm_x[:10])
    fit_layout(warm_x, pca_dims=50, **peer(len(warm_x)))

    fits: dict[tuple[int, str], list[float]] = {}
    quality: dict[tuple[int, str], list[float]] = {}
    placement: dict[int, dict[str, float]] = {}
    ceiling: dict[int, float] = {}
    new, _ = clustered(n_new, seed=7)
    for n in sizes:
        x, labels = clustered(n)
        ceiling[n] = agreement_384(x, labels)
        for trial in range(trials + 1):
            for name, dims in configs.items():
                is_peer = trial == trials
                if is_peer and name != "pca50":
                    continue
                name = "umap-learn" if is_peer else name
                t = time.perf_counter()
                layout = fit_layout(x, pca_dims=dims, **(peer(n) if is_peer else {}))
                fits.setdefault((n, name), []).append(time.perf_counter() - t)
                quality.setdefault((n, name), []).append(knn_agreement(layout.coords, labels))
                print(f"  fit {n} {name}: {fits[(n, name)][-1]:.1f} s, agreement {quality[(n, name)][-1]:.3f}",
                      flush=True)
                if is_peer:
                    placement[n] = time_placement(layout, new)
                    print(f"  place {n_new} on {n}: {placement[n]}", flush=True)
                del layout

    fresh, fresh_peer = [], None
    if fresh_size and fresh_trials:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(fresh_trials):
                print(f"fresh process fit {fresh_size} pca50 ({i + 1}/{fresh_trials}) ...", flush=True)
                fit_out, fit_wall = run_child("--child-fit", str(fresh_size), "--child-pca", "50",
                                              "--child-save", tmp)
                place_out, place_wall = run_child("--child-place", tmp, "--new", str(n_new))
                fresh.append({**fit_out, "fit_wall_s": fit_wall, **place_out, "place_wall_s": place_wall})
                print(f"  {fresh[-1]}", flush=True)
            print(f"fresh process fit {fresh_size}, umap-learn on its own ...", flush=True)
            fresh_peer, _ = run_child("--child-fit", str(fresh_size), "--child-pca", "50", "--child-peer")
            print(f"  {fresh_peer}", flush=True)
    return {"fits": {f"{n} {c}": v for (n, c), v in fits.items()},
            "agreement": {f"{n} {c}": v for (n, c), v in quality.items()},
            "agreement_384d": ceiling, "placement": placement, "fresh": fresh, "fresh_size": fresh_size,
            "fresh_peer": fresh_peer}


def time_placement(layout, new: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """Ours vs umap-learn's transform on the same map: first call (compiles) and the median of later calls."""
    from engine.viz.umap_layout import place_new

    reduced = layout.pca.project(new)
    out = {}
    contenders = (("ours", lambda: place_new(layout, new)), ("umap-learn", lambda: layout.reducer.transform(reduced)))
    for name, fn in contenders:
        t = time.perf_counter()
        fn()
        out[f"{name}_first_s"] = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[f"{name}_s"] = statistics.median(times)
    return out


# ---------------------------------------------------------------------------------------------------- overlay runs
def bench_overlay(resolutions: list[int], trials: int) -> dict:
    import torch

    from engine.imageio import load_rgb
    from engine.models import build_backbone
    from engine.viz.patches import patch_tokens
    from engine.viz.pca import fit_parts, render_overlay

    torch.manual_seed(0)
    model = build_backbone("dinov2_vits14").eval()
    photo = make_photos(1, megapixels=12)[0]
    stages: dict[str, list[float]] = {}

    def overlay(res: int, pca: str) -> int:
        t0 = time.perf_counter()
        img = load_rgb(photo)
        t1 = time.perf_counter()
        feats = patch_tokens(model, [img], resolution=res)[0]
        t2 = time.perf_counter()
        if pca == "ours":
            result = fit_parts([feats.tokens], [feats.grid], joint=False)[0]
            t3 = time.perf_counter()
            render_overlay(img, result, mode="blend")
        else:
            mask, rgb = sklearn_recipe(feats.tokens, feats.grid)
            t3 = time.perf_counter()
            sklearn_render(img, mask, rgb)
        t4 = time.perf_counter()
        for stage, value in (("decode", t1 - t0), ("tokens", t2 - t1), ("pca", t3 - t2), ("render", t4 - t3),
                             ("total", t4 - t0)):
            stages.setdefault(f"{res} {pca} {stage}", []).append(value)
        return 1

    fns = {f"{res} {pca}": (lambda res=res, pca=pca: overlay(res, pca)) for res in resolutions
           for pca in ("ours", "sklearn")}
    rates = interleaved_medians(fns, seconds=0.0, trials=trials)
    # interleaved_medians ran one warm-up call per contender first; report the medians of the timed trials only.
    medians = {k: statistics.median(v[1:]) for k, v in stages.items()}
    img = load_rgb(photo)
    feats = patch_tokens(model, [img], resolution=resolutions[0])[0]
    picture = render_overlay(img, fit_parts([feats.tokens], [feats.grid])[0])
    from app.commands.pca import _write_png

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        _write_png(Path(tmp) / "x.png", picture)
        png_s = time.perf_counter() - t
    return {"rates": rates, "stages": medians, "png_write_s": png_s, "photo": str(photo),
            "size": list(img.shape[:2]), "grid": {r: _grid(img, r) for r in resolutions}}


def _grid(img: np.ndarray, res: int) -> str:
    from engine.transforms import dense_size

    h, w = dense_size(img.shape[0], img.shape[1], res)
    return f"{h // 14}x{w // 14}"


def sklearn_recipe(tokens: np.ndarray, grid: tuple[int, int]):
    """The community recipe (issue #23) with sklearn: PCA(1) threshold at 0.5, PCA(3) on the foreground."""
    from sklearn.decomposition import PCA

    first = PCA(1).fit_transform(tokens)[:, 0]
    norm = (first - first.min()) / (np.ptp(first) + 1e-12)
    fg = norm > 0.5
    if fg.mean() > 0.5:
        fg = ~fg
    if fg.sum() < 4:
        fg[:] = True
    comps = PCA(3).fit(tokens[fg]).transform(tokens)
    low, high = comps[fg].min(0), comps[fg].max(0)
    rgb = np.clip((comps - low) / (high - low + 1e-12), 0, 1) * fg[:, None]
    return fg.reshape(grid), rgb.reshape(grid[0], grid[1], 3)


def sklearn_render(img: np.ndarray, mask: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """The same blend done the plain way: PIL nearest upsampling and float arithmetic."""
    from PIL import Image

    h, w = img.shape[:2]
    colour = np.asarray(Image.fromarray((rgb * 255).astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST))
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    out = np.zeros_like(img)
    out[m] = (0.6 * colour[m] + 0.4 * img[m]).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------------------- report
def report(umap_res: dict | None, overlay_res: dict | None, args: argparse.Namespace) -> str:
    parts = [f"machine: {machine()}"]
    if umap_res:
        rows = []
        for n in args.sizes:
            for c in ("pca50", "no-pca", "umap-learn"):
                key = f"{n} {c}"
                rows.append([n, c, statistics.median(umap_res["fits"][key]),
                             statistics.median(umap_res["agreement"][key]), umap_res["agreement_384d"][n]])
            fit = {c: statistics.median(umap_res["fits"][f"{n} {c}"]) for c in ("pca50", "no-pca", "umap-learn")}
            rows.append([n, "no-pca / pca50 time", fit["no-pca"] / fit["pca50"], "", ""])
            rows.append([n, "umap-learn / pca50 time (speed-up)", fit["umap-learn"] / fit["pca50"], "", ""])
        parts.append(f"### UMAP fit, warm process (median of {args.trials}; umap-learn on its own: one fit, "
                     "NN-descent neighbours, its default epochs, same PCA-50 input)\n"
                     + table(["points", "config", "fit s", "10-NN agreement 2-D", "10-NN agreement 384-d"], rows))
        rows = []
        for n, p in umap_res["placement"].items():
            rows.append([n, p["ours_first_s"], p["ours_s"], p["umap-learn_first_s"], p["umap-learn_s"],
                         p["umap-learn_s"] / p["ours_s"]])
        parts.append(f"### Placing {args.new} new points on a fitted map (pca50), warm process\n"
                     + table(["fitted points", "ours first s", "ours s", "umap-learn transform first s",
                              "umap-learn s", "umap-learn / ours"], rows))
        if umap_res["fresh"]:
            fr = umap_res["fresh"]

            def med(key: str) -> float:
                return statistics.median(f[key] for f in fr)

            rows = [["import umap", med("import_s")], ["import + fit (compilation included)", med("import_fit_s")],
                    ["whole child process (interpreter, data, fit, save)", med("fit_wall_s")],
                    ["save layout .npz", med("save_s")], ["layout file MB", med("file_mb")],
                    ["load layout", med("load_s")],
                    [f"load + place {args.new} (compilation included)", med("load_place_s")],
                    [f"place {args.new} again", med("place_again_s")],
                    ["2-D 10-NN agreement", med("agreement")]]
            if umap_res.get("fresh_peer"):
                theirs = umap_res["fresh_peer"]
                rows += [["umap-learn on its own: import + fit", theirs["import_fit_s"]],
                         ["umap-learn on its own: 2-D 10-NN agreement", theirs["agreement"]],
                         ["speed-up (umap-learn / ours, import + fit)", theirs["import_fit_s"] / med("import_fit_s")]]
            parts.append(f"### Fresh process, {umap_res['fresh_size']} points pca50 (median of {len(fr)})\n"
                         + table(["step", "s"], rows))
    if overlay_res:
        rows = []
        for res in args.resolutions:
            for pca in ("ours", "sklearn"):
                s = overlay_res["stages"]
                rows.append([res, overlay_res["grid"][res], pca, s[f"{res} {pca} decode"], s[f"{res} {pca} tokens"],
                             s[f"{res} {pca} pca"], s[f"{res} {pca} render"], s[f"{res} {pca} total"]])
        h, w = overlay_res["size"]
        parts.append(f"### PCA overlay of one {w}x{h} JPEG, random ViT-S/14, CPU (median of {args.overlay_trials}; "
                     f"PNG write {overlay_res['png_write_s']:.2f} s extra)\n"
                     + table(["px", "grid", "recipe", "decode s", "tokens s", "pca s", "render s", "total s"], rows))
    return "\n\n".join(parts)


def load_average() -> str:
    """Other jobs on a shared 2-core VM skew every figure; print the 1/5/15-minute load beside them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000, 100000])
    ap.add_argument("--trials", type=int, default=3, help="warm fits per size and config (median reported)")
    ap.add_argument("--new", type=int, default=1000, help="new points placed on a fitted map")
    ap.add_argument("--fresh-size", type=int, default=100000, help="points for the fresh-process fit (0: skip)")
    ap.add_argument("--fresh-trials", type=int, default=3)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[448, 896])
    ap.add_argument("--overlay-trials", type=int, default=3)
    ap.add_argument("--skip-umap", action="store_true")
    ap.add_argument("--skip-overlay", action="store_true")
    ap.add_argument("--child-fit", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-pca", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-save", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-peer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-place", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_fit:
        return child_fit(args.child_fit, args.child_pca, args.child_save, args.child_peer)
    if args.child_place:
        return child_place(args.child_place, args.new)

    print(f"machine: {machine()}; load average {load_average()}", flush=True)
    overlay_res = None if args.skip_overlay else bench_overlay(args.resolutions, args.overlay_trials)
    umap_res = None if args.skip_umap else bench_umap(args.sizes, args.trials, args.new, args.fresh_size,
                                                      args.fresh_trials)
    text = report(umap_res, overlay_res, args)
    print("\n" + text + f"\n\nload average at the end: {load_average()}")
    name = "maps" + ("-overlay" if args.skip_umap else "") + ("-umap" if args.skip_overlay else "")
    path = save_json(name, {"args": vars(args), "umap": umap_res, "overlay": overlay_res, "machine": machine(),
                            "load_average_at_end": load_average()})
    print(f"\nraw numbers: {path}")


if __name__ == "__main__":
    main()
