"""A training run is a folder, so a crash, a kill or a second process never loses more than the last few steps.

    RUN_DIR/
      config.yaml              the TrainConfig the run was started with (the source of truth for --resume)
      events.jsonl             one JSON object per line: logged steps, evaluations, start/stop/resume markers
      teacher_backbone.pt      the newest teacher backbone in Dinoscope's backbone format (engine.models)
      checkpoints/step_N.pt    full training state after N optimizer steps; the newest K are kept
      checkpoints/last.pt      the newest checkpoint (a hard link to its step_N.pt where the filesystem allows)
      checkpoints/step_N.nan.pt  a checkpoint set aside by the NaN guard (its weights gave a non-finite loss)

Every file is written atomically (temp file, fsync, rename) and every event line is flushed and fsynced before
the call returns, so a reader such as the GUI, tailing events.jsonl, never sees half a line or half a file.

Events (every line has `event` and `time`, Unix seconds; `step` counts optimizer steps done):
  start / resume  step, total_steps, preset, device, precision, world_size, threads, workers, params
  train           step, epoch, phase (main | high_res), losses {total, dino_local, dino_global, koleo, ibot}, lr,
                  wd, momentum, teacher_temp, last_layer_lr, grad_norm {submodule: norm}, images_per_s,
                  step_time (s), gpu_mem_gb (peak, null on CPU), total_steps
  checkpoint      step, path
  eval            step, knn_top1, linear_top1, n_train, n_val, classes, ... (trainer.evaluate.evaluate_backbone)
  skipped         step, path, message: an unreadable training image, reported once
  note            step, message
  end             step, status (done | stopped | interrupted | nan), message
On resume, the lines of steps after the checkpoint are dropped (the file is rewritten atomically), since those
steps run again. Non-finite numbers are written as the strings "nan", "inf", "-inf".
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.atomic import atomic_write_text

if TYPE_CHECKING:
    import torch

    from trainer.config import TrainConfig

__all__ = ["CHECKPOINT_FORMAT", "EventLog", "Run", "RunError"]

CHECKPOINT_FORMAT = "dinoscope-train"
CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
_NAN_FILE = re.compile(r"^step_(\d+)\.nan\.pt$")
# engine.atomic's temp names: ".<final name>.<random>.tmp"; last.pt's: ".last.pt.<pid>.tmp"
_TEMP_FILE = re.compile(r"^\.(.+?\.(?:pt|yaml|jsonl))\.[^.]+\.tmp$")


class RunError(ValueError):
    """A run folder that cannot be used as asked (already holds a run, has no checkpoint to resume, ...)."""


# ------------------------------------------------------------------------------------------------ events
def _plain(value: Any) -> Any:
    """JSON-safe numbers: NaN and infinities become strings ('nan', 'inf'), which strict JSON parsers accept."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class EventLog:
    """Appends one JSON object per line to a file, each flushed and fsynced before `write` returns."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def write(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append `event` (a `time` field is added when missing); returns what was written."""
        record = {"time": round(time.time(), 3), **event} if "time" not in event else dict(event)
        line = json.dumps(_plain(record), allow_nan=False, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return record

    def read(self) -> list[dict[str, Any]]:
        """Every complete line; a torn last line (a crash mid-write on a filesystem without atomic appends) is
        skipped."""
        return list(self)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def truncate_after(self, step: int) -> int:
        """Drop the events of steps after `step` (what a resume from that step will redo); returns how many.

        The file is rewritten atomically, so a reader sees either the old or the new file, never a mix.
        """
        kept, dropped = [], 0
        for ev in self:
            if isinstance(ev.get("step"), int) and ev["step"] > step:
                dropped += 1
            else:
                kept.append(ev)
        if dropped:
            atomic_write_text(self.path, "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in kept))
        return dropped


# ------------------------------------------------------------------------------------------------ the folder
class Run:
    """The files of one training run. Only one process (rank 0) should write through it."""

    CONFIG = "config.yaml"
    EVENTS = "events.jsonl"
    TEACHER = "teacher_backbone.pt"
    CHECKPOINTS = "checkpoints"
    LAST = "last.pt"

    def __init__(self, root: str | os.PathLike, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError("a run keeps at least one checkpoint")
        self.root = Path(root).expanduser()
        self.keep = keep
        self.events = EventLog(self.root / self.EVENTS)

    @property
    def config_path(self) -> Path:
        return self.root / self.CONFIG

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / self.LAST

    @property
    def teacher_path(self) -> Path:
        return self.root / self.TEACHER

    # ------------------------------------------------------------------------------------ queries
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every step_N.pt, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = []
        for p in self.checkpoint_dir.iterdir():
            m = _STEP_FILE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        """last.pt, or the newest step_N.pt if last.pt is missing (a crash between the two renames)."""
        if self.last_path.is_file():
            return self.last_path
        ckpts = self.checkpoints()
        return ckpts[-1][1] if ckpts else None

    def has_run(self) -> bool:
        """Whether the folder holds a run that can be resumed (a checkpoint); a config alone does not count."""
        return self.latest_checkpoint() is not None

    def run_files(self) -> list[Path]:
        """The files of a run present here (config, events, exported model, checkpoints): what a new run in this
        folder would replace. A finished run whose checkpoints/ was deleted still has its model and log."""
        found = [p for p in (self.config_path, self.events.path, self.teacher_path) if p.is_file()]
        if self.checkpoint_dir.is_dir():
            found += sorted(p for p in self.checkpoint_dir.iterdir() if p.name == self.LAST
                            or _STEP_FILE.match(p.name) or _NAN_FILE.match(p.name))
        return found

    def remove_run_files(self) -> list[Path]:
        """Delete `run_files()` (for a new run that replaces this one); other files in the folder stay."""
        found = self.run_files()
        for p in found:
            p.unlink(missing_ok=True)
        return found

    def remove_temp_files(self) -> list[Path]:
        """Delete the temp files of writes that never finished (a killed process leaves `.step_N.pt.*.tmp`, which
        can be as large as a checkpoint). Call only when no other process writes this run."""
        names = (self.CONFIG, self.EVENTS, self.TEACHER, self.LAST)
        found = []
        for folder in (self.root, self.checkpoint_dir):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                m = _TEMP_FILE.match(p.name)
                if m and p.is_file() and (m.group(1) in names or _STEP_FILE.match(m.group(1))):
                    found.append(p)
        for p in found:
            p.unlink(missing_ok=True)
        return sorted(found)

    # ------------------------------------------------------------------------------------ config
    def save_config(self, cfg: TrainConfig) -> Path:
        return cfg.save(self.config_path)

    def load_config(self) -> TrainConfig:
        from trainer.config import TrainConfig

        if not self.config_path.is_file():
            raise RunError(f"{self.root}: no {self.CONFIG} here, so there is no run to resume")
        return TrainConfig.load(self.config_path)

    # ------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict[str, Any], step: int,
                        teacher_backbone: torch.nn.Module | None = None) -> Path:
        """Write step_N.pt atomically, point last.pt at it, export the teacher backbone, drop the oldest beyond K.

        The order matters for a crash at any point: the step file is complete before last.pt moves to it, and
        older checkpoints go only after the new one is in place.
        """
        from engine.models.checkpoint import atomic_torch_save
        from engine.models.checkpoint import save_backbone as _save_backbone

        path = self.checkpoint_dir / f"step_{step}.pt"
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, path)
        self._point_last_at(path)
        if teacher_backbone is not None:
            _save_backbone(teacher_backbone, self.teacher_path)
        for _, old in self.checkpoints()[: -self.keep]:
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def _point_last_at(self, path: Path) -> None:
        tmp = self.checkpoint_dir / f".{self.LAST}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)  # no second copy of a possibly large file
        except OSError:
            shutil.copyfile(path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, self.last_path)

    def set_aside(self, step: int) -> Path | None:
        """Rename step_N.pt to step_N.nan.pt (no longer a resume candidate), point last.pt and
        teacher_backbone.pt back at the newest remaining checkpoint (or remove them); returns the new name.

        For a checkpoint whose weights were finite but produced a non-finite loss on the next step.
        """
        from engine.models import load_backbone
        from engine.models.checkpoint import save_backbone as _save_backbone

        path = self.checkpoint_dir / f"step_{step}.pt"
        if not path.is_file():
            return None
        aside = path.with_name(f"step_{step}.nan.pt")
        os.replace(path, aside)
        remaining = self.checkpoints()
        if remaining:
            newest = remaining[-1][1]
            self._point_last_at(newest)
            _save_backbone(load_backbone(newest), self.teacher_path)
        else:
            self.last_path.unlink(missing_ok=True)
            self.teacher_path.unlink(missing_ok=True)
        return aside

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """A training checkpoint, read without unpickling arbitrary objects."""
        import torch

        path = Path(path) if path is not None else self.latest_checkpoint()
        if path is None:
            raise RunError(f"{self.root}: no checkpoint to resume from (checkpoints/ is empty)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise RunError(f"{path}: cannot read the checkpoint, the file is corrupt or truncated "
                           f"({type(e).__name__}{': ' + first if first else ''})") from e
        if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
            raise RunError(f"{path}: not a Dinoscope training checkpoint")
        if obj.get("version", 0) > CHECKPOINT_VERSION:
            raise RunError(f"{path}: written by a newer Dinoscope (version {obj['version']}); please upgrade")
        return obj
