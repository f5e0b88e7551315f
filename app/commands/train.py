"""`python -m app train`: self-supervised DINOv2 training (or distillation) on a folder, a file list or a library.

Progress goes to stderr, one line per logged step; the run folder holds the config, checkpoints, events.jsonl and
teacher_backbone.pt (loadable anywhere a model is asked for). Exit codes: 0 finished (or stopped at --stop-at),
1 stopped by a NaN/inf loss (the last good checkpoint stays), 2 bad config, data or run folder (nothing trained;
also --out holding another run's files without --resume or --overwrite), 130 interrupted by SIGINT/SIGTERM with
a checkpoint saved (`--resume` continues). Under
`torchrun --nproc_per_node N -m app train ...` the same command trains with DDP.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from app.progress import fmt_secs

EXAMPLES = """examples:
  python -m app train --preset tiny-cpu --data ~/Pictures --out runs/first
  python -m app train --preset finetune --library default --out runs/ft --set optim.epochs=5
  python -m app train --preset distill --data photos.txt --out runs/small --set teacher.distill_from=dinov2_vitl14
  python -m app train --out runs/first --resume
  torchrun --nproc_per_node 4 -m app train --preset vitb14-scratch --data /data/imgs --out runs/b
presets: vits14-scratch, vitb14-scratch, finetune, distill, tiny-cpu (any config key can be --set)
"""

EXIT = {"done": 0, "stopped": 0, "nan": 1}
EXIT_INTERRUPTED = 130


def add_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a DINOv2 backbone on your own photos (self-supervised, or distilled)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--preset", help="starting config: vits14-scratch, vitb14-scratch, finetune, distill, tiny-cpu")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--data", help="a folder of images (searched recursively) or a text file listing images")
    src.add_argument("--library", help="a Dinoscope library (name or folder): its decoded photos")
    t.add_argument("--out", required=True, type=Path, help="the run folder (created; must not hold another run)")
    t.add_argument("--init", help="start both networks from this backbone (zoo name or checkpoint), new heads")
    start = t.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    start.add_argument("--overwrite", action="store_true",
                       help="start a new run in --out even though it holds one (its model, log and checkpoints "
                       "are replaced)")
    t.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. optim.epochs=20 optim.batch_size_per_device=32 device=cuda")
    t.add_argument("--eval-data", type=Path, help="a labelled folder (one sub-folder per class): k-NN and "
                   "linear-probe accuracy of the result, written to events.jsonl")
    t.add_argument("--log-every", type=int, default=10, help="steps between progress lines and events")
    t.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (one epoch)")
    t.add_argument("--keep", type=int, default=3, help="checkpoints kept (the newest)")
    t.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop with a checkpoint after this many steps (resume later)")


def _source(args: argparse.Namespace) -> str | None:
    if args.library:
        return f"library:{args.library}"
    if args.data:
        return str(Path(args.data).expanduser().resolve())
    return None


def _resume_check(args: argparse.Namespace) -> None:
    """--resume uses the run's config.yaml; options that would change it are refused rather than ignored."""
    from trainer.config import apply_overrides
    from trainer.run_dir import Run

    saved = Run(args.out).load_config()
    problems = []
    if args.preset and args.preset != saved.preset:
        problems.append(f"--preset {args.preset} (the run uses {saved.preset})")
    source = _source(args)
    if source and source != saved.data.source:
        problems.append(f"the data source {source} (the run uses {saved.data.source})")
    if args.init and args.init != saved.model.pretrained:
        problems.append(f"--init {args.init} (the run started from {saved.model.pretrained})")
    if args.overrides:
        changed = apply_overrides(saved, args.overrides)
        if changed.to_dict() != saved.to_dict():
            problems.append("--set " + " ".join(args.overrides))
    if problems:
        raise ValueError(
            f"--resume continues {args.out} with its saved config.yaml and cannot change "
            f"{'; '.join(problems)}. Edit {Run(args.out).config_path} to change the run's settings."
        )


def _new_config(args: argparse.Namespace):
    from trainer.config import apply_overrides, preset

    if not args.preset:
        raise ValueError("a new run needs --preset (vits14-scratch, vitb14-scratch, finetune, distill, tiny-cpu)")
    source = _source(args)
    if source is None:
        raise ValueError("a new run needs --data PATH or --library NAME")
    cfg = preset(args.preset)
    cfg.data.source = source
    return apply_overrides(cfg, args.overrides)


class _Printer:
    """Turns events into progress lines on stderr."""

    def __init__(self) -> None:
        self.stream = sys.stderr

    def __call__(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        line = None
        if kind in ("start", "resume"):
            n = ev.get("threads")
            threads = f", {n} thread{'s' if n > 1 else ''}" if n else ""
            ranks = f", {ev['world_size']} processes" if ev.get("world_size", 1) > 1 else ""
            params = sum(ev.get("params", {}).values())
            line = (f"{'resuming at step ' + str(ev['step']) if kind == 'resume' else 'training'} "
                    f"({ev.get('preset')}, {params / 1e6:.1f}M trainable): {ev['total_steps']} steps on "
                    f"{ev.get('device')} {ev.get('precision')}{threads}, {ev.get('workers')} data workers{ranks}")
        elif kind == "train":
            losses = ev["losses"]
            parts = " ".join(f"{k} {v:.3f}" for k, v in losses.items() if k != "total")
            rate = ev.get("images_per_s")
            eta = ev["step_time"] * (ev["total_steps"] - ev["step"]) if ev.get("step_time") else None
            mem = f" {ev['gpu_mem_gb']:.1f} GB" if ev.get("gpu_mem_gb") is not None else ""
            line = (f"step {ev['step']}/{ev['total_steps']} ep {ev['epoch']} loss {losses['total']:.4f} ({parts}) "
                    f"lr {ev['lr']:.2e} T {ev['teacher_temp']:.3f} "
                    f"{rate:.1f} img/s {ev['step_time']:.2f} s/step{mem} ETA {fmt_secs(eta)}")
        elif kind == "checkpoint":
            line = f"checkpoint: {ev['path']}"
        elif kind == "skipped":
            line = f"skipped: {ev['message']}"
        elif kind == "note":
            line = f"note: {ev['message']}"
        elif kind == "eval":
            line = (f"eval at step {ev['step']}: k-NN top-1 {100 * ev['knn_top1']:.1f}%, linear top-1 "
                    f"{100 * ev['linear_top1']:.1f}% ({len(ev['classes'])} classes, {ev['n_train']} train / "
                    f"{ev['n_val']} val)")
        elif kind == "end":
            line = ev["message"]
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from engine.progress import Cancelled
    from engine.store.schema import StoreError
    from trainer.train import train

    bad_input = (ValueError, OSError, RuntimeError, StoreError)
    try:
        if args.resume:
            _resume_check(args)
            cfg = None
        else:
            cfg = _new_config(args)
        summary = train(
            cfg, args.out, resume=args.resume, init=None if args.resume else args.init, log=_Printer(),
            eval_data=args.eval_data, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
            keep=args.keep, stop_at=args.stop_at, overwrite=args.overwrite,
        )
    except Cancelled:  # SIGINT/SIGTERM: the checkpoint is saved and the end event printed the message
        return EXIT_INTERRUPTED
    except bad_input as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary.status in ("done", "stopped") and int(os.environ.get("RANK", "0")) == 0:
        model = Path(summary.run_dir) / "teacher_backbone.pt"
        print(f"{summary.message}; run folder {summary.run_dir}, model {model}")
    return EXIT.get(summary.status, 1)
