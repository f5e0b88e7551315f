"""Training runs on real photos: the run folder, events, checkpoints and their rotation, the exported teacher,
a bit-for-bit resume (with and without DataLoader workers), SIGTERM, the NaN guard, high-res, distillation."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.models import BackboneConfig, DinoVisionTransformer, load_backbone, save_backbone
from engine.progress import Cancelled
from tests.helpers import tiny_config
from trainer.config import TrainConfig, apply_overrides, preset
from trainer.data import IterationBatches
from trainer.loop import LOSS_NAMES
from trainer.run_dir import EventLog, Run
from trainer.train import train

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
          "motorcycle_right.png", "hubble_deep_field.jpg"]
# tiny-cpu, shrunk further so a step takes a fraction of a second: 2 blocks, 4 images, 2 local crops.
FAST = ["optim.batch_size_per_device=4", "crops.n_local=2", "model.depth=2", "optim.epochs=2",
        "optim.iters_per_epoch=3", "optim.warmup_epochs=0.5", "teacher.warmup_temp_epochs=1", "data.num_workers=0"]
TRAIN_FIELDS = {"event", "time", "step", "epoch", "phase", "losses", "lr", "wd", "momentum", "teacher_temp",
                "last_layer_lr", "grad_norm", "images_per_s", "step_time", "gpu_mem_gb", "total_steps"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, skimage_data_dir: Path) -> Path:
    """Eight real photos, small (about 128 px) so that decoding costs nothing; JPEG and PNG."""
    d = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(PHOTOS):
        img = Image.open(skimage_data_dir / name).convert("RGB")
        img.thumbnail((160, 160))
        img.save(d / f"{Path(name).stem}.{'jpg' if i % 2 else 'png'}")
    return d


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch):
    """The same intra-op thread count in every run of a test, whatever the worker count (bitwise comparisons)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fast_config(photos: Path, *extra: str) -> TrainConfig:
    return apply_overrides(preset("tiny-cpu"), [f"data.source={photos}", *FAST, *extra])


def train_losses(run_dir: Path) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for ev in EventLog(run_dir / "events.jsonl"):
        if ev["event"] == "train":
            assert ev["step"] not in out, "a step is logged twice"
            out[ev["step"]] = ev["losses"]
    return out


def test_run_folder_events_checkpoint_rotation_and_teacher_export(photos: Path, tmp_path: Path):
    cfg = fast_config(photos)
    run_dir = tmp_path / "run"
    seen: list[dict] = []
    summary = train(cfg, run_dir, log_every=1, checkpoint_every=2, keep=2, log=seen.append)
    assert summary.status == "done" and summary.step == 6 == summary.total_steps
    assert set(summary.losses) == set(LOSS_NAMES.values())

    run = Run(run_dir)
    assert TrainConfig.load(run.config_path).to_dict() == cfg.to_dict()
    assert [s for s, _ in run.checkpoints()] == [4, 6]  # step 2 rotated out: the newest two are kept
    assert os.path.samefile(run.last_path, run.checkpoint_dir / "step_6.pt") or (
        run.last_path.read_bytes() == (run.checkpoint_dir / "step_6.pt").read_bytes())
    assert not list(run.checkpoint_dir.glob(".*tmp"))

    lines = (run_dir / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert events == seen  # the log callback gets exactly what is written
    assert [e["event"] for e in events][:2] == ["start", "train"] and events[-1]["event"] == "end"
    train_events = [e for e in events if e["event"] == "train"]
    assert [e["step"] for e in train_events] == [1, 2, 3, 4, 5, 6]
    for e in train_events:
        assert set(e) == TRAIN_FIELDS
        assert set(e["losses"]) == {"total", "dino_local", "dino_global", "koleo", "ibot"}
        assert all(math.isfinite(v) for v in e["losses"].values())
        assert e["gpu_mem_gb"] is None and e["images_per_s"] > 0 and e["step_time"] > 0
        assert e["phase"] == "main" and set(e["grad_norm"]) == {"backbone", "dino_head", "ibot_head"}
    assert [e["epoch"] for e in train_events] == [0, 0, 0, 1, 1, 1]
    assert train_events[0]["lr"] == 0.0 and train_events[1]["lr"] > 0  # linear warm-up from 0
    assert train_events[0]["last_layer_lr"] == 0.0 and train_events[3]["last_layer_lr"] > 0  # frozen in epoch 0
    assert train_events[0]["teacher_temp"] == pytest.approx(0.04)
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2, 4, 6]

    # The exported teacher and the checkpoint itself load like any backbone, and both are the teacher.
    ckpt = torch.load(run.last_path, weights_only=True)
    assert ckpt["step"] == 6 and ckpt["data"]["position"] == 6 and len(ckpt["rng"]) == 1
    exported = load_backbone(run.teacher_path)
    from_ckpt = load_backbone(run.last_path)
    reference = DinoVisionTransformer(BackboneConfig.from_dict(ckpt["backbone_config"])).eval()
    reference.load_state_dict({k[len("backbone."):]: v for k, v in ckpt["teacher"].items()
                               if k.startswith("backbone.")})
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        want = reference.forward_features(x)["x_norm_clstoken"]
        for model in (exported, from_ckpt):
            assert torch.equal(model.forward_features(x)["x_norm_clstoken"], want)
    student = {k[len("backbone."):]: v for k, v in ckpt["student"].items() if k.startswith("backbone.")}
    assert any(not torch.equal(student[k], v) for k, v in reference.state_dict().items())  # EMA != student

    # Indexed like an official model: the extractor takes it as is.
    from engine.extract import Extractor

    feats = list(Extractor(exported, device="cpu", precision="fp32").iter_files(sorted(photos.iterdir())[:3]))
    assert sum(len(b.indices) for b in feats) == 3

    # A second run into the same folder is refused; nothing there is touched.
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, run_dir)
    assert [s for s, _ in run.checkpoints()] == [4, 6]


def test_resume_gives_identical_losses_with_and_without_workers(photos: Path, tmp_path: Path):
    cfg = fast_config(photos)
    straight = train(cfg, tmp_path / "straight", log_every=1)
    assert straight.status == "done"
    expected = train_losses(tmp_path / "straight")
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]

    # Cancelled (engine.progress's cancel callback, as SIGTERM does) during step 3, then resumed in a fresh call.
    stop = threading.Event()
    seen: list[tuple[int, int | None]] = []
    with pytest.raises(Cancelled, match="after step 3 of 6; checkpoint saved"):  # the step in progress finishes
        train(cfg, tmp_path / "stopped", log_every=1, cancel=stop.is_set,
              progress=lambda p: seen.append((p.done, p.total)),
              log=lambda e: stop.set() if e.get("event") == "train" and e["step"] == 2 else None)
    assert seen == [(1, 6), (2, 6), (3, 6)]
    assert Run(tmp_path / "stopped").checkpoints()[-1][0] == 3
    assert EventLog(tmp_path / "stopped" / "events.jsonl").read()[-1]["status"] == "interrupted"
    second = train(None, tmp_path / "stopped", resume=True, log_every=1)
    assert second.status == "done" and second.step == 6
    assert train_losses(tmp_path / "stopped") == expected  # exactly equal, every step, every term

    # The data stream does not depend on DataLoader workers: one worker, stopped at step 2, then resumed.
    wcfg = apply_overrides(cfg, ["data.num_workers=1"])
    assert train(wcfg, tmp_path / "workers", log_every=1, stop_at=2).status == "stopped"
    assert train(None, tmp_path / "workers", resume=True, log_every=1).status == "done"
    assert train_losses(tmp_path / "workers") == expected

    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "workers" / "checkpoints" / "last.pt", weights_only=True)
    for part in ("student", "teacher"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k} differs after resume"

    events = EventLog(tmp_path / "stopped" / "events.jsonl").read()
    assert [e["event"] for e in events].count("resume") == 1
    with pytest.raises(ValueError, match="differs"):
        train(apply_overrides(cfg, ["optim.base_lr=0.1"]), tmp_path / "stopped", resume=True)


def test_iteration_batches_are_a_function_of_seed_rank_and_iteration(photos: Path):
    from trainer.data import InfiniteSampler, make_dataset

    cfg = fast_config(photos)
    images = make_dataset(cfg)
    ref = IterationBatches(images, cfg)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    b5 = ref[5]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    again = IterationBatches(images, cfg)[5]
    assert torch.equal(b5["collated_global_crops"], again["collated_global_crops"])
    assert torch.equal(b5["collated_masks"], again["collated_masks"])
    assert not torch.equal(ref[4]["collated_global_crops"], b5["collated_global_crops"])
    # the images of each iteration follow InfiniteSampler's stream, sharded like it across ranks
    for rank in (0, 1):
        sampler = iter(InfiniteSampler(len(images), rank=rank, world_size=2, seed=cfg.seed))
        flat = [next(sampler) for _ in range(4 * 4)]  # 4 iterations of 4 images, across two passes of 8
        assert IterationBatches(images, cfg, rank=rank, world_size=2).indices(3) == flat[12:16]


def _events_when(path: Path, predicate, timeout: float = 90.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = EventLog(path).read()
        if any(predicate(e) for e in events):
            return events
        time.sleep(0.1)
    raise AssertionError(f"no such event in {path} after {timeout} s")


def test_sigterm_saves_a_checkpoint_exits_130_and_resume_continues(photos: Path, tmp_path: Path,
                                                                   dinoscope_home: Path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home), OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "app", "train", "--preset", "tiny-cpu", "--data", str(photos),
            "--out", str(run_dir), "--log-every", "1", "--set", *FAST, "optim.epochs=20"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _events_when(run_dir / "events.jsonl", lambda e: e.get("event") == "train")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted (SIGTERM)" in err
    events = EventLog(run_dir / "events.jsonl").read()
    end = events[-1]
    assert end["event"] == "end" and end["status"] == "interrupted"
    ckpts = Run(run_dir).checkpoints()
    assert ckpts and ckpts[-1][0] == end["step"] >= 1
    stopped_at = end["step"]

    r = subprocess.run([sys.executable, "-m", "app", "train", "--out", str(run_dir), "--resume", "--stop-at",
                        str(stopped_at + 2), "--log-every", "1"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"resuming at step {stopped_at}" in r.stderr
    steps = sorted(train_losses(run_dir))
    assert steps == list(range(1, stopped_at + 3))
    assert Run(run_dir).checkpoints()[-1][0] == stopped_at + 2


def test_nan_guard_stops_with_a_message_and_keeps_the_last_good_checkpoint(photos: Path, tmp_path: Path):
    # lr warms up from 0 over 3 steps: step 1 changes nothing, step 2 (lr ~3e27) leaves huge but finite
    # weights, which are checkpointed, and step 3's forward pass on them is NaN.
    cfg = fast_config(photos, "optim.base_lr=1e30", "optim.warmup_epochs=1")
    run_dir = tmp_path / "run"
    summary = train(cfg, run_dir, log_every=1, checkpoint_every=1)
    assert summary.status == "nan" and summary.step == 2  # steps done; step 3 failed
    assert summary.message.startswith("training stopped at step 3: the loss is not finite (total=nan")
    run = Run(run_dir)
    # step 2's checkpoint holds the weights that gave the NaN: set aside, so step 1 is the newest again
    assert [s for s, _ in run.checkpoints()] == [1]
    assert (run.checkpoint_dir / "step_2.nan.pt").is_file()
    assert summary.checkpoint == str(run.last_path) and "last good checkpoint" in summary.message
    good = torch.load(run.last_path, weights_only=True)
    assert good["step"] == 1 and all(torch.isfinite(v).all() for v in good["student"].values())
    exported = load_backbone(run.teacher_path).state_dict()
    assert all(torch.equal(v, good["teacher"][f"backbone.{k}"]) for k, v in exported.items())
    end = EventLog(run.events.path).read()[-1]
    assert end["event"] == "end" and end["status"] == "nan" and end["message"] == summary.message
    assert end["losses"]["total"] == "nan"  # written as a string, so the file stays strict JSON
    # and the run resumes from the good checkpoint (here it would diverge again: the lr is still absurd)
    assert train(None, run_dir, resume=True, log_every=1).status == "nan"


def test_high_resolution_phase_follows_the_main_phase(photos: Path, tmp_path: Path):
    cfg = fast_config(photos, "optim.epochs=1", "optim.iters_per_epoch=2", "high_res.enabled=true",
                      "high_res.global_size=140", "high_res.local_size=56", "high_res.iterations=2",
                      "optim.warmup_epochs=0")
    summary = train(cfg, tmp_path / "run", log_every=1)
    assert summary.status == "done" and summary.step == 4 == summary.total_steps
    steps = [e for e in EventLog(tmp_path / "run" / "events.jsonl") if e["event"] == "train"]
    assert [e["phase"] for e in steps] == ["main", "main", "high_res", "high_res"]
    hr = cfg.for_high_res()
    assert steps[2]["lr"] == pytest.approx(hr.optim.scaled_lr())  # the compressed schedule, at a lower lr
    assert hr.optim.scaled_lr() < cfg.optim.scaled_lr()
    assert load_backbone(tmp_path / "run" / "teacher_backbone.pt").patch_size == 14
    # stopped inside the high-res phase and resumed: the same losses
    assert train(cfg, tmp_path / "again", log_every=1, stop_at=3).status == "stopped"
    assert train(None, tmp_path / "again", resume=True, log_every=1).status == "done"
    assert train_losses(tmp_path / "again") == train_losses(tmp_path / "run")


def test_distillation_frozen_teacher_kmeans_targets_and_ema_result(photos: Path, tmp_path: Path):
    teacher_path = tmp_path / "teacher.pt"
    torch.manual_seed(4)  # a random teacher with the official init: its features differ between images
    save_backbone(DinoVisionTransformer(tiny_config(img_size=112)), teacher_path)  # 128-d, 3 blocks
    cfg = apply_overrides(preset("distill"), [
        f"data.source={photos}", f"teacher.distill_from={teacher_path}", "model.arch=custom", "model.embed_dim=64",
        "model.depth=2", "model.num_heads=1", "model.layerscale=0.1", "crops.global_size=112", "crops.local_size=56",
        "crops.n_local=2", "head.hidden_dim=128", "head.bottleneck_dim=64", "head.ibot_bottleneck_dim=64",
        "optim.batch_size_per_device=4", "optim.epochs=1", "optim.iters_per_epoch=4", "optim.warmup_epochs=0",
        "teacher.warmup_temp_epochs=0", "data.num_workers=0", "device=cpu", "precision=fp32",
    ])
    assert cfg.mask.sample_probability == 0 and cfg.model.drop_path_rate == 0
    summary = train(cfg, tmp_path / "run", log_every=1, stop_at=2)
    assert summary.status == "stopped"
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["kind"] == "distill" and bool(ckpt["buffers"]["prototypes_fitted"])
    protos = ckpt["buffers"]["dino_prototypes"]
    # 8 photos -> 16 fitting images -> 32 CLS samples -> 8 DINO prototypes (one per 8 samples, at least 8)
    assert protos.shape == (8, 128) and ckpt["student"]["dino_head.last_layer.weight_g"].shape == (8, 1)
    assert torch.allclose(protos.norm(dim=1), torch.ones(8), atol=1e-5)
    assert ckpt["buffers"]["ibot_prototypes"].shape == (16, 128)
    assert not any(k.startswith("frozen") for k in ckpt["student"]) and "frozen_teacher" not in str(list(ckpt))

    # Resume rebuilds heads of the fitted size, and continues exactly as a straight run.
    assert train(None, tmp_path / "run", resume=True, log_every=1).status == "done"
    assert train(cfg, tmp_path / "straight", log_every=1).status == "done"
    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "straight")
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    init_mask = torch.zeros(1, 64)
    assert torch.equal(final["student"]["backbone.mask_token"], init_mask)  # no masking: never trained
    ema = load_backbone(tmp_path / "run" / "teacher_backbone.pt")
    assert ema.embed_dim == 64 and ema.config.drop_path_rate == 0  # the result is the student's EMA
    ema_sd = ema.state_dict()
    student = {k[len("backbone."):]: v for k, v in final["student"].items() if k.startswith("backbone.")}
    assert any(not torch.equal(ema_sd[k], student[k]) for k in ema_sd)

    # k-means prototypes give sharp targets: far below the uniform entropy ln K.
    from trainer.data import make_dataset
    from trainer.distill import DistillMetaArch

    meta = DistillMetaArch.build(cfg, torch.device("cpu"), checkpoint=final)
    meta.dino_prototypes.copy_(final["buffers"]["dino_prototypes"])
    meta.prototypes_fitted.fill_(True)
    batch = IterationBatches(make_dataset(cfg), cfg)[0]
    targets = meta.teacher_outputs(batch["collated_global_crops"], temp=0.04)["dino"]
    entropy = -(targets * targets.clamp_min(1e-12).log()).sum(-1).mean()
    assert entropy < 0.5 * math.log(8)
    assert torch.equal(load_backbone(teacher_path).state_dict()["cls_token"],
                       meta.frozen_teacher.state_dict()["cls_token"])
