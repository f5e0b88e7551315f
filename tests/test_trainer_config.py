"""Training config: paper defaults, presets, YAML round trips, overrides with type checks and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.models import ARCHS
from trainer.config import PRESETS, ConfigError, TrainConfig, apply_overrides, preset

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers():
    c = TrainConfig()
    assert (c.optim.base_lr, c.optim.min_lr, c.optim.iters_per_epoch) == (0.004, 1e-6, 1250)
    assert (c.optim.weight_decay, c.optim.weight_decay_end, c.optim.layerwise_decay) == (0.04, 0.2, 0.9)
    assert (c.optim.patch_embed_lr_mult, c.optim.clip_grad, c.optim.freeze_last_layer_epochs) == (0.2, 3.0, 1)
    assert c.optim.betas == (0.9, 0.999) and c.optim.lr_scaling == "sqrt_wrt_1024"
    assert (c.teacher.momentum, c.teacher.final_momentum) == (0.992, 1.0)
    assert (c.teacher.warmup_temp, c.teacher.temp, c.teacher.warmup_temp_epochs) == (0.04, 0.07, 30)
    assert (c.loss.dino_weight, c.loss.ibot_weight, c.loss.koleo_weight) == (1.0, 1.0, 0.1)
    assert c.loss.centering == "sinkhorn_knopp" and c.loss.student_temp == 0.1
    assert (c.head.hidden_dim, c.head.nlayers, c.head.separate_ibot_head) == (2048, 3, True)
    assert c.crops.global_scale == (0.32, 1.0) and c.crops.local_scale == (0.05, 0.32)
    assert (c.crops.global_size, c.crops.n_local) == (224, 8)
    assert c.mask.ratio == (0.1, 0.5) and c.mask.sample_probability == 0.5
    assert c.model.layerscale == 1e-5 and c.model.drop_path_uniform


def test_every_preset_is_valid_and_distinct():
    assert set(PRESETS) == {"vits14-scratch", "vitb14-scratch", "finetune", "distill", "tiny-cpu"}
    for name in PRESETS:
        c = preset(name)
        assert c.preset == name
        assert c.crops.global_size % c.model.patch_size == 0 and c.crops.local_size % c.model.patch_size == 0
        bb = c.backbone_config()
        assert bb.img_size == c.crops.global_size and bb.init_values == c.model.layerscale
    assert preset("vits14-scratch").backbone_config().embed_dim == 384
    assert preset("vitb14-scratch").backbone_config().embed_dim == 768
    ft = preset("finetune")
    assert ft.model.pretrained == "dinov2_vits14"
    assert ft.optim.base_lr < TrainConfig().optim.base_lr and ft.optim.warmup_epochs < 10
    assert ft.teacher.warmup_temp_epochs < 30
    d = preset("distill")
    assert d.teacher.distill_from and d.mask.sample_probability == 0 and d.model.drop_path_rate == 0
    t = preset("tiny-cpu")
    bb = t.backbone_config()
    assert (bb.embed_dim, bb.depth, bb.num_heads, bb.ffn_hidden) == (192, 6, 3, 768)
    assert (t.crops.global_size, t.crops.local_size, t.crops.n_local) == (112, 56, 4)
    assert t.patch_grid == 8 and t.optim.batch_size_per_device == 16
    # presets are fresh copies
    t.optim.epochs = 1
    assert preset("tiny-cpu").optim.epochs != 1
    with pytest.raises(ConfigError, match=r"unknown preset 'tiny'.*tiny-cpu"):
        preset("tiny")


def test_yaml_round_trip_through_a_file(tmp_path):
    c = apply_overrides(preset("tiny-cpu"), ["mask.ratio=[0.2, 0.4]", "model.pretrained=/x/y.pth"])
    path = c.save(tmp_path / "run" / "config.yaml")
    assert path.read_text().startswith("model:")
    back = TrainConfig.load(path)
    assert back == c
    assert back.mask.ratio == (0.2, 0.4) and isinstance(back.mask.ratio, tuple)
    assert TrainConfig.from_yaml(c.to_yaml()) == c
    assert not list(path.parent.glob("*.tmp"))


def test_partial_yaml_keeps_defaults():
    c = TrainConfig.from_yaml("optim:\n  base_lr: 1e-3\n  epochs: 50\nseed: 7\n")
    assert c.optim.base_lr == 0.001 and c.optim.epochs == 50 and c.seed == 7
    assert c.optim.min_lr == 1e-6
    with pytest.raises(ConfigError, match="warmup_epochs is longer than the run"):
        TrainConfig.from_yaml("optim:\n  epochs: 5\n")
    assert TrainConfig.from_yaml("") == TrainConfig()


def test_yaml_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.base_lrr'; did you mean 'base_lr'"):
        TrainConfig.from_yaml("optim:\n  base_lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer'; did you mean 'optim'"):
        TrainConfig.from_yaml("optimizer: {}\n")
    with pytest.raises(ConfigError, match=r"optim\.epochs expects an integer, got 'ten'"):
        TrainConfig.from_yaml("optim:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r"crops\.global_scale expects a list of 2 values"):
        TrainConfig.from_yaml("crops:\n  global_scale: 0.5\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_yaml("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_yaml("- 1\n- 2\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  centering: median\n")
    with pytest.raises(ConfigError, match=r"(?s)bad\.yaml.*loss\.centering must be one of"):
        TrainConfig.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        TrainConfig.load(tmp_path / "missing.yaml")


def test_overrides_parse_and_type_check():
    c = apply_overrides(TrainConfig(), [
        "optim.base_lr=1e-3", "crops.n_local=4", "loss.centering=softmax", "model.pretrained=null",
        "crops.official_blur_bug=true", "optim.betas=[0.9, 0.95]", "seed=3", "optim.warmup_epochs=2",
    ])
    assert c.optim.base_lr == 0.001 and isinstance(c.optim.base_lr, float)
    assert c.crops.n_local == 4 and c.loss.centering == "softmax" and c.model.pretrained is None
    assert c.crops.official_blur_bug is True and c.optim.betas == (0.9, 0.95) and c.seed == 3
    assert c.optim.warmup_epochs == 2.0 and isinstance(c.optim.warmup_epochs, float)
    base = TrainConfig()
    apply_overrides(base, ["seed=5"])
    assert base.seed == 0  # the input is not modified

    cases = {
        "optim.base_lrr=1": "did you mean 'base_lr'",
        "optim.epochs=abc": "optim.epochs expects an integer",
        "optim.epochs=true": "optim.epochs expects an integer",
        "crops.official_blur_bug=1": "expects true or false",
        "optim=3": "optim is a section",
        "seed.x=1": "seed is a value, not a section",
        "base_lr": "must look like section.key=value",
        "crops.global_size=100": "multiple of the patch size 14",
        "model.arch=vit_huge": "model.arch must be one of",
        "loss.student_temp=null": "expects a number, got None",
    }
    for item, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
            apply_overrides(TrainConfig(), [item])


def test_backbone_config_and_high_res_phase():
    c = preset("vits14-scratch")
    bb = c.backbone_config()
    assert bb.embed_dim == ARCHS["vits14"].embed_dim and bb.drop_path_rate == 0.1 and bb.img_size == 224
    reg = apply_overrides(c, ["model.num_register_tokens=4"]).backbone_config()
    assert reg.num_register_tokens == 4 and reg.interpolate_antialias and reg.interpolate_offset == 0.0
    with pytest.raises(ConfigError, match=r"custom.*embed_dim"):
        apply_overrides(c, ["model.arch=custom"]).backbone_config()

    hr = c.for_high_res()
    assert hr.crops.global_size == 518 and hr.optim.total_iters == 10000
    assert hr.optim.base_lr == pytest.approx(c.optim.base_lr * 0.1)
    # warm-ups keep their share of the (compressed) run
    assert hr.optim.epochs_to_iters(hr.optim.warmup_epochs) == 1000


def test_presets_are_the_yaml_files_beside_the_config_module(tmp_path, monkeypatch):
    import trainer.config as config

    shipped = sorted(p.stem for p in (ROOT / "trainer" / "presets").glob("*.yaml"))
    assert list(config.preset_names()) == shipped and set(PRESETS) == set(shipped)
    # A preset is read from its file: the defaults plus that file's keys (here a copy with one key changed).
    own = tmp_path / "presets"
    own.mkdir()
    for name in shipped:
        (own / f"{name}.yaml").write_text((config.PRESET_DIR / f"{name}.yaml").read_text())
    (own / "tiny-cpu.yaml").write_text((own / "tiny-cpu.yaml").read_text().replace("depth: 6", "depth: 4"))
    (own / "mine.yaml").write_text("optim:\n  base_lrr: 0.1\n")
    monkeypatch.setattr(config, "PRESET_DIR", own)
    assert config.preset("tiny-cpu").model.depth == 4 and config.preset("tiny-cpu").model.embed_dim == 192
    with pytest.raises(ConfigError, match=r"(?s)mine\.yaml.*unknown config key 'optim\.base_lrr'"):
        config.preset("mine")


def test_the_wheel_ships_the_presets(tmp_path):
    """pyproject.toml's package data: a wheel built from the trainer package holds every preset YAML."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT / "trainer", src / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"trainer/presets/{p.name}" for p in (ROOT / "trainer" / "presets").glob("*.yaml")}
    assert len(shipped) == 5 and shipped <= names


def test_the_bundle_spec_ships_the_presets():
    """pyinstaller.spec puts every preset where trainer/config.py looks: trainer/presets/ inside the bundle."""
    source = (ROOT / "pyinstaller.spec").read_text()
    start = source.index("# The training presets")
    line = source[start:].splitlines()[1]
    scope = {"ROOT": ROOT, "datas": []}
    exec(line, scope)
    found = {(Path(src).name, dest) for src, dest in scope["datas"]}
    assert found == {(p.name, "trainer/presets") for p in (ROOT / "trainer" / "presets").glob("*.yaml")}
