"""`python -m app eval`: k-NN and linear-probe top-1 of any backbone on a labelled folder (one sub-folder per class).

Exit codes: 0 ok, 1 evaluated but some images could not be read (listed on stderr), 2 nothing evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.progress import ProgressBar


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="k-NN and linear-probe accuracy of a backbone on a labelled photo folder")
    e.add_argument("--model", required=True,
                   help="zoo name, .pth/.safetensors file, Hugging Face folder, Dinoscope checkpoint or run file")
    e.add_argument("--data", required=True, type=Path,
                   help="labelled folder: one sub-folder per class (or train/ and val/ holding those)")
    e.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    e.add_argument("--k", type=int, default=20, help="neighbours for the k-NN vote")
    e.add_argument("--val-fraction", type=float, default=0.25, help="share of each class held out for validation")
    e.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    e.add_argument("--crop", type=int, default=224, help="eval transform size (the protocol uses 224)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    e.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="inference precision")
    e.add_argument("--batch", type=int, default=None, help="images per forward pass")


def run(args: argparse.Namespace) -> int:
    from engine.models import CheckpointError, load_backbone
    from engine.models.download import DownloadError
    from trainer.evaluate import evaluate_backbone, labelled_splits

    try:
        labelled_splits(args.data, args.val_fraction, args.seed)  # a bad folder fails before any model download
        bar = ProgressBar(f"loading {args.model}", unit="B")
        model = load_backbone(args.model, progress=bar)
        bar = ProgressBar("features")
        result = evaluate_backbone(
            model, args.data, device=args.device, precision=args.dtype, batch_size=args.batch, k=args.k,
            val_fraction=args.val_fraction, seed=args.seed, crop=args.crop,
            progress=lambda p: bar.update(p.done, p.total),
        )
    except (CheckpointError, DownloadError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["model"] = str(args.model)
    for path in result["unreadable"]:
        print(f"skipped: {path} could not be read", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        split = "train/ and val/ folders" if result["split"] == "folders" else "stratified split"
        print(f"k-NN top-1:    {100 * result['knn_top1']:5.1f}%  (k={result['k']}, T={result['temperature']})")
        print(f"linear top-1:  {100 * result['linear_top1']:5.1f}%  (logistic regression on [CLS, mean patch], "
              f"C={result['linear_C']:g})")
        print(f"{len(result['classes'])} classes, {result['n_train']} train / {result['n_val']} val images "
              f"({split}, {args.crop} px)")
    return 1 if result["unreadable"] else 0
