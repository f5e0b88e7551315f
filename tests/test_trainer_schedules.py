"""Schedules at the spec's checkpoints (DINOV2_SPEC.md §4.2, §9), param groups (§4.3) and the optimizer."""

from __future__ import annotations

import math

import pytest
import torch

from engine.models import ARCHS, DinoVisionTransformer
from trainer.config import TrainConfig
from trainer.heads import DINOHead
from trainer.param_groups import (
    apply_optim_schedule,
    build_optimizer,
    fuse_param_groups,
    layer_id,
    param_group_settings,
)
from trainer.schedules import CosineScheduler, build_schedules


def test_cosine_scheduler_pieces_by_hand():
    s = CosineScheduler(1.0, 0.0, total_iters=10, warmup_iters=3, start_warmup_value=0.4, freeze_iters=2)
    # freeze: 0, 0; warm-up: linspace(0.4, 1, 3) = 0.4, 0.7, 1.0; cosine over 5: 0.5·(1 + cos(π·i/5))
    expected = [0, 0, 0.4, 0.7, 1.0] + [0.5 * (1 + math.cos(math.pi * i / 5)) for i in range(5)]
    assert [s[i] for i in range(10)] == pytest.approx(expected)
    assert s[10] == s[10**6] == 0.0  # past the end: the final value
    with pytest.raises(ValueError, match="exceed"):
        CosineScheduler(1, 0, total_iters=5, warmup_iters=4, freeze_iters=2)


def test_teacher_temperature_checkpoints():
    sch = build_schedules(TrainConfig())  # 0.04 -> 0.07 over 30 x 1250 iterations, then constant
    assert sch.teacher_temp[0] == pytest.approx(0.04)
    assert sch.teacher_temp[15 * 1250] == pytest.approx(0.0550, abs=1e-4)
    assert sch.teacher_temp[30 * 1250] == pytest.approx(0.07)
    assert sch.teacher_temp[100 * 1250] == pytest.approx(0.07)


def test_momentum_and_weight_decay_for_the_giant_config():
    cfg = TrainConfig()
    cfg.optim.epochs, cfg.optim.warmup_epochs = 500, 80
    cfg.teacher.momentum = 0.994
    sch = build_schedules(cfg)
    total = 500 * 1250
    assert sch.momentum[0] == pytest.approx(0.994)
    assert sch.momentum[total // 2] == pytest.approx(0.997, abs=1e-6)
    assert sch.momentum[total] == 1.0
    assert sch.wd[0] == pytest.approx(0.04)
    assert sch.wd[total // 2] == pytest.approx(0.12, abs=1e-6)
    assert sch.wd[total - 1] == pytest.approx(0.2, abs=1e-6)
    assert sch.wd[total] == 0.2


def test_learning_rate_warmup_cosine_and_frozen_last_layer():
    cfg = TrainConfig()
    cfg.optim.batch_size_per_device = 64
    sch = build_schedules(cfg, world_size=16)  # global batch 1024 -> the base lr as is
    peak = 0.004
    warm = 10 * 1250
    assert sch.lr[0] == 0.0
    assert sch.lr[warm // 2] == pytest.approx(peak * (warm // 2) / (warm - 1))
    assert sch.lr[warm] == pytest.approx(peak)
    assert sch.lr[100 * 1250 - 1] == pytest.approx(1e-6, abs=1e-8)
    assert sch.lr[10**7] == 1e-6
    # the last layer is frozen for the first epoch, then follows the lr
    assert all(sch.last_layer_lr[i] == 0.0 for i in (0, 600, 1249))
    assert sch.last_layer_lr[1250] == sch.lr[1250] > 0
    assert sch.at(5000) == {
        "lr": sch.lr[5000], "wd": sch.wd[5000], "momentum": sch.momentum[5000],
        "teacher_temp": sch.teacher_temp[5000], "last_layer_lr": sch.last_layer_lr[5000],
    }


def test_lr_scales_with_the_square_root_of_the_global_batch():
    cfg = TrainConfig()
    cfg.optim.base_lr, cfg.optim.batch_size_per_device = 2e-4, 12
    assert cfg.optim.scaled_lr(world_size=256) == pytest.approx(2e-4 * math.sqrt(3))  # ViT-g: 3.46e-4 at 3072
    cfg.optim.lr_scaling = "none"
    assert cfg.optim.scaled_lr(world_size=256) == 2e-4


# ------------------------------------------------------------------------------------------------ param groups
@pytest.fixture(scope="module")
def vits_names() -> list[str]:
    with torch.device("meta"):
        model = DinoVisionTransformer(ARCHS["vits14"].with_(init_values=1e-5))
    return [n for n, _ in model.named_parameters()]


def test_vits_lr_multipliers_match_the_spec(vits_names):
    lr = {n: param_group_settings(n, 12, 0.9, 0.2)["lr_multiplier"] for n in vits_names}
    for token in ("cls_token", "pos_embed", "mask_token"):
        assert lr[token] == pytest.approx(0.2542, abs=1e-4)  # 0.9^13
    assert lr["patch_embed.proj.weight"] == pytest.approx(0.0508, abs=1e-4)  # 0.9^13 · 0.2
    assert lr["blocks.0.attn.qkv.weight"] == pytest.approx(0.2824, abs=1e-4)  # 0.9^12
    assert lr["blocks.11.mlp.fc2.bias"] == pytest.approx(0.9)
    assert lr["norm.weight"] == 1.0
    assert layer_id("blocks.2.7.attn.qkv.weight", 40) == 8  # chunked names use the global block index


def test_weight_decay_rules_issue_and_official(vits_names):
    ours = {n: param_group_settings(n, 12)["wd_multiplier"] for n in vits_names}
    official = {n: param_group_settings(n, 12, official=True)["wd_multiplier"] for n in vits_names}
    for token in ("cls_token", "pos_embed", "mask_token"):
        assert ours[token] == 0.0 and official[token] == 1.0
    for name in ("blocks.3.attn.qkv.bias", "blocks.3.norm1.weight", "blocks.3.ls1.gamma", "norm.bias"):
        assert ours[name] == official[name] == 0.0
    for name in ("blocks.3.attn.qkv.weight", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        assert ours[name] == official[name] == 1.0
    assert param_group_settings("register_tokens", 12)["wd_multiplier"] == 0.0


def test_head_groups_and_fused_optimizer():
    backbone = DinoVisionTransformer(ARCHS["vits14"].with_(embed_dim=64, depth=2, num_heads=1, ffn_hidden=64))
    head = DINOHead(64, 32, hidden_dim=32, bottleneck_dim=16)
    groups = fuse_param_groups({"backbone": backbone, "dino_head": head}, 0.9, 0.2)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["dino_head.mlp.0.weight"]["lr_multiplier"] == 1.0
    assert by_name["dino_head.last_layer.weight_g"]["is_last_layer"]
    assert by_name["dino_head.last_layer.weight_g"]["wd_multiplier"] == 1.0  # decayed, as upstream
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.81)
    n_params = sum(1 for _ in backbone.parameters()) + sum(1 for _ in head.parameters())
    assert sum(len(g["params"]) for g in groups) == n_params

    cfg = TrainConfig().optim
    opt = build_optimizer({"backbone": backbone, "dino_head": head}, cfg)
    apply_optim_schedule(opt, lr=1e-3, wd=0.05, last_layer_lr=0.0)
    for g in opt.param_groups:
        base = 0.0 if g["is_last_layer"] else 1e-3
        assert g["lr"] == pytest.approx(base * g["lr_multiplier"])
        assert g["weight_decay"] == pytest.approx(0.05 * g["wd_multiplier"])
    assert opt.defaults["betas"] == (0.9, 0.999)
