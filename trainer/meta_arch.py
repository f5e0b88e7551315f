"""The self-supervised student/teacher pair and the DINOv2 objective (DINOV2_SPEC.md §4.4-4.5).

The student (backbone with stochastic depth, DINO head, untied iBOT head) sees both global crops with iBOT masks
and the local crops; the teacher, an EMA copy without stochastic depth, sees the two unmasked global crops and
provides Sinkhorn-Knopp (or centred softmax) targets. One training step, as the loop will run it:

    apply_optim_schedule(optimizer, s["lr"], s["wd"], s["last_layer_lr"])   # s = schedules.at(it)
    optimizer.zero_grad(set_to_none=True)
    losses = meta.forward_backward(batch, teacher_temp=s["teacher_temp"])
    meta.clip_gradients(cfg.optim.clip_grad)
    optimizer.step()
    meta.update_teacher(s["momentum"])

Under DistributedDataParallel, wrap the SSLMetaArch itself and call it (`forward` returns the losses with grad):
only student parameters require grad, so only they are reduced. Teacher state-dict keys under `teacher.` are
`backbone.*`, `dino_head.*`, `ibot_head.*`, as in official checkpoints.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.models import DinoVisionTransformer
from trainer.heads import DINOHead
from trainer.losses import dino_loss, ibot_loss, koleo_loss, sinkhorn_knopp, softmax_center, update_center

if TYPE_CHECKING:
    from trainer.config import TrainConfig

__all__ = ["LOSS_KEYS", "SSLMetaArch", "autocast_dtype"]

N_GLOBAL = 2  # the teacher-view swap and the loss pairing assume exactly two global crops, as upstream
LOSS_KEYS = ("dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss", "total_loss")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a config's precision: 'auto' is bf16 on a GPU and on a CPU with fast bf16 matmuls
    (AVX512-BF16 or AMX; about 2.5x fp32 there, bench/train_step.py), full fp32 elsewhere.

    fp16 needs loss scaling (torch.amp.GradScaler) in the loop; bf16 does not.
    """
    if precision == "auto":
        from engine.device import cpu_has_fast_bf16

        if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
            return torch.bfloat16
        return None
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise ValueError(f"unknown precision {precision!r}; expected auto, fp32, bf16 or fp16")
    return table[precision]


class SSLMetaArch(nn.Module):
    """Student and EMA teacher with their heads; `forward_backward` computes the losses and backpropagates."""

    def __init__(self, cfg: TrainConfig, init_backbone: DinoVisionTransformer | None = None) -> None:
        """`cfg` is a TrainConfig. With `init_backbone` (a loaded engine.models backbone), student and teacher
        start from its weights and architecture, keeping cfg's stochastic-depth settings for the student."""
        super().__init__()
        if cfg.teacher.distill_from:
            raise ValueError(
                "teacher.distill_from is set: distillation uses a frozen pretrained teacher, which SSLMetaArch "
                "(an EMA teacher) does not provide"
            )
        self.cfg = cfg
        if init_backbone is not None:
            arch = init_backbone.config.with_(
                drop_path_rate=cfg.model.drop_path_rate, drop_path_uniform=cfg.model.drop_path_uniform
            )
            student_backbone = DinoVisionTransformer(arch)
            student_backbone.load_state_dict(init_backbone.state_dict())
        else:
            arch = cfg.backbone_config()
            student_backbone = DinoVisionTransformer(arch)
        if student_backbone.patch_size != cfg.model.patch_size:
            raise ValueError(
                f"the backbone has patch size {student_backbone.patch_size} but the config says "
                f"{cfg.model.patch_size}; crops and masks are sized from the config"
            )
        self.embed_dim = student_backbone.embed_dim
        self.student = nn.ModuleDict({"backbone": student_backbone, **self._build_heads()})
        teacher_backbone = DinoVisionTransformer(arch.with_(drop_path_rate=0.0))
        self.teacher = nn.ModuleDict({"backbone": teacher_backbone, **self._build_heads()})
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        h = cfg.head
        self.register_buffer("dino_center", torch.zeros(1, h.n_prototypes))
        ibot_k = h.ibot_n_prototypes if h.separate_ibot_head else h.n_prototypes
        self.register_buffer("ibot_center", torch.zeros(1, 1, ibot_k))
        self.autocast_dtype: torch.dtype | None = None

    def _build_heads(self) -> dict[str, nn.Module]:
        h = self.cfg.head
        heads: dict[str, nn.Module] = {
            "dino_head": DINOHead(self.embed_dim, h.n_prototypes, h.hidden_dim, h.bottleneck_dim, h.nlayers)
        }
        if h.separate_ibot_head:
            heads["ibot_head"] = DINOHead(
                self.embed_dim, h.ibot_n_prototypes, h.hidden_dim, h.ibot_bottleneck_dim, h.nlayers
            )
        return heads

    @classmethod
    def from_config(
        cls, cfg: TrainConfig, device: str | torch.device | None = None, allow_download: bool = True
    ) -> SSLMetaArch:
        """Build from a TrainConfig on `device` (default: cfg.device), loading `cfg.model.pretrained` first when
        set (fine-tuning), with autocast as cfg.precision says."""
        from engine.device import pick_device

        dev = torch.device(device) if device is not None else pick_device(cfg.device)
        init = None
        if cfg.model.pretrained:
            from engine.models import load_backbone

            init = load_backbone(cfg.model.pretrained, "cpu", allow_download=allow_download)
        meta = cls(cfg, init_backbone=init).to(dev)
        meta.autocast_dtype = autocast_dtype(cfg.precision, dev)
        return meta

    # ---------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> SSLMetaArch:
        """The teacher stays in eval mode: it never uses stochastic depth."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _head(self, net: nn.ModuleDict, kind: str) -> nn.Module:
        return net["ibot_head"] if kind == "ibot" and "ibot_head" in net else net["dino_head"]

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    @property
    def do_ibot(self) -> bool:
        return self.cfg.loss.ibot_weight > 0 and self.cfg.mask.sample_probability > 0

    # -------------------------------------------------------------------------------------- teacher
    @torch.no_grad()
    def teacher_outputs(
        self, global_crops: torch.Tensor, masks_info: dict[str, Any], temp: float, centering: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Teacher targets for the student: `dino` [2B, K] with the two views swapped (row i of view v is the
        target of the student's view 1-v), and `ibot` [M, K] for the masked tokens in `mask_indices_list` order.

        Softmax centring also advances the EMA centres (after using them), as upstream does once per step.
        """
        centering = centering or self.cfg.loss.centering
        lc = self.cfg.loss
        with self._autocast(global_crops.device):
            out = self.teacher["backbone"].forward_features(global_crops)
        cls = out["x_norm_clstoken"]
        view0, view1 = cls.chunk(N_GLOBAL)
        cls = torch.cat((view1, view0))
        with self._autocast(global_crops.device):
            dino_logits = self.teacher["dino_head"](cls).float()
        result: dict[str, torch.Tensor] = {}
        ibot_logits = None
        if self.do_ibot:
            idx = masks_info["mask_indices_list"].to(global_crops.device)
            patches = out["x_norm_patchtokens"].flatten(0, 1).index_select(0, idx)
            with self._autocast(global_crops.device):
                ibot_logits = self._head(self.teacher, "ibot")(patches).float()
        if centering == "sinkhorn_knopp":
            result["dino"] = sinkhorn_knopp(dino_logits, temp, n_iters=lc.sinkhorn_iters)
            if ibot_logits is not None:
                # n_samples defaults to the masked tokens of every rank together.
                result["ibot"] = sinkhorn_knopp(ibot_logits, temp, n_iters=lc.sinkhorn_iters)
        elif centering == "softmax":
            result["dino"] = softmax_center(dino_logits, self.dino_center, temp)
            self.dino_center.copy_(update_center(self.dino_center, dino_logits, lc.center_momentum))
            if ibot_logits is not None:
                result["ibot"] = softmax_center(ibot_logits, self.ibot_center[0], temp)
                # Upstream's iBOT centre is the mean over this rank's masked tokens, averaged over ranks.
                self.ibot_center.copy_(update_center(self.ibot_center, ibot_logits.unsqueeze(0), lc.center_momentum))
        else:
            raise ValueError(f"unknown centering {centering!r}; expected 'sinkhorn_knopp' or 'softmax'")
        return result

    # -------------------------------------------------------------------------------------- student
    def student_losses(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor,
        masks_info: dict[str, Any],
        targets: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The weighted loss terms and their sum (`total_loss`, with grad)."""
        lc = self.cfg.loss
        device = global_crops.device
        backbone = self.student["backbone"]
        masks = masks_info["collated_masks"].to(device) if self.do_ibot else None
        n_local_views = local_crops.shape[0] // (global_crops.shape[0] // N_GLOBAL) if local_crops.numel() else 0
        with self._autocast(device):
            g = backbone.forward_features(global_crops, masks=masks)
            global_logits = self.student["dino_head"](g["x_norm_clstoken"])
            local_logits = None
            if n_local_views:
                local_cls = backbone.forward_features(local_crops)["x_norm_clstoken"]
                local_logits = self.student["dino_head"](local_cls)
            ibot_logits = None
            if self.do_ibot:
                idx = masks_info["mask_indices_list"].to(device)
                patches = g["x_norm_patchtokens"].flatten(0, 1).index_select(0, idx)
                ibot_logits = self._head(self.student, "ibot")(patches)

        # 2 global x (2-1) cross-view pairs + every local against both teacher views (18 with 8 locals).
        n_terms = N_GLOBAL * (N_GLOBAL - 1) + N_GLOBAL * n_local_views
        teacher_views = list(targets["dino"].chunk(N_GLOBAL))
        losses: dict[str, torch.Tensor] = {}
        zero = global_logits.new_zeros((), dtype=torch.float32)
        if local_logits is not None:
            local = dino_loss(local_logits.chunk(n_local_views), teacher_views, lc.student_temp) / n_terms
        else:
            local = zero
        # One CE over both global views (2B rows) is a mean of two per-view means, hence the factor 2.
        glob = dino_loss([global_logits], [targets["dino"]], lc.student_temp) * N_GLOBAL / n_terms
        losses["dino_local_crops_loss"] = lc.dino_weight * local
        losses["dino_global_crops_loss"] = lc.dino_weight * glob
        losses["koleo_loss"] = (
            lc.koleo_weight * sum(koleo_loss(v) for v in g["x_norm_clstoken"].chunk(N_GLOBAL))
            if lc.koleo_weight > 0
            else zero
        )
        if ibot_logits is not None:
            losses["ibot_loss"] = lc.ibot_weight * ibot_loss(ibot_logits, targets["ibot"], masks, lc.student_temp)
        else:
            losses["ibot_loss"] = zero
        losses["total_loss"] = sum(losses[k] for k in LOSS_KEYS[:-1])
        return losses

    def forward(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch (a collate_multicrop dict) and their sum `total_loss`, with grad."""
        device = next(self.student.parameters()).device
        global_crops = batch["collated_global_crops"].to(device, non_blocking=True)
        local_crops = batch["collated_local_crops"].to(device, non_blocking=True)
        if global_crops.shape[0] % N_GLOBAL:
            raise ValueError(f"expected {N_GLOBAL} global crops per image, got {global_crops.shape[0]} crops")
        targets = self.teacher_outputs(global_crops, batch, teacher_temp)
        return self.student_losses(global_crops, local_crops, batch, targets)

    def forward_backward(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, torch.Tensor]:
        """`forward`, then backward of `total_loss`; returns the detached terms (check them for NaN)."""
        losses = self.forward(batch, teacher_temp)
        losses["total_loss"].backward()
        return {k: v.detach() for k, v in losses.items()}

    # ---------------------------------------------------------------------------------- optimisation
    def clip_gradients(self, max_norm: float) -> dict[str, float]:
        """Clip each student submodule's gradient norm separately (upstream); returns the norms before clipping."""
        norms = {}
        for name, module in self.student.items():
            params = [p for p in module.parameters() if p.grad is not None]
            if params and max_norm > 0:
                norms[name] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        return norms

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher = momentum·teacher + (1-momentum)·student, over every parameter of every submodule."""
        t_params, s_params = [], []
        for key in self.student:
            for t, s in zip(self.teacher[key].parameters(), self.student[key].parameters(), strict=True):
                t_params.append(t)
                s_params.append(s.detach())
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
