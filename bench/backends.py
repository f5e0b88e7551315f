"""Which runtime is faster for which ViT on this CPU: torch against OpenVINO through the Extractor, as indexing
runs them (32 images a call; torch takes them in chunks of 8, OpenVINO whole), for ViT-S/B/L and dino.txt's
image side, in bf16 (where the CPU has it) and fp32. `auto` in engine.runtime follows this table.

    python bench/backends.py [--models dinov2_vits14 dinov2_vitb14 dinov2_vitl14_reg] [--seconds 4] [--trials 3]

Random weights (speed does not depend on the values); interleaved trials, medians.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import interleaved_medians, machine, save_json, table
from engine.device import cpu_has_fast_bf16
from engine.extract import Extractor
from engine.models.config import OFFICIAL_CONFIGS
from engine.models.vision_transformer import DinoVisionTransformer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14_reg"])
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"] if cpu_has_fast_bf16() else ["fp32"])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(32, 3, 224, 224)
    rows, results = [], {"machine": machine(), "threads": torch.get_num_threads(), "models": {}}
    for name in args.models:
        model = DinoVisionTransformer(OFFICIAL_CONFIGS[name]).eval()
        for precision in args.precisions:
            fns = {}
            for backend in ("torch", "openvino"):
                ex = Extractor(model, device="cpu", precision=precision, backend=backend)
                fns[backend] = lambda ex=ex: (ex.embed_tensor(x), len(x))[1]
            rates = interleaved_medians(fns, args.seconds, args.trials)
            results["models"][f"{name} {precision}"] = rates
            faster = max(rates, key=rates.get)
            rows.append([name, precision, rates["torch"], rates["openvino"], rates["openvino"] / rates["torch"],
                         faster])
            print(f"{name} {precision}: torch {rates['torch']:.1f}, openvino {rates['openvino']:.1f} img/s",
                  flush=True)
        del model
    print(f"\n{results['machine']}, {results['threads']} threads\n")
    print(table(["model", "precision", "torch img/s", "OpenVINO img/s", "OpenVINO / torch", "faster"], rows))
    save_json("backends_cpu", results)


if __name__ == "__main__":
    main()
