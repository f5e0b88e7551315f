"""`python -m app train` and `python -m app eval` as a user runs them: real subprocesses, photos, runs, libraries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.device import cpu_has_fast_bf16
from engine.models import load_backbone, save_backbone
from tests.helpers import tiny_backbone
from trainer.run_dir import EventLog, Run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["optim.batch_size_per_device=4", "crops.n_local=2", "model.depth=2", "optim.epochs=2",
        "optim.iters_per_epoch=2", "optim.warmup_epochs=0.5", "teacher.warmup_temp_epochs=1", "data.num_workers=0"]


def run_cli(*args: str, home: Path, timeout: float = 180, launcher: list[str] | None = None):
    env = dict(os.environ, DINOSCOPE_HOME=str(home), TORCH_HOME=str(home / "torch"), OMP_NUM_THREADS="1")
    env["DINOSCOPE_ZOO_URL"] = "http://127.0.0.1:9"  # offline
    cmd = (launcher or [sys.executable, "-m", "app"]) + list(args)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, skimage_data_dir: Path) -> Path:
    """Three classes of small real-photo crops, 5 each: a training set and a labelled eval set in one."""
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    for name, f in {"astronaut": "astronaut.png", "cat": "chelsea.png", "coffee": "coffee.png"}.items():
        (root / name).mkdir()
        img = Image.open(skimage_data_dir / f).convert("RGB")
        w, h = img.size
        for i in range(5):
            s = rng.uniform(0.5, 0.9)
            x, y = int(rng.integers(0, w - w * s + 1)), int(rng.integers(0, h - h * s + 1))
            img.crop((x, y, x + int(w * s), y + int(h * s))).resize((112, 112)).save(root / name / f"{i}.jpg")
    return root


def test_train_then_eval_end_to_end(labelled: Path, tmp_path: Path, dinoscope_home: Path):
    out = tmp_path / "run"
    r = run_cli("train", "--preset", "tiny-cpu", "--data", str(labelled), "--out", str(out), "--log-every", "2",
                "--eval-data", str(labelled), "--set", *FAST, home=dinoscope_home)
    assert r.returncode == 0, r.stderr
    # tiny-cpu's precision is auto: bf16 autocast on a CPU with AVX512-BF16/AMX (this machine), fp32 elsewhere
    precision, dtype = ("bfloat16", "bf16") if cpu_has_fast_bf16() else ("fp32", "fp32")
    assert "training (tiny-cpu" in r.stderr and f"4 steps on cpu {precision}" in r.stderr
    assert "step 2/4 ep 0 loss" in r.stderr and "img/s" in r.stderr and "ETA" in r.stderr
    assert "eval at step 4: k-NN top-1" in r.stderr
    assert "finished 4 steps" in r.stdout and "teacher_backbone.pt" in r.stdout
    events = EventLog(out / "events.jsonl").read()
    ev = [e for e in events if e["event"] == "eval"]
    assert len(ev) == 1 and ev[0]["step"] == 4 and ev[0]["classes"] == ["astronaut", "cat", "coffee"]

    r = run_cli("eval", "--model", str(out / "teacher_backbone.pt"), "--data", str(labelled), "--json",
                "--dtype", dtype, home=dinoscope_home)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    # the same protocol, precision (the run's) and numbers as the run's own evaluation
    assert result["knn_top1"] == ev[0]["knn_top1"] and result["linear_top1"] == ev[0]["linear_top1"]
    assert result["n_train"] + result["n_val"] == 15

    r = run_cli("eval", "--model", str(out / "checkpoints" / "last.pt"), "--data", str(labelled),
                "--dtype", "fp32", home=dinoscope_home)
    assert r.returncode == 0, r.stderr
    assert "k-NN top-1:" in r.stdout and "linear top-1:" in r.stdout and "3 classes" in r.stdout

    # a finished run resumed: nothing left to do, exit 0
    r = run_cli("train", "--out", str(out), "--resume", home=dinoscope_home)
    assert r.returncode == 0, r.stderr


def cli(*args: str) -> int:
    """The CLI in this process (argument and input errors surface before any training)."""
    from app.cli import main

    return main(list(args))


def test_bad_input_exits_2_and_writes_nothing(labelled: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("DINOSCOPE_ZOO_URL", "http://127.0.0.1:9")  # offline
    out = tmp_path / "run"
    cases = [
        (["--preset", "nope", "--data", str(labelled)], "unknown preset 'nope'"),
        (["--preset", "tiny-cpu", "--data", str(tmp_path / "missing")], "no such folder or file list"),
        (["--preset", "tiny-cpu", "--data", str(labelled), "--set", "optim.base_l=1"], "did you mean 'base_lr'"),
        (["--preset", "tiny-cpu", "--data", str(labelled), "--set", "optim.epochs=0"], "must be >= 1"),
        (["--preset", "tiny-cpu"], "needs --data PATH or --library NAME"),
        (["--data", str(labelled)], "needs --preset"),
        (["--resume"], "no config.yaml here"),
        (["--preset", "tiny-cpu", "--library", "nolib"], "no library 'nolib'"),
        (["--preset", "tiny-cpu", "--data", str(labelled), "--eval-data", str(labelled / "cat")],
         "at least two sub-folders"),
        (["--preset", "distill", "--data", str(labelled), "--set", "teacher.distill_from=dinov2_vitl14"],
         "Cannot download"),
    ]
    for args, message in cases:
        assert cli("train", "--out", str(out), *args) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert not out.exists()
    assert cli("eval", "--model", str(tmp_path / "none.pt"), "--data", str(labelled)) == 2
    assert "no such file" in capsys.readouterr().err
    model = tmp_path / "tiny.pt"
    save_backbone(tiny_backbone(), model)
    assert cli("eval", "--model", str(model), "--data", str(labelled / "cat")) == 2
    assert "at least two sub-folders" in capsys.readouterr().err
    # A missing folder is reported before the model is fetched (no download attempt for a zoo name).
    assert cli("eval", "--model", "dinov2_vitg14", "--data", str(tmp_path / "nowhere")) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "download" not in err.lower()


def test_resume_refuses_to_change_the_run(labelled: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    new = ["--preset", "tiny-cpu", "--data", str(labelled), "--out", str(out)]
    assert cli("train", *new, "--stop-at", "1", "--set", *FAST) == 0
    assert "stopped at step 1" in capsys.readouterr().out
    assert cli("train", "--out", str(out), "--resume", "--set", "optim.epochs=9") == 2
    err = capsys.readouterr().err
    assert "cannot change" in err and "config.yaml" in err
    assert cli("train", "--out", str(out), "--resume", "--data", str(tmp_path)) == 2
    # the same options as the original command are accepted
    assert cli("train", *new, "--resume", "--stop-at", "2", "--set", *FAST) == 0
    assert [s for s, _ in Run(out).checkpoints()] == [1, 2]
    assert cli("train", *new) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_a_finished_run_is_not_replaced_without_overwrite(labelled: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    new = ["train", "--preset", "tiny-cpu", "--data", str(labelled), "--out", str(out), "--set", *FAST]
    assert cli(*new) == 0
    capsys.readouterr()
    shutil.rmtree(out / "checkpoints")  # a user frees space, keeping the trained model and its log
    kept = {name: (out / name).read_bytes() for name in ("teacher_backbone.pt", "config.yaml", "events.jsonl")}

    assert cli(*new) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and "--resume" in err and "teacher_backbone.pt" in err
    assert {name: (out / name).read_bytes() for name in kept} == kept  # nothing touched
    assert cli(*new[:-len(FAST) - 1], "--resume") == 2  # and nothing to resume from
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in kept} == kept

    (out / "notes.txt").write_text("mine")
    assert cli(*new, "--stop-at", "1", "--overwrite") == 0
    events = EventLog(out / "events.jsonl").read()
    assert events[0]["event"] == "start" and events[-1]["status"] == "stopped"
    assert [s for s, _ in Run(out).checkpoints()] == [1]
    assert (out / "teacher_backbone.pt").read_bytes() != kept["teacher_backbone.pt"]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    with pytest.raises(SystemExit) as exit_info:  # the two contradict each other: argparse says so, exit 2
        cli(*new, "--overwrite", "--resume")
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_temp_files_of_killed_writes_go_at_the_next_start(labelled: Path, tmp_path: Path, capsys):
    """A kill during a checkpoint write leaves engine.atomic's temp file; resuming the run removes it."""
    out = tmp_path / "run"
    new = ["train", "--preset", "tiny-cpu", "--data", str(labelled), "--out", str(out), "--set", *FAST]
    assert cli(*new, "--stop-at", "1") == 0
    leftovers = []
    for folder, name in ((out / "checkpoints", "step_2.pt"), (out / "checkpoints", "last.pt"),
                         (out, "teacher_backbone.pt"), (out, "config.yaml")):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)  # as engine.atomic names them
        os.write(fd, b"\0" * 100_000)
        os.close(fd)
        leftovers.append(Path(tmp))
    others = [out / "checkpoints" / ".notes.txt.abc.tmp", out / "mine.tmp", out / ".photo.jpg.x1.tmp"]
    for p in others:
        p.write_text("not the trainer's")
    capsys.readouterr()
    assert cli(*new, "--resume", "--stop-at", "2") == 0
    assert not [p for p in leftovers if p.exists()]
    assert all(p.exists() for p in others)
    assert "removed 4 temp file(s) of unfinished writes" in capsys.readouterr().err
    assert [s for s, _ in Run(out).checkpoints()] == [1, 2]


def test_train_on_a_library_or_a_file_list(labelled: Path, tmp_path: Path):
    from engine.store import Library, index_library

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((labelled / "cat").iterdir())[:3]:
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "bad.jpg").write_bytes(b"\xff\xd8\xff broken")
    with Library.open("mine") as lib:
        report = index_library(lib, tiny_backbone(), folders=[photos], precision="fp32", batch_size=2)
        assert report.failed == 1 and lib.counts()["ok"] == 3
    out = tmp_path / "run"
    assert cli("train", "--preset", "tiny-cpu", "--library", "mine", "--out", str(out), "--stop-at", "1",
               "--set", *FAST) == 0
    assert Run(out).load_config().data.source == "library:mine"
    assert not any(e["event"] == "skipped" for e in EventLog(out / "events.jsonl"))  # only decoded files

    # a text file list (what curation writes); relative paths are relative to the list, the bad file is skipped
    listing = tmp_path / "list.txt"
    listing.write_text("# my picks\nphotos/bad.jpg\n" + "".join(f"photos/{p.name}\n" for p in
                                                                  sorted(photos.glob("[0-9]*.jpg"))))
    out = tmp_path / "run2"
    assert cli("train", "--preset", "tiny-cpu", "--data", str(listing), "--out", str(out), "--stop-at", "1",
               "--set", *FAST) == 0
    skipped = [e for e in EventLog(out / "events.jsonl") if e["event"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["path"].endswith("bad.jpg")


@pytest.mark.slow
def test_torchrun_trains_with_ddp_on_two_processes(labelled: Path, tmp_path: Path, dinoscope_home: Path):
    out = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "app"]
    r = run_cli("train", "--preset", "tiny-cpu", "--data", str(labelled), "--out", str(out), "--log-every", "1",
                "--set", *FAST, "optim.epochs=1", home=dinoscope_home, launcher=launcher, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    events = EventLog(out / "events.jsonl").read()
    assert events[0]["event"] == "start" and events[0]["world_size"] == 2
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2]  # rank 0 alone writes
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2  # each rank's RNG state, for the resume
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert load_backbone(out / "teacher_backbone.pt").embed_dim == 192

    # stopped after step 1 and resumed under torchrun: the same losses as the straight run
    other = tmp_path / "resumed"
    r = run_cli("train", "--preset", "tiny-cpu", "--data", str(labelled), "--out", str(other), "--log-every", "1",
                "--stop-at", "1", "--set", *FAST, "optim.epochs=1", home=dinoscope_home, launcher=launcher,
                timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("train", "--out", str(other), "--resume", "--log-every", "1", home=dinoscope_home,
                launcher=launcher, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    def losses(run_dir: Path) -> dict:
        return {e["step"]: e["losses"] for e in EventLog(run_dir / "events.jsonl") if e["event"] == "train"}

    assert losses(other) == losses(out)
