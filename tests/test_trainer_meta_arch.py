"""Student/teacher meta-architecture on a tiny backbone: losses, pairing, gradients, EMA and the frozen last layer."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.imageio import load_rgb
from tests.helpers import tiny_backbone, tiny_config
from trainer.augment import MultiCropAugmentation
from trainer.config import TrainConfig, apply_overrides
from trainer.data import MultiCropCollator
from trainer.heads import DINOHead, WeightNormLinear
from trainer.losses import ibot_loss, koleo_loss, sinkhorn_knopp, update_center
from trainer.meta_arch import LOSS_KEYS, SSLMetaArch, autocast_dtype
from trainer.param_groups import apply_optim_schedule, build_optimizer
from trainer.schedules import build_schedules

B = 4
N_LOCAL = 4


def tiny_train_config(**overrides: str) -> TrainConfig:
    """tests.helpers.tiny_config's backbone (128-d, 3 blocks, 2 heads) at 112 px with 4 locals of 56 px."""
    items = [
        "model.arch=custom", "model.embed_dim=128", "model.depth=3", "model.num_heads=2",
        "model.drop_path_rate=0.0", "crops.global_size=112", "crops.local_size=56", f"crops.n_local={N_LOCAL}",
        "head.n_prototypes=256", "head.ibot_n_prototypes=192", "head.bottleneck_dim=64",
        "head.ibot_bottleneck_dim=64", "head.hidden_dim=128", f"optim.batch_size_per_device={B}",
        "optim.epochs=2", "optim.iters_per_epoch=10", "optim.warmup_epochs=0", "teacher.warmup_temp_epochs=1",
        "data.num_workers=0",
    ]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return apply_overrides(TrainConfig(), items)


@pytest.fixture(scope="module")
def batch(skimage_data_dir: Path) -> dict:
    cfg = tiny_train_config()
    aug = MultiCropAugmentation.from_config(cfg.crops)
    photos = ["astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png"]
    rng = np.random.default_rng(0)
    samples = [aug(load_rgb(skimage_data_dir / name, min_side=224), rng) for name in photos]
    random.seed(0)
    return MultiCropCollator(cfg)(samples)


def _meta(cfg: TrainConfig, seed: int = 0) -> SSLMetaArch:
    torch.manual_seed(seed)
    return SSLMetaArch(cfg).train()


def test_config_builds_the_helpers_tiny_backbone():
    bb = tiny_train_config().backbone_config()
    ref = tiny_config(img_size=112)
    for f in ("embed_dim", "depth", "num_heads", "patch_size", "img_size", "ffn_hidden", "ffn_layer"):
        assert getattr(bb, f) == getattr(ref, f)


def test_one_step_finite_losses_student_grads_teacher_by_ema_only(batch):
    cfg = tiny_train_config()
    meta = _meta(cfg)
    opt = build_optimizer(meta.student, cfg.optim)
    sch = build_schedules(cfg)
    teacher_before = {k: v.clone() for k, v in meta.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in meta.student.state_dict().items()}
    for k in teacher_before:  # the teacher starts as a copy of the student
        torch.testing.assert_close(teacher_before[k], student_before[k], rtol=0, atol=0)

    s = sch.at(12)  # epoch 1: the last layer is no longer frozen
    apply_optim_schedule(opt, s["lr"], s["wd"], s["last_layer_lr"])
    losses = meta.forward_backward(batch, teacher_temp=s["teacher_temp"])
    assert set(losses) == set(LOSS_KEYS)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["ibot_loss"] > 0 and losses["koleo_loss"] != 0 and losses["dino_local_crops_loss"] > 0
    total = sum(losses[k] for k in LOSS_KEYS[:-1])
    assert losses["total_loss"].item() == pytest.approx(total.item(), rel=1e-6)

    assert all(p.grad is None for p in meta.teacher.parameters())
    missing = [n for n, p in meta.student.named_parameters() if p.grad is None]
    assert missing == []  # every student parameter, mask token included, gets a gradient
    norms = meta.clip_gradients(cfg.optim.clip_grad)
    assert set(norms) == {"backbone", "dino_head", "ibot_head"}
    for name, module in meta.student.items():
        clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
        assert clipped <= cfg.optim.clip_grad * (1 + 1e-4)
        assert norms[name] > 0

    opt.step()
    for k, v in meta.teacher.state_dict().items():  # the optimizer never touches the teacher
        torch.testing.assert_close(v, teacher_before[k], rtol=0, atol=0)
    changed = [k for k, v in meta.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert "dino_head.last_layer.weight_v" in changed and "backbone.blocks.0.attn.qkv.weight" in changed

    m = 0.9
    t0 = {k: v.clone() for k, v in meta.teacher.state_dict().items()}
    s_now = meta.student.state_dict()
    meta.update_teacher(m)
    for k, v in meta.teacher.state_dict().items():
        torch.testing.assert_close(v, t0[k] + (1 - m) * (s_now[k] - t0[k]), rtol=1e-6, atol=1e-7)


def test_last_layer_is_frozen_during_the_first_epoch(batch):
    cfg = tiny_train_config()
    meta = _meta(cfg)
    opt = build_optimizer(meta.student, cfg.optim)
    sch = build_schedules(cfg)
    s = sch.at(3)
    assert s["lr"] > 0 and s["last_layer_lr"] == 0.0
    apply_optim_schedule(opt, s["lr"], s["wd"], s["last_layer_lr"])
    before = {k: v.clone() for k, v in meta.student.state_dict().items()}
    meta.forward_backward(batch, s["teacher_temp"])
    assert meta.student["dino_head"].last_layer.weight_v.grad.abs().sum() > 0  # it has gradients, lr 0
    opt.step()
    after = meta.student.state_dict()
    for key in ("dino_head.last_layer.weight_g", "dino_head.last_layer.weight_v", "ibot_head.last_layer.weight_v"):
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert not torch.equal(after["dino_head.mlp.0.weight"], before["dino_head.mlp.0.weight"])


def _ce(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(student / 0.1, dim=-1)).sum(-1).mean()


def test_loss_pairing_and_normalisation_match_an_explicit_computation(batch):
    """Locals against both teacher views, each global against the other view, all over n_terms = 2 + 2·4."""
    cfg = tiny_train_config()
    # Random weights everywhere: at the training init (LayerScale 1e-5) every image gives the same CLS token.
    meta = SSLMetaArch(cfg, init_backbone=tiny_backbone(img_size=112)).train()
    with torch.no_grad():  # sharper prototypes than at init, so that targets differ between views
        for net in (meta.student, meta.teacher):
            for head in ("dino_head", "ibot_head"):
                net[head].last_layer.weight_g.fill_(10.0)
    temp = 0.05
    with torch.no_grad():
        losses = meta(batch, teacher_temp=temp)
        g, loc = batch["collated_global_crops"], batch["collated_local_crops"]
        masks, idx = batch["collated_masks"], batch["mask_indices_list"]
        t = meta.teacher["backbone"].forward_features(g)
        t_cls = t["x_norm_clstoken"]
        probs = sinkhorn_knopp(meta.teacher["dino_head"](torch.cat([t_cls[B:], t_cls[:B]])), temp)
        to_view0, to_view1 = probs[:B], probs[B:]  # targets from teacher view 1 and view 0
        s = meta.student["backbone"].forward_features(g, masks=masks)
        s_logits = meta.student["dino_head"](s["x_norm_clstoken"])
        l_logits = meta.student["dino_head"](meta.student["backbone"].forward_features(loc)["x_norm_clstoken"])
        n_terms = 2 + 2 * N_LOCAL
        local = sum(_ce(c, to_view0) + _ce(c, to_view1) for c in l_logits.chunk(N_LOCAL)) / n_terms
        glob = (_ce(s_logits[:B], to_view0) + _ce(s_logits[B:], to_view1)) / n_terms
        koleo = 0.1 * (koleo_loss(s["x_norm_clstoken"][:B]) + koleo_loss(s["x_norm_clstoken"][B:]))
        t_ibot = meta.teacher["ibot_head"](t["x_norm_patchtokens"].flatten(0, 1)[idx])
        s_ibot = meta.student["ibot_head"](s["x_norm_patchtokens"].flatten(0, 1)[idx])
        ibot = ibot_loss(s_ibot, sinkhorn_knopp(t_ibot, temp), masks)
        # the views really are crossed: matching each global crop with its own teacher view gives another value
        unswapped = (_ce(s_logits[:B], to_view1) + _ce(s_logits[B:], to_view0)) / n_terms
    assert losses["dino_local_crops_loss"].item() == pytest.approx(local.item(), rel=1e-5)
    assert losses["dino_global_crops_loss"].item() == pytest.approx(glob.item(), rel=1e-5)
    assert losses["koleo_loss"].item() == pytest.approx(koleo.item(), rel=1e-5)
    assert losses["ibot_loss"].item() == pytest.approx(ibot.item(), rel=1e-5)
    assert abs(unswapped.item() - glob.item()) > 1e-3


def test_softmax_centering_updates_the_centres_after_using_them(batch):
    cfg = tiny_train_config(**{"loss.centering": "softmax"})
    meta = _meta(cfg)
    assert meta.dino_center.abs().sum() == 0 and meta.ibot_center.shape == (1, 1, 192)
    with torch.no_grad():
        t = meta.teacher["backbone"].forward_features(batch["collated_global_crops"])
        dino_logits = meta.teacher["dino_head"](t["x_norm_clstoken"])
        patches = t["x_norm_patchtokens"].flatten(0, 1)[batch["mask_indices_list"]]
        ibot_logits = meta.teacher["ibot_head"](patches)
        out = meta.teacher_outputs(batch["collated_global_crops"], batch, temp=0.07)
    # first call: centred with zeros, i.e. a plain softmax of the (view-swapped) logits
    swapped = torch.cat([dino_logits[B:], dino_logits[:B]])
    torch.testing.assert_close(out["dino"], torch.softmax(swapped / 0.07, -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(meta.dino_center, update_center(torch.zeros(1, 256), dino_logits), atol=1e-6,
                               rtol=1e-5)
    torch.testing.assert_close(meta.ibot_center, update_center(torch.zeros(1, 1, 192), ibot_logits[None]),
                               atol=1e-6, rtol=1e-5)
    center = meta.dino_center.clone()
    with torch.no_grad():
        again = meta.teacher_outputs(batch["collated_global_crops"], batch, temp=0.07)
    torch.testing.assert_close(again["dino"], torch.softmax((swapped - center) / 0.07, -1), atol=1e-5, rtol=1e-4)


def test_finetune_from_a_loaded_backbone_gets_new_heads_and_student_drop_path():
    init = tiny_backbone(img_size=112, seed=3)
    cfg = tiny_train_config(**{"model.drop_path_rate": "0.2"})
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg, init_backbone=init)
    for k, v in init.state_dict().items():
        torch.testing.assert_close(meta.student["backbone"].state_dict()[k], v, rtol=0, atol=0)
        torch.testing.assert_close(meta.teacher["backbone"].state_dict()[k], v, rtol=0, atol=0)
    assert all(blk.sample_drop_ratio == 0.2 for blk in meta.student["backbone"].blocks)
    assert all(blk.sample_drop_ratio == 0.0 for blk in meta.teacher["backbone"].blocks)
    assert torch.equal(meta.student["dino_head"].last_layer.weight_g, torch.ones(256, 1))
    meta.train()
    assert meta.student.training and not meta.teacher.training
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():  # stochastic depth: the student differs between two passes, the teacher does not
        s1 = meta.student["backbone"].forward_features(x)["x_norm_clstoken"]
        s2 = meta.student["backbone"].forward_features(x)["x_norm_clstoken"]
        t1 = meta.teacher["backbone"].forward_features(x)["x_norm_clstoken"]
        t2 = meta.teacher["backbone"].forward_features(x)["x_norm_clstoken"]
    assert not torch.allclose(s1, s2) and torch.equal(t1, t2)


def test_teacher_state_dict_keys_match_official_checkpoints():
    meta = _meta(tiny_train_config())
    keys = list(meta.teacher.state_dict())
    assert {k.split(".")[0] for k in keys} == {"backbone", "dino_head", "ibot_head"}
    head_keys = [k for k in keys if k.startswith("dino_head.")]
    assert head_keys == [
        "dino_head.mlp.0.weight", "dino_head.mlp.0.bias", "dino_head.mlp.2.weight", "dino_head.mlp.2.bias",
        "dino_head.mlp.4.weight", "dino_head.mlp.4.bias", "dino_head.last_layer.weight_g",
        "dino_head.last_layer.weight_v",
    ]
    assert meta.teacher.state_dict()["dino_head.last_layer.weight_g"].shape == (256, 1)
    shared = _meta(tiny_train_config(**{"head.separate_ibot_head": "false"}))
    assert "ibot_head" not in shared.student and shared.ibot_center.shape == (1, 1, 256)


def test_weight_norm_layer_equals_torch_weight_norm():
    torch.manual_seed(0)
    ours = WeightNormLinear(8, 5)
    with torch.no_grad():
        ours.weight_g.uniform_(0.5, 2.0)
    ref = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(8, 5, bias=False))
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(ours.weight_g)
        ref.parametrizations.weight.original1.copy_(ours.weight_v)
    x = torch.randn(3, 8)
    torch.testing.assert_close(ours(x), ref(x))
    head = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8, nlayers=1)
    assert [k for k in head.state_dict()] == ["mlp.0.weight", "mlp.0.bias", "last_layer.weight_g",
                                              "last_layer.weight_v"]
    assert head(torch.randn(2, 16)).shape == (2, 10)


def test_from_config_precision_and_bf16_autocast(batch, monkeypatch):
    import engine.device

    # auto: bf16 autocast on a GPU and on a CPU with fast bf16 (AVX512-BF16/AMX), fp32 on other CPUs and MPS
    monkeypatch.setattr(engine.device, "cpu_has_fast_bf16", lambda: True)
    assert autocast_dtype("auto", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(engine.device, "cpu_has_fast_bf16", lambda: False)
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("mps")) is None
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cpu")) is torch.float16
    with pytest.raises(ValueError, match="unknown precision"):
        autocast_dtype("int8", torch.device("cpu"))
    cfg = tiny_train_config(**{"device": "cpu", "precision": "bf16"})
    torch.manual_seed(0)
    meta = SSLMetaArch.from_config(cfg).train()
    assert meta.autocast_dtype is torch.bfloat16
    losses = meta.forward_backward(batch, teacher_temp=0.04)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in meta.student.parameters())
    with pytest.raises(ValueError, match="distill"):
        SSLMetaArch(tiny_train_config(**{"teacher.distill_from": "dinov2_vitb14"}))
