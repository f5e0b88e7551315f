"""Training configuration: dataclasses with the DINOv2 defaults, YAML round trips, overrides and presets.

Presets are YAML files in trainer/presets/ (as the official repo keeps configs/train/*.yaml): each holds only
the keys where it departs from the defaults here, with comments saying why.

Defaults follow the official `ssl_default_config.yaml` and the paper (DINOV2_SPEC.md §4.1) except where the issue
asks otherwise: Sinkhorn-Knopp centring, an untied iBOT head, local crops of 98 px (a multiple of patch 14) and
weight decay ending at 0.2 (paper Table 16). A run saves its config beside its checkpoints, so every field here is
plain data (numbers, strings, bools, pairs) that survives `to_yaml` -> `from_yaml` unchanged.
"""

from __future__ import annotations

import copy
import math
import os
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from engine.models.config import ARCHS, BackboneConfig, family_interpolation
from trainer.config_values import ConfigError, coerce, from_plain, to_plain, unknown_key_message

__all__ = [
    "PRESETS",
    "ConfigError",
    "CropsCfg",
    "DataCfg",
    "HeadCfg",
    "HighResCfg",
    "LossCfg",
    "MaskCfg",
    "ModelCfg",
    "OptimCfg",
    "TeacherCfg",
    "TrainConfig",
    "apply_overrides",
    "preset",
    "preset_names",
]

CENTERINGS = ("sinkhorn_knopp", "softmax")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCALINGS = ("sqrt_wrt_1024", "none")


# ------------------------------------------------------------------------------------------------ sections
@dataclass
class ModelCfg:
    """The student/teacher backbone. `arch` names an official size; 'custom' uses the explicit fields below."""

    arch: str = "vitl14"  # vits14 | vitb14 | vitl14 | vitg14 | custom
    embed_dim: int | None = None  # custom only
    depth: int | None = None  # custom only
    num_heads: int | None = None  # custom only
    ffn_layer: str = "mlp"  # custom only ("mlp" or "swiglu"); official sizes fix their own
    patch_size: int = 14
    num_register_tokens: int = 0
    drop_path_rate: float = 0.3  # stochastic depth of the student (ssl_default_config)
    drop_path_uniform: bool = True
    layerscale: float = 1e-5  # initial LayerScale gamma (paper Table 16)
    # A zoo name or checkpoint path: student and teacher both start from it (fine-tuning), with new heads. Its
    # architecture comes from the weights (arch and the size fields above are ignored); drop-path comes from here.
    pretrained: str | None = None

    def backbone_config(self, img_size: int) -> BackboneConfig:
        """The student's BackboneConfig for training at `img_size` (which sizes the pos-embed grid)."""
        if self.arch == "custom":
            missing = [n for n in ("embed_dim", "depth", "num_heads") if getattr(self, n) is None]
            if missing:
                raise ConfigError(f"model.arch is 'custom' but model.{', model.'.join(missing)} is not set")
            dim = int(self.embed_dim)  # type: ignore[arg-type]
            if self.ffn_layer == "swiglu":
                from engine.models.layers.mlp import swiglu_hidden_features

                hidden = swiglu_hidden_features(dim)
            else:
                hidden = 4 * dim
            base = BackboneConfig(
                embed_dim=dim, depth=int(self.depth), num_heads=int(self.num_heads),  # type: ignore[arg-type]
                ffn_layer=self.ffn_layer, ffn_hidden=hidden,
            )
        else:
            base = ARCHS[self.arch]
        return base.with_(
            patch_size=self.patch_size,
            img_size=img_size,
            num_register_tokens=self.num_register_tokens,
            init_values=self.layerscale,
            drop_path_rate=self.drop_path_rate,
            drop_path_uniform=self.drop_path_uniform,
            **family_interpolation(self.num_register_tokens),
        )


@dataclass
class DataCfg:
    # A folder (searched recursively), a .txt file listing image paths one per line (what curation writes), or
    # "library:<name or folder>" for a Dinoscope library's decoded images.
    source: str = ""
    num_workers: int | None = None  # DataLoader workers; null: chosen from the machine (trainer/distributed.py)
    # JPEGs are decoded at a reduced DCT scale whose shorter side stays >= decode_scale x the global crop size;
    # 2.0 keeps the paper's smallest crops from being upsampled. 0 decodes at full resolution (slower, same crops).
    decode_scale: float = 2.0


@dataclass
class CropsCfg:
    global_size: int = 224
    local_size: int = 98  # official vitl14/vitg14 configs; 96 in the ViT/16 default
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    # The official GaussianBlur wrapper inverts p: effective blur is global1 0, global2 0.9, local 0.5 (spec §4.7).
    official_blur_bug: bool = False


@dataclass
class MaskCfg:
    """iBOT block masking of the global crops (spec §4.6)."""

    ratio: tuple[float, float] = (0.1, 0.5)  # masked fraction range, stratified over the masked images
    sample_probability: float = 0.5  # share of the 2B global crops that get a mask
    max_ratio: float = 0.5  # one block covers at most this share of the grid
    min_num_patches: int = 4
    min_aspect: float = 0.3


@dataclass
class LossCfg:
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    centering: str = "sinkhorn_knopp"  # or "softmax" (EMA centre)
    student_temp: float = 0.1
    sinkhorn_iters: int = 3
    center_momentum: float = 0.9


@dataclass
class HeadCfg:
    n_prototypes: int = 65536
    bottleneck_dim: int = 256
    hidden_dim: int = 2048
    nlayers: int = 3
    separate_ibot_head: bool = True  # the paper's untied heads
    ibot_n_prototypes: int = 65536
    ibot_bottleneck_dim: int = 256


@dataclass
class OptimCfg:
    epochs: int = 100
    iters_per_epoch: int = 1250  # OFFICIAL_EPOCH_LENGTH: an "epoch" is a fixed number of iterations
    batch_size_per_device: int = 64
    base_lr: float = 0.004  # for a global batch of 1024
    lr_scaling: str = "sqrt_wrt_1024"  # lr = base_lr * sqrt(global_batch / 1024); "none" uses base_lr as is
    warmup_epochs: float = 10
    min_lr: float = 1e-6
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    clip_grad: float = 3.0
    freeze_last_layer_epochs: float = 1
    betas: tuple[float, float] = (0.9, 0.999)
    # True: the official weight-decay rule (tokens decayed); False: the (no decay on tokens either).
    official_param_groups: bool = False

    @property
    def total_iters(self) -> int:
        return self.epochs * self.iters_per_epoch

    def epochs_to_iters(self, epochs: float) -> int:
        return round(epochs * self.iters_per_epoch)

    def scaled_lr(self, world_size: int = 1) -> float:
        """The peak learning rate for this run's global batch (paper: sqrt scaling with respect to 1024)."""
        if self.lr_scaling == "none":
            return self.base_lr
        return self.base_lr * math.sqrt(self.batch_size_per_device * world_size / 1024.0)


@dataclass
class TeacherCfg:
    momentum: float = 0.992
    final_momentum: float = 1.0
    warmup_temp: float = 0.04
    temp: float = 0.07
    warmup_temp_epochs: float = 30
    # Distillation: a frozen pretrained teacher (zoo name or checkpoint) instead of the EMA of the student.
    distill_from: str | None = None


@dataclass
class HighResCfg:
    """Optional final phase at high resolution (paper B.2): same recipe, schedules compressed, lower lr."""

    enabled: bool = False
    global_size: int = 518
    local_size: int = 98
    iterations: int = 10000
    lr_scale: float = 0.1  # the paper says only "lower"; this factor is Dinoscope's choice


@dataclass
class TrainConfig:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    crops: CropsCfg = field(default_factory=CropsCfg)
    mask: MaskCfg = field(default_factory=MaskCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    head: HeadCfg = field(default_factory=HeadCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    teacher: TeacherCfg = field(default_factory=TeacherCfg)
    high_res: HighResCfg = field(default_factory=HighResCfg)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on a GPU and on CPUs with fast bf16 (AVX512-BF16/AMX), else fp32
    threads: int | None = None  # CPU intra-op threads; null: the physical cores the data workers leave
    output_dir: str | None = None
    preset: str = "custom"  # the preset this config started from, for the record

    # -------------------------------------------------------------------------------------- derived
    @property
    def patch_grid(self) -> int:
        """Patches per side of a global crop (the iBOT mask grid)."""
        return self.crops.global_size // self.model.patch_size

    def backbone_config(self) -> BackboneConfig:
        return self.model.backbone_config(self.crops.global_size)

    def for_high_res(self) -> TrainConfig:
        """The config of the high-resolution phase: bigger crops, every schedule squeezed into its iterations."""
        hr = self.high_res
        cfg = copy.deepcopy(self)
        cfg.crops.global_size = hr.global_size
        cfg.crops.local_size = hr.local_size
        cfg.optim.iters_per_epoch = max(1, hr.iterations // max(1, cfg.optim.epochs))
        cfg.optim.base_lr = self.optim.base_lr * hr.lr_scale
        cfg.high_res.enabled = False
        cfg.validate()
        return cfg

    # ------------------------------------------------------------------------------------ checking
    def validate(self) -> TrainConfig:
        """Raise ConfigError on values that would fail later, deep inside a run; return self."""
        errs: list[str] = []
        m, c, o = self.model, self.crops, self.optim
        if m.arch not in (*ARCHS, "custom"):
            errs.append(f"model.arch must be one of {', '.join((*ARCHS, 'custom'))}, got {m.arch!r}")
        if m.arch == "custom":
            missing = [f"model.{n}" for n in ("embed_dim", "depth", "num_heads") if getattr(m, n) is None]
            if missing:
                errs.append(f"model.arch is 'custom' but {', '.join(missing)} is not set")
            elif m.embed_dim % m.num_heads:  # type: ignore[operator]
                errs.append(f"model.embed_dim={m.embed_dim} is not divisible by model.num_heads={m.num_heads}")
        if m.ffn_layer not in ("mlp", "swiglu"):
            errs.append(f"model.ffn_layer must be 'mlp' or 'swiglu', got {m.ffn_layer!r}")
        if m.patch_size < 1:
            errs.append("model.patch_size must be positive")
        else:
            for name in ("global_size", "local_size"):
                size = getattr(c, name)
                if size < m.patch_size or size % m.patch_size:
                    errs.append(f"crops.{name}={size} must be a positive multiple of the patch size {m.patch_size}")
            if self.high_res.enabled:
                for name in ("global_size", "local_size"):
                    size = getattr(self.high_res, name)
                    if size < m.patch_size or size % m.patch_size:
                        errs.append(f"high_res.{name}={size} must be a multiple of the patch size {m.patch_size}")
        if not 0.0 <= m.drop_path_rate < 1.0:
            errs.append("model.drop_path_rate must be in [0, 1)")
        if c.n_local < 0:
            errs.append("crops.n_local must be >= 0")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(c, name)
            if not 0.0 < lo <= hi <= 1.0:
                errs.append(f"crops.{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        lo, hi = self.mask.ratio
        if not 0.0 <= lo <= hi <= 1.0:
            errs.append(f"mask.ratio must satisfy 0 <= min <= max <= 1, got {(lo, hi)}")
        if not 0.0 <= self.mask.sample_probability <= 1.0:
            errs.append("mask.sample_probability must be in [0, 1]")
        if self.loss.centering not in CENTERINGS:
            errs.append(f"loss.centering must be one of {', '.join(CENTERINGS)}, got {self.loss.centering!r}")
        if self.loss.student_temp <= 0 or self.teacher.temp <= 0 or self.teacher.warmup_temp <= 0:
            errs.append("temperatures must be positive")
        if self.head.nlayers < 1:
            errs.append("head.nlayers must be >= 1")
        if o.epochs < 1 or o.iters_per_epoch < 1 or o.batch_size_per_device < 1:
            errs.append("optim.epochs, optim.iters_per_epoch and optim.batch_size_per_device must be >= 1")
        if self.loss.koleo_weight > 0 and o.batch_size_per_device < 2:
            errs.append("KoLeo needs optim.batch_size_per_device >= 2 (nearest neighbours within a device's batch)")
        if o.lr_scaling not in LR_SCALINGS:
            errs.append(f"optim.lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {o.lr_scaling!r}")
        if o.warmup_epochs < 0 or o.freeze_last_layer_epochs < 0 or self.teacher.warmup_temp_epochs < 0:
            errs.append("warm-up and freeze lengths must be >= 0")
        if o.epochs_to_iters(o.warmup_epochs) > o.total_iters:
            errs.append("optim.warmup_epochs is longer than the run (optim.epochs)")
        for name in ("momentum", "final_momentum"):
            if not 0.0 <= getattr(self.teacher, name) <= 1.0:
                errs.append(f"teacher.{name} must be in [0, 1]")
        if self.data.num_workers is not None and self.data.num_workers < 0:
            errs.append("data.num_workers must be >= 0 (or null: chosen from the machine)")
        if self.threads is not None and self.threads < 1:
            errs.append("threads must be >= 1 (or null: chosen from the machine)")
        if self.precision not in PRECISIONS:
            errs.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if errs:
            raise ConfigError("invalid training config:\n  " + "\n  ".join(errs))
        return self

    # ---------------------------------------------------------------------------------------- YAML
    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested dicts; missing keys keep their defaults, unknown keys and wrong types raise."""
        return from_plain(cls, data, "").validate()

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str) -> TrainConfig:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"the config is not valid YAML: {e}") from e
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"the config must be a YAML mapping of sections, got {type(data).__name__}")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the YAML atomically (temp file, fsync, rename), so a crash never leaves half a config."""
        from engine.atomic import atomic_write_text

        return atomic_write_text(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from e
        try:
            return cls.from_yaml(text)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e


# ------------------------------------------------------------------------------------------------ overrides
def apply_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """A copy of `cfg` with `section.key=value` items applied (values parsed as YAML, then type-checked)."""
    import yaml

    out = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.base_lr=1e-3")
        parts = key.split(".")
        target: Any = out
        for depth, part in enumerate(parts):
            path = ".".join(parts[: depth + 1])
            names = [f.name for f in fields(target)]
            if part not in names:
                raise ConfigError(unknown_key_message(path, part, names))
            if depth < len(parts) - 1:
                target = getattr(target, part)
                if not is_dataclass(target):
                    raise ConfigError(f"{path} is a value, not a section; write {path}=value")
        leaf = parts[-1]
        hint = typing.get_type_hints(type(target))[leaf]
        if is_dataclass(hint):
            raise ConfigError(f"{key} is a section; set one of its keys, e.g. {key}.{fields(hint)[0].name}=...")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        setattr(target, leaf, coerce(value, hint, key))
    return out.validate()


# ------------------------------------------------------------------------------------------------ presets
PRESET_DIR = Path(__file__).resolve().with_name("presets")


def preset_names() -> tuple[str, ...]:
    """The presets shipped in trainer/presets/ (one YAML file each, like the official configs/train/)."""
    return tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))


PRESETS: tuple[str, ...] = preset_names()


def preset(name: str) -> TrainConfig:
    """A fresh config from trainer/presets/NAME.yaml: the defaults above with that file's keys applied."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    cfg = TrainConfig.load(PRESET_DIR / f"{name}.yaml")
    cfg.preset = name
    return cfg.validate()
