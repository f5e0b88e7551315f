"""The model-side half of bench/gpu_check.sh: parity of the device's bf16 against CPU fp32 on the sample photos,
and extraction throughput (model only, and end to end from JPEG files with decode threads).

    python bench/gpu_check.py --device cuda --out out        # what gpu_check.sh runs
    python bench/gpu_check.py --device cpu --quick --out /tmp/x  # the test's smoke run: tiny model, tiny sizes

Random weights (no network on the GPU machine): the cosine is a numerical check of the precision path only.
Writes OUT/gpu_check_model.json; the shell script folds it into OUT/gpu_check.json and OUT/gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import interleaved_medians, machine, make_photos  # noqa: E402
from engine.extract import Extractor, eval_input  # noqa: E402
from engine.models import build_backbone  # noqa: E402


def tiny_model(seed: int = 0) -> torch.nn.Module:
    from engine.models import BackboneConfig, DinoVisionTransformer

    torch.manual_seed(seed)
    return DinoVisionTransformer(BackboneConfig(embed_dim=64, depth=2, num_heads=1, ffn_hidden=256)).eval()


def models(quick: bool) -> dict[str, torch.nn.Module]:
    if quick:
        return {"tiny": tiny_model()}
    torch.manual_seed(0)
    return {"vits14": build_backbone("dinov2_vits14").eval(), "vitb14": build_backbone("dinov2_vitb14").eval()}


def parity(device: str, model: torch.nn.Module, photos: list[Path]) -> dict:
    """Min CLS cosine of the device's bf16 path against CPU fp32 torch, on the sample library's photos."""
    x = torch.stack([eval_input(p) for p in photos])
    ref = Extractor(model, device="cpu", precision="fp32", backend="torch").embed_tensor(x).cls
    ex = Extractor(model, device=device, precision="bf16", backend="torch")
    got = ex.embed_tensor(x).cls
    cos = float((ref * got).sum(1).min())
    return {"photos": len(photos), "min_cosine": cos, "target": 0.999, "ok": cos >= 0.999, "device": device}


def model_only(device: str, mods: dict[str, torch.nn.Module], batches: list[int], seconds: float,
               trials: int) -> list[dict]:
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows = []
    for name, model in mods.items():
        ex = Extractor(model, device=device, backend="torch")  # auto precision: bf16 on the H200
        for b in batches:
            x = torch.randn(b, 3, 224, 224, device=dev)

            def run(x=x, b=b, ex=ex) -> int:
                ex.forward(x)
                sync()
                return b

            med = interleaved_medians({"m": run}, seconds, trials)["m"]
            rows.append({"model": name, "batch": b, "precision": ex.precision, "img_s": med})
            print(f"  {name} batch {b} {ex.precision}: {med:.1f} img/s (model only)", flush=True)
        ex = None  # free the model copy before the next one
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def end_to_end(device: str, mods: dict[str, torch.nn.Module], files: list[Path], batches: list[int],
               workers: int, trials: int) -> list[dict]:
    """Files on disk to vectors through Extractor.iter_files; also the decode rate alone, per decode thread."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def decode_all() -> int:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(eval_input, files))
        return len(files)

    decode = interleaved_medians({"d": decode_all}, 0.0, trials)["d"]
    print(f"  decode + eval transform: {decode:.1f} files/s with {workers} threads "
          f"({decode / workers:.1f} per thread)", flush=True)
    rows = []
    for name, model in mods.items():
        for b in batches:
            ex = Extractor(model, device=device, batch_size=b, workers=workers, backend="torch")

            def run(ex=ex) -> int:
                n = sum(len(batch.indices) for batch in ex.iter_files(files))
                sync()
                return n

            med = interleaved_medians({"e": run}, 0.0, trials)["e"]
            rows.append({"model": name, "batch": b, "precision": ex.precision, "files_s": med, "workers": workers,
                         "decode_files_s": decode, "decode_per_thread": decode / workers})
            print(f"  {name} batch {b}: {med:.1f} files/s end to end", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes: checks that the script runs")
    ap.add_argument("--out", type=Path, default=Path("out"))
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: all cores)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA GPU (run with --device cpu --quick to smoke-test)")
    quick = args.quick
    mods = models(quick)
    samples = sorted((ROOT / "assets" / "sample").rglob("*.jpg"))[: 8 if quick else None]
    workers = args.workers or (2 if quick else os.cpu_count() or 4)
    t0 = time.perf_counter()
    result: dict = {"machine": machine(), "device": args.device, "quick": quick}
    print("parity (bf16 on the device vs fp32 on the CPU, sample photos):", flush=True)
    result["parity"] = {name: parity(args.device, m, samples) for name, m in mods.items()}
    for name, p in result["parity"].items():
        print(f"  {name}: min CLS cosine {p['min_cosine']:.5f} ({'ok' if p['ok'] else 'BELOW 0.999'})", flush=True)
    batches = [2, 4] if quick else [64, 256]
    print("extraction, model only:", flush=True)
    result["model_only"] = model_only(args.device, mods, batches, 0.2 if quick else 3.0, 1 if quick else 3)
    # 64 distinct 12 MP photos (making them is single-threaded, ~1 s each), each read 8 times: every read decodes.
    distinct = make_photos(8 if quick else 64, megapixels=1 if quick else 12, folder=args.out / "photos")
    files = distinct * (2 if quick else 8)
    print(f"extraction, end to end from {len(files)} JPEGs:", flush=True)
    result["end_to_end"] = end_to_end(args.device, mods, files, batches, workers, 1 if quick else 2)
    result["seconds"] = time.perf_counter() - t0
    (args.out / "gpu_check_model.json").write_text(json.dumps(result, indent=2))
    print(f"saved {args.out / 'gpu_check_model.json'}")
    if not all(p["ok"] for p in result["parity"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
