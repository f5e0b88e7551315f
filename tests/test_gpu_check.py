"""bench/gpu_check.sh as the CUDA machine runs it, shrunk to a CPU smoke run, so that it does not rot unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--quick"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["device"] == "cpu" and result["parity"]["tiny"]["ok"]
    assert result["parity"]["tiny"]["photos"] == 8 and result["parity"]["tiny"]["min_cosine"] >= 0.999
    assert [(r["model"], r["batch"]) for r in result["model_only"]] == [("tiny", 2), ("tiny", 4)]
    assert all(r["img_s"] > 0 for r in result["model_only"])
    assert all(r["files_s"] > 0 and r["workers"] == 2 for r in result["end_to_end"])
    assert "tiny-cpu b2 fp32 1t" in "\n".join(result["train_step"]["tail"])
    checkpoint = Path(result["train"]["checkpoint"])
    assert checkpoint.is_file() and checkpoint.parent == out / "train_run" / "checkpoints"
    table = (out / "gpu_check.md").read_text()
    assert "min CLS cosine" in table and "files/s" in table and checkpoint.name in table
