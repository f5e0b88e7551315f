"""Extraction throughput: Dinoscope's backbone beside Hugging Face `transformers` Dinov2Model.

Same random ViT-S/14 weights in both, the same input tensors (real photos through the eval transform), measured
in one run with every contender alternating per trial; ratios are Dinoscope / transformers. Also: the int8 path,
CLS cosine of each reduced precision against fp32, and end-to-end throughput from 12 MP JPEG files on disk.

    python bench/extract.py                      # CPU: batch 1, 8, 32, fp32 and bf16
    python bench/extract.py --device cuda --batches 64 256 --skip-int8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import interleaved_medians, machine, make_photos, save_json, table
from engine.extract import Extractor, eval_input
from engine.models import build_backbone, save_hf


def hf_model(ours: torch.nn.Module, device: torch.device):
    from transformers import AutoModel

    with tempfile.TemporaryDirectory() as d:
        save_hf(ours, d)
        return AutoModel.from_pretrained(d).eval().to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dinov2_vits14")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum seconds per measurement")
    ap.add_argument("--trials", type=int, default=3, help="the median of this many trials is reported")
    ap.add_argument("--photos", type=int, default=64, help="12 MP JPEGs for the end-to-end run (0 to skip)")
    ap.add_argument("--skip-int8", action="store_true")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = build_backbone(args.model).eval().to(device)
    hf = hf_model(ours, device)
    sample_files = make_photos(8, megapixels=2)
    base = torch.stack([eval_input(p) for p in sample_files])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"machine: {machine()}", flush=True)

    rows, results = [], []
    extractors = {p: Extractor(ours, device=device, precision=p) for p in args.precisions}
    for b in args.batches:
        x = base.repeat((b + len(base) - 1) // len(base), 1, 1, 1)[:b].contiguous().to(device)
        fns = {}
        for prec in args.precisions:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]

            def run_hf(dtype=dtype, x=x, b=b) -> int:
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype,
                                                            enabled=dtype != torch.float32):
                    hf(pixel_values=x).pooler_output.float().cpu()
                sync()
                return b

            def run_ours(ex=extractors[prec], x=x, b=b) -> int:
                ex.embed_tensor(x)
                sync()
                return b

            fns[f"hf-{prec}"] = run_hf
            fns[f"ours-{prec}"] = run_ours
        med = interleaved_medians(fns, args.seconds, args.trials)
        for prec in args.precisions:
            h, o = med[f"hf-{prec}"], med[f"ours-{prec}"]
            rows.append([b, prec, h, o, f"{o / h:.2f}x"])
            results.append({"batch": b, "precision": prec, "transformers": h, "dinoscope": o, "ratio": o / h})
            print(f"  batch {b:>3} {prec}: transformers {h:6.1f}  dinoscope {o:6.1f} img/s  ({o / h:.2f}x)",
                  flush=True)

    # Accuracy of the reduced-precision paths on real photos (random weights: a numerical check only).
    ref = extractors.get("fp32") or Extractor(ours, device=device, precision="fp32")
    fp32 = ref.embed_tensor(base.to(device)).cls
    cos = {}
    for prec in [p for p in args.precisions if p != "fp32"]:
        cos[prec] = float((fp32 * extractors[prec].embed_tensor(base.to(device)).cls).sum(1).min())
    int8_rate = None
    if not args.skip_int8 and device.type == "cpu":
        q = Extractor(ours, device="cpu", precision="int8")
        cos["int8"] = float((fp32 * q.embed_tensor(base).cls).sum(1).min())
        x8 = base.repeat(1, 1, 1, 1)[:8]
        int8_rate = interleaved_medians({"int8": lambda: (q.embed_tensor(x8), 8)[1]}, args.seconds, args.trials)
        int8_rate = int8_rate["int8"]
        best = max(r["dinoscope"] for r in results if r["batch"] == 8) if 8 in args.batches else None
        rows.append([8, "int8", "-", int8_rate, f"{int8_rate / best:.2f}x of our best" if best else "-"])

    print()
    print(f"## Extraction, {args.model} random weights, 224 px, {machine()}")
    print(table(["batch", "precision", "transformers img/s", "Dinoscope img/s", "ratio"], rows))
    print("min CLS cosine vs fp32: " + ", ".join(f"{k} {v:.5f}" for k, v in cos.items()))

    e2e = None
    if args.photos:
        files = make_photos(args.photos, megapixels=12)
        best_prec = extractors["bf16"] if "bf16" in extractors and device.type != "cpu" else None
        ex = best_prec or Extractor(ours, device=device)  # what a user gets with --dtype auto
        bsz = ex.batch_size
        xb = base.repeat((bsz + 7) // 8, 1, 1, 1)[:bsz].to(device)

        def model_only() -> int:
            ex.embed_tensor(xb)
            sync()
            return bsz

        def end_to_end() -> int:
            for _ in ex.iter_files(files):
                pass
            sync()
            return len(files)

        med = interleaved_medians({"model": model_only, "e2e": end_to_end}, args.seconds, args.trials)
        e2e = {"precision": ex.precision, "batch": bsz, "files": len(files), "model_only": med["model"],
               "end_to_end": med["e2e"], "ratio": med["e2e"] / med["model"]}
        print()
        print(f"## End to end from {len(files)} 12 MP JPEGs ({ex.precision}, batch {bsz}, "
              f"{ex.workers} decode threads)")
        print(table(["model only img/s", "files on disk img/s", "ratio"],
                    [[med["model"], med["e2e"], f"{med['e2e'] / med['model']:.0%}"]]))
    path = save_json(f"extract_{device.type}", {"machine": machine(), "model": args.model, "rows": results,
                                                "cosine": cos, "int8": int8_rate, "e2e": e2e})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
