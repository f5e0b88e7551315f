"""Training-step throughput: images/s, step time, peak memory and, on a GPU, model FLOPs utilisation (MFU).

One step is the whole DINOv2 iteration of trainer/loop.py: schedules applied, student forward and backward on
2 global + n local crops per image with iBOT masks, per-submodule clipping, AdamW, the EMA teacher update. The
batch is built once from real photos through the training augmentation and collate, then reused, so data loading
is not in the step time (the CPU table reports the augmentation pipeline's own rate beside it).

FLOPs are counted analytically from the batch actually used (matmuls, attention, patch embedding and heads; the
masked-token count comes from the batch): student forward x 3 (forward + backward) plus the teacher's forward.
On CUDA, torch.utils.flop_counter is run on one step as a cross-check. MFU = FLOPs / step time / dense bf16 peak.

    python bench/train_step.py                 # CPU: tiny-cpu preset, fp32/bf16 x 1/2 threads and the trainer's
                                               # CPU default (auto precision, threads from the cores), as a ratio
    python bench/train_step.py --device cuda --batch 128 --model vitb14
    python bench/train_step.py --device cuda --model vits14 vitb14 --batch 64 128
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import interleaved_medians, machine, make_photos, save_json, table
from trainer.augment import MultiCropAugmentation
from trainer.config import TrainConfig, apply_overrides, preset
from trainer.data import MultiCropCollator
from trainer.distributed import configure_cpu_threads, data_workers
from trainer.meta_arch import SSLMetaArch, autocast_dtype
from trainer.param_groups import apply_optim_schedule, build_optimizer
from trainer.schedules import build_schedules

PRESET_OF = {"tiny-cpu": "tiny-cpu", "vits14": "vits14-scratch", "vitb14": "vitb14-scratch"}
# Dense bf16 tensor-core peaks (TFLOPS), most specific name first.
PEAK_BF16 = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
             ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0)]


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16:
        if key in name:
            return tflops
    return None


# ------------------------------------------------------------------------------------------------ FLOPs
def backbone_flops(bb: torch.nn.Module, n_images: int, size: int) -> float:
    """Forward FLOPs (2 per multiply-add) of a DinoVisionTransformer on n square images of `size` px."""
    c = bb.config
    n_patch = (size // c.patch_size) ** 2
    t = 1 + c.num_register_tokens + n_patch
    d = c.embed_dim
    ffn = 2 * t * d * c.ffn_hidden * (3 if c.ffn_layer == "swiglu" else 2)  # w1,w2,w3 or fc1,fc2
    block = 2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * t * d + ffn
    patch_embed = 2 * n_patch * 3 * c.patch_size**2 * d
    return float(n_images * (patch_embed + c.depth * block))


def head_flops(head: torch.nn.Module, n_vectors: int) -> float:
    per = sum(2 * m.in_features * m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear))
    per += 2 * head.last_layer.in_features * head.last_layer.out_features
    return float(n_vectors * per)


def step_flops(meta: SSLMetaArch, batch: dict) -> float:
    g, loc = batch["collated_global_crops"], batch["collated_local_crops"]
    masked = int(batch["mask_indices_list"].numel()) if meta.do_ibot else 0
    s, t = meta.student, meta.teacher
    ibot_s = s["ibot_head"] if "ibot_head" in s else s["dino_head"]
    ibot_t = t["ibot_head"] if "ibot_head" in t else t["dino_head"]
    student = backbone_flops(s["backbone"], len(g), g.shape[-1]) + head_flops(s["dino_head"], len(g) + len(loc))
    if len(loc):
        student += backbone_flops(s["backbone"], len(loc), loc.shape[-1])
    student += head_flops(ibot_s, masked)
    teacher = backbone_flops(t["backbone"], len(g), g.shape[-1]) + head_flops(t["dino_head"], len(g))
    teacher += head_flops(ibot_t, masked)
    return 3 * student + teacher


# ------------------------------------------------------------------------------------------------ setup
def config_for(model: str, batch: int, precision: str) -> TrainConfig:
    cfg = preset(PRESET_OF[model])
    return apply_overrides(cfg, [f"optim.batch_size_per_device={batch}", f"precision={precision}",
                                 "optim.warmup_epochs=0", "optim.freeze_last_layer_epochs=0"])


def real_batch(cfg: TrainConfig, photos: list[Path], seed: int = 0) -> dict:
    """One collated batch of real photos through the training augmentation and masks."""
    import random

    from engine.imageio import load_rgb

    aug = MultiCropAugmentation.from_config(cfg.crops)
    rng = np.random.default_rng(seed)
    images = [load_rgb(p, min_side=2 * cfg.crops.global_size) for p in photos]
    samples = [aug(images[i % len(images)], rng) for i in range(cfg.optim.batch_size_per_device)]
    random.seed(seed)
    return MultiCropCollator(cfg)(samples)


class Step:
    """One full training iteration on a fixed batch, on `device`."""

    def __init__(self, cfg: TrainConfig, batch: dict, device: torch.device, threads: int | None = None,
                 compile_backbone: bool = False) -> None:
        torch.manual_seed(0)
        self.cfg, self.device, self.threads = cfg, device, threads
        self.meta = SSLMetaArch.from_config(cfg, device=device).train()
        if compile_backbone:
            for net in (self.meta.student, self.meta.teacher):
                net["backbone"].forward_features = torch.compile(net["backbone"].forward_features)
        self.opt = build_optimizer(self.meta.student, cfg.optim)
        self.sched = build_schedules(cfg).at(cfg.optim.iters_per_epoch)
        self.batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        self.flops = step_flops(self.meta, batch)
        self.images = cfg.optim.batch_size_per_device

    def __call__(self) -> int:
        if self.threads:
            torch.set_num_threads(self.threads)
        s = self.sched
        apply_optim_schedule(self.opt, s["lr"], s["wd"], s["last_layer_lr"])
        self.opt.zero_grad(set_to_none=True)
        self.meta.forward_backward(self.batch, teacher_temp=s["teacher_temp"])
        self.meta.clip_gradients(self.cfg.optim.clip_grad)
        self.opt.step()
        self.meta.update_teacher(s["momentum"])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.images


def counted_flops(step: Step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    return float(fc.get_total_flops())


def data_rate(cfg: TrainConfig, photos: list[Path], seconds: float) -> float:
    """Samples/s of decode + multi-crop augmentation in one thread (what one DataLoader worker delivers)."""
    from engine.imageio import load_rgb

    aug = MultiCropAugmentation.from_config(cfg.crops)
    rng = np.random.default_rng(0)
    min_side = round(cfg.data.decode_scale * cfg.crops.global_size)
    torch.set_num_threads(1)
    n, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        aug(load_rgb(photos[i % len(photos)], min_side=min_side), rng)
        n += 1
        i += 1
    return n / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ runs
def run_cpu(args: argparse.Namespace, photos: list[Path]) -> dict:
    device = torch.device("cpu")
    steps: dict[str, Step] = {}
    for model in args.model:
        for b in args.batch:
            for prec in args.precisions:
                cfg = config_for(model, b, prec)
                batch = real_batch(cfg, photos)
                for th in args.threads:
                    steps[f"{model} b{b} {prec} {th}t"] = Step(cfg, batch, device, threads=th)
    # What `train` does on this CPU when nothing is --set: precision auto, threads = the physical cores its data
    # workers leave (data loading itself is not in the step; its one-thread rate is printed below the table).
    defaults = {}
    for model in args.model:
        for b in args.batch:
            cfg = config_for(model, b, "auto")
            workers = data_workers(cfg.data.num_workers, "cpu")
            before = torch.get_num_threads()
            threads = configure_cpu_threads(workers, threads=cfg.threads)
            torch.set_num_threads(before)
            precision = "bf16" if autocast_dtype(cfg.precision, device) is torch.bfloat16 else "fp32"
            key = f"{model} b{b} DEFAULT {precision} {threads}t (+{workers} data worker{'s' * (workers != 1)})"
            steps[key] = Step(cfg, real_batch(cfg, photos), device, threads=threads)
            defaults[key] = f"{model} b{b} fp32 1t"
    keys = list(steps)
    per_step = {k: (lambda s=steps[k]: sum(s() for _ in range(args.steps))) for k in keys}
    rates = interleaved_medians(per_step, args.seconds, args.trials)
    rows, results = [], []
    base = rates[keys[0]]
    for k in keys:
        s = steps[k]
        r = rates[k]
        rows.append([k, f"{r:.1f}", f"{s.images / r:.2f}", f"{s.flops / 1e9:.0f}", f"{r / base:.2f}x"])
        results.append({"variant": k, "images_per_s": r, "step_time_s": s.images / r,
                        "gflop_per_step": s.flops / 1e9})
    ratios = {k: rates[k] / rates[ref] for k, ref in defaults.items() if ref in rates}
    for k, ratio in ratios.items():
        print(f"{k}: {ratio:.2f}x {defaults[k]}")
    cfg0 = config_for(args.model[0], args.batch[0], "fp32")
    drate = data_rate(cfg0, photos, args.seconds)
    print(table(["variant (model, batch, precision, threads)", "img/s", "s/step", "GFLOP/step", "vs first"], rows))
    print(f"\naugmentation + decode, one thread ({args.model[0]} crops): {drate:.1f} images/s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (all variants alive): {rss:.0f} MB")
    return {"results": results, "data_images_per_s": drate, "peak_rss_mb": rss, "default_vs_fp32_1t": ratios}


def run_cuda(args: argparse.Namespace, photos: list[Path]) -> dict:
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak = args.peak_tflops or peak_tflops(device)
    rows, results = [], []
    for model in args.model:
        for b in args.batch:
            for prec in args.precisions:
                cfg = config_for(model, b, prec)
                batch = real_batch(cfg, photos)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                step = None
                try:
                    step = Step(cfg, batch, device, compile_backbone=args.compile)
                    for _ in range(args.warmup):
                        step()
                    times = []
                    for _ in range(args.trials):
                        t0 = time.perf_counter()
                        for _ in range(args.steps):
                            step()
                        times.append((time.perf_counter() - t0) / args.steps)
                    mem = torch.cuda.max_memory_allocated(device) / 2**30
                    counted = None if args.compile else counted_flops(step)
                    flops = step.flops
                except torch.cuda.OutOfMemoryError:
                    rows.append([model, b, prec, "OOM", "", "", "", ""])
                    results.append({"model": model, "batch": b, "precision": prec, "oom": True})
                    continue
                finally:
                    del step  # free the model before the next variant
                t = statistics.median(times)
                achieved = flops / t / 1e12
                mfu = achieved / peak if peak else None
                rows.append([model, b, prec, f"{b / t:.0f}", f"{1000 * t:.1f}", f"{mem:.1f}", f"{achieved:.0f}",
                             f"{100 * mfu:.1f}%" if mfu is not None else "n/a"])
                results.append({"model": model, "batch": b, "precision": prec, "images_per_s": b / t,
                                "step_time_s": t, "peak_mem_gb": mem, "tflops": achieved, "mfu": mfu,
                                "flops_analytic": flops, "flops_counted": counted, "trials_s": times,
                                "crops": f"2x{cfg.crops.global_size} + {cfg.crops.n_local}x{cfg.crops.local_size}"})
    print(table(["model", "batch", "precision", "img/s", "ms/step", "peak GB", "TFLOP/s", "MFU"], rows))
    print(f"\nMFU against a dense bf16 peak of {peak} TFLOPS" if peak else "\nno bf16 peak known for this GPU")
    return {"results": results, "peak_tflops": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", nargs="+", default=None, choices=list(PRESET_OF),
                    help="default: tiny-cpu on CPU, vits14 and vitb14 on CUDA")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="per-device batch (default 16 CPU, 128 GPU)")
    ap.add_argument("--precisions", nargs="+", default=None, help="default fp32 bf16 on CPU, bf16 on CUDA")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="CPU intra-op threads to compare (the first precision at the first count is the baseline)")
    ap.add_argument("--steps", type=int, default=3, help="steps per timed measurement")
    ap.add_argument("--seconds", type=float, default=5.0, help="CPU: minimum seconds per measurement")
    ap.add_argument("--trials", type=int, default=3, help="the median of this many trials is reported")
    ap.add_argument("--warmup", type=int, default=3, help="CUDA: untimed steps first")
    ap.add_argument("--compile", action="store_true", help="CUDA: torch.compile the backbones")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense bf16 peak")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    args.model = args.model or (["vits14", "vitb14"] if cuda else ["tiny-cpu"])
    args.batch = args.batch or ([128] if cuda else [16])
    args.precisions = args.precisions or (["bf16"] if cuda else ["fp32", "bf16"])
    print(f"machine: {machine()}", flush=True)
    photos = make_photos(8, megapixels=1)
    out = run_cuda(args, photos) if cuda else run_cpu(args, photos)
    out.update(machine=machine(), args=vars(args))
    path = save_json(f"train_step_{'cuda' if cuda else 'cpu'}", out)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
