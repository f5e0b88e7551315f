"""dino.txt speed: image encoding (what `index --model dinov2_vitl14_reg4_dinotxt` costs), text encoding per
query, and a whole text query (tokenize + encode + search) over 100k library vectors.

Full-size architectures (ViT-L/14-reg + 2-block head; 1280-wide 24-layer text transformer) with random weights:
speed does not depend on the values. Goals: text encoding <= 30 ms per query, text query at 100k p50 <= 100 ms.

    python bench/text.py                   # CPU, everything
    python bench/text.py --skip-image      # text only (the image side loads 1.2 GB and is slow on a CPU)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, save_json, table
from engine.device import pick_device
from engine.extract import Extractor
from engine.models.config import OFFICIAL_CONFIGS
from engine.models.dinotxt import (
    DinoTxtImageEncoder,
    TextConfig,
    TextTower,
    VisionHead,
    VisionHeadConfig,
    VisionTower,
)
from engine.models.vision_transformer import DinoVisionTransformer
from engine.text import Tokenizer

QUERIES = [
    "a red motorcycle", "my daughter's birthday cake with candles", "sunset over the sea", "a cat sleeping on a sofa",
    "snowy mountains", "people dancing at a wedding", "a plate of sushi", "an old stone bridge in the fog",
    "a dog catching a frisbee on the beach", "receipts and documents", "fireworks", "a blue car parked in the street",
]


def _random_(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.02)
    return module.eval()


def text_tower(device: torch.device) -> TextTower:
    return _random_(TextTower(TextConfig())).to(device)


def int8_tower(tower: TextTower) -> torch.nn.Module:
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(tower, {torch.nn.Linear}, dtype=torch.qint8)


def time_text(tower: torch.nn.Module, tok: Tokenizer, dtype: torch.dtype, device: torch.device,
              rounds: int) -> list[float]:
    """Per-query milliseconds of tokenize + encode + normalise, one query at a time (what a search box does)."""
    ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)
    out = []
    with torch.inference_mode(), ctx:
        for i in range(rounds + 2):
            t0 = time.perf_counter()
            ids = tok.tokenize(QUERIES[i % len(QUERIES)]).to(device)
            F.normalize(tower(ids).float(), dim=-1).cpu()
            if i >= 2:  # warm-up
                out.append((time.perf_counter() - t0) * 1000)
    return out


def text_cosines(tower: torch.nn.Module, tok: Tokenizer, device: torch.device) -> dict[str, float]:
    """Mean cosine of bf16 (and int8) text embeddings to fp32 ones, over the benchmark's queries."""
    ids = tok.tokenize(QUERIES).to(device)
    with torch.inference_mode():
        ref = F.normalize(tower(ids).float(), dim=-1)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = F.normalize(tower(ids).float(), dim=-1)
        out = {"bf16": float((ref * bf16).sum(-1).mean())}
        if device.type == "cpu":
            out["int8"] = float((ref * F.normalize(int8_tower(tower)(ids).float(), dim=-1)).sum(-1).mean())
        import copy

        bf16w = F.normalize(copy.deepcopy(tower).to(torch.bfloat16)(ids).float(), dim=-1)
        out["bf16 weights"] = float((ref * bf16w).sum(-1).mean())
    return out


def time_image(device: torch.device, contenders: list[tuple[str, str]], seconds: float) -> dict[str, float]:
    """img/s per (backend, precision) through the Extractor (what indexing runs), each one's cosine to torch fp32."""
    backbone = _random_(DinoVisionTransformer(OFFICIAL_CONFIGS["dinov2_vitl14_reg"]))
    encoder = DinoTxtImageEncoder(VisionTower(backbone, _random_(VisionHead(VisionHeadConfig()))), "bench")
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out: dict[str, float] = {}
    ref = None
    for backend, precision in contenders:
        name = f"{backend}_{precision}"
        try:
            ex = Extractor(encoder, device=device, precision=precision, batch_size=8, patch_tokens=True,
                           backend=backend)
        except Exception as e:  # OpenVINO missing or failing: the row says so
            print(f"image {name}: {e}", flush=True)
            continue
        first = torch.from_numpy(ex.embed_tensor(x).cls)
        first = F.normalize(first, dim=-1)
        ref = first if ref is None else ref
        out[f"cos_{name}"] = float((first * ref).sum(-1).mean())
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            ex.embed_tensor(x)
            n += len(x)
        out[name] = n / (time.perf_counter() - t0)
        print(f"image {name}: {out[name]:.2f} img/s, cos {out[f'cos_{name}']:.5f}", flush=True)
    return out


def time_text_openvino(tower: TextTower, tok: Tokenizer, precision: str, rounds: int) -> tuple[list[float], float]:
    """The search box's encoder (engine.text.openvino_text.OpenVinoText) at `precision`: ms per query and mean
    cosine to torch fp32."""
    from engine.text.openvino_text import OpenVinoText

    t0 = time.perf_counter()
    encoder = OpenVinoText(tower, precision)
    print(f"text OpenVINO {precision}: converted and compiled in {time.perf_counter() - t0:.1f} s", flush=True)
    cosines, out = [], []
    with torch.inference_mode():
        for i in range(rounds + 2):
            t0 = time.perf_counter()
            v = F.normalize(encoder(tok.tokenize(QUERIES[i % len(QUERIES)])).float(), dim=-1)[0]
            if i >= 2:
                out.append((time.perf_counter() - t0) * 1000)
            if i < len(QUERIES):
                ref = F.normalize(tower(tok.tokenize(QUERIES[i % len(QUERIES)])).float(), dim=-1)[0]
                cosines.append(float((ref * v).sum()))
    return out, statistics.mean(cosines)


def flat_index(n: int):
    """The library's own VectorIndex over n random 2048-d vectors (flat under 1M vectors; its search path)."""
    from engine.store.vectors import VectorIndex, build_faiss

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((n, 2048), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    return VectorIndex(0, 0, 2048, ids, matrix, build_faiss(matrix, ids, "flat"), "flat")


def time_query_100k(encode, tok: Tokenizer, index, rounds: int, gap: float = 0.0) -> tuple[list[float], list[float]]:
    """Whole text queries (tokenize, encode, search k=20) in ms, and the search part alone. `gap`: seconds between
    queries (untimed), as a person types; back to back, numpy's BLAS threads still spin from the previous search
    while the next text is encoded."""
    out, search = [], []
    with torch.inference_mode():
        for i in range(rounds + 2):
            time.sleep(gap)
            t0 = time.perf_counter()
            q = F.normalize(encode(tok.tokenize(QUERIES[i % len(QUERIES)])).float(), dim=-1)
            t1 = time.perf_counter()
            index.search(q.cpu().numpy(), 20)
            if i >= 2:
                out.append((time.perf_counter() - t0) * 1000)
                search.append((time.perf_counter() - t1) * 1000)
    return out, search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--image-seconds", type=float, default=20.0)
    ap.add_argument("--skip-image", action="store_true")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--openvino", action="store_true", help="also time the text encoder through OpenVINO")
    args = ap.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    tok = Tokenizer()
    results: dict = {"machine": machine(), "threads": torch.get_num_threads()}
    rows = []

    tower = text_tower(device)
    precisions = [("fp32", torch.float32), ("bf16", torch.bfloat16)]
    for name, dtype in precisions:
        ms = time_text(tower, tok, dtype, device, args.rounds)
        results[f"text_ms_{name}"] = ms
        rows.append([f"text encoding, {name}", f"{statistics.median(ms):.1f} ms", f"{max(ms):.1f} ms"])
        print(f"text {name}: p50 {statistics.median(ms):.1f} ms", flush=True)
    import copy

    ms = time_text(copy.deepcopy(tower).to(torch.bfloat16), tok, torch.float32, device, args.rounds)
    results["text_ms_bf16_weights"] = ms
    rows.append(["text encoding, bf16 weights", f"{statistics.median(ms):.1f} ms", f"{max(ms):.1f} ms"])
    print(f"text bf16 weights: p50 {statistics.median(ms):.1f} ms", flush=True)
    if device.type == "cpu" and not args.skip_int8:
        ms = time_text(int8_tower(tower), tok, torch.float32, device, args.rounds)
        results["text_ms_int8"] = ms
        rows.append(["text encoding, int8 (dynamic)", f"{statistics.median(ms):.1f} ms", f"{max(ms):.1f} ms"])
        print(f"text int8: p50 {statistics.median(ms):.1f} ms", flush=True)

    if args.openvino and device.type == "cpu":
        for precision in ("fp32", "bf16", "int8"):
            ms, cos = time_text_openvino(tower, tok, precision, args.rounds)
            results[f"text_ms_openvino_{precision}"], results[f"text_cos_openvino_{precision}"] = ms, cos
            what = f"text encoding, OpenVINO {precision}" + (" (the search box)" if precision == "int8" else "")
            rows.append([what, f"{statistics.median(ms):.1f} ms", f"cos to fp32 {cos:.5f}"])
            print(f"text OpenVINO {precision}: p50 {statistics.median(ms):.1f} ms, cos {cos:.5f}", flush=True)
    medians = {name: statistics.median(results[f"text_ms_{name}"]) for name, _ in precisions}
    best = min(medians, key=medians.get)
    cosines = text_cosines(tower, tok, device)
    results["text_cosine_to_fp32"] = cosines
    for name, cos in cosines.items():
        rows.append([f"text embedding cosine to fp32, {name}", f"{cos:.5f}", ""])
    index = flat_index(args.vectors)
    dtype = dict(precisions)[best]

    def torch_encode(ids: torch.Tensor, tower: torch.nn.Module = tower) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return tower(ids.to(device))

    encoders = {f"torch {best}": torch_encode}
    if args.openvino and device.type == "cpu":
        from engine.text.openvino_text import OpenVinoText

        encoders["OpenVINO int8, the search box"] = OpenVinoText(tower, "int8")
    for label, encode in encoders.items():
        for gap in (0.0, 0.3):
            ms, search = time_query_100k(encode, tok, index, args.rounds, gap)
            what = f"{label}, {'back to back' if not gap else f'{gap:g} s apart'}"
            results[f"query_100k_ms {what}"], results[f"search_100k_ms {what}"] = ms, search
            rows.append([f"text query over {args.vectors:,} vectors ({what}; flat search k=20: "
                         f"{statistics.median(search):.1f} ms)", f"{statistics.median(ms):.1f} ms",
                         f"{max(ms):.1f} ms"])
    del tower

    if not args.skip_image:
        contenders = [("torch", "fp32"), ("torch", "bf16")]
        if device.type == "cpu":
            contenders += [("openvino", "fp32"), ("openvino", "bf16")]
        image = time_image(device, contenders, args.image_seconds)
        results["image"] = image
        for backend, precision in contenders:
            name = f"{backend}_{precision}"
            if name in image:
                rows.append([f"image encoding (index), {backend} {precision}, batch 8 @224",
                             f"{image[name]:.2f} img/s", f"cos to torch fp32 {image[f'cos_{name}']:.5f}"])

    print(f"{results['machine']}, {results['threads']} threads\n")
    print(table(["what", "p50", "max"], rows))
    save_json("text", results)


if __name__ == "__main__":
    main()
