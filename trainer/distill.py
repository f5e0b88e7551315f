"""Distillation (paper Sec. 5, DINOV2_SPEC.md §4.8): a frozen pretrained teacher, a smaller student, an EMA result.

As the paper made its released ViT-S/B/L from ViT-g: the teacher is frozen, the student has no masking and no
stochastic depth, the DINO loss runs over the usual multi-crop pairs and the iBOT loss over every patch token of
the two global crops, and a spare EMA of the student is the model a run produces (`teacher` in the checkpoints,
`teacher_backbone.pt`), so a user gets a fast model tuned to their own photos.

The teacher's heads. The official recipe uses the ViT-g teacher together with its trained DINO/iBOT heads, but
released checkpoints hold the backbone only. Dinoscope's choice: the teacher's "head" is a soft assignment of its
own L2-normalised features to prototypes found by spherical k-means on those features, on global crops of the
run's training images (CLS tokens for the DINO head, patch tokens for the iBOT head), computed once before the
first step and then frozen; logits are cosines to the prototypes, turned into targets by Sinkhorn-Knopp at the
scheduled teacher temperature, exactly as in the SSL loop. Why:
- Trained DINO prototypes are, in effect, balanced cluster centres of the teacher's representation; k-means on the
  user's photos estimates the same object directly, without training anything on the teacher side.
- Random frozen prototypes are nearly orthogonal to every feature, so their targets come out close to uniform
  and much of K lies in empty regions of feature space. Measured on the learning test's photos with a tiny-cpu
  teacher: target entropy 87-94% of ln K with random prototypes, 50-60% with k-means ones. (In that 100-step toy
  run both students reached the same k-NN, 0.71 -> 0.81 with the teacher at 0.85: random projections still keep
  some of the similarity structure; the sharper targets are the reason for the choice, not a measured win.)
- Teacher heads trained by this loss would have to predict the student's prototypes: nothing anchors them, so
  they collapse; fitting them instead (e.g. a DINO run on the frozen features) is a training run of its own.
The student keeps its own, new DINO and iBOT heads, trained to match those targets. The number of prototypes is
capped by the fitting sample (about 8 samples a prototype), so small photo collections get few, stable ones:
a student head's size comes from `plan_prototypes`, not only from cfg.head.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine.models import DinoVisionTransformer
from trainer.config import ConfigError
from trainer.heads import DINOHead
from trainer.losses import dino_loss, ibot_loss, koleo_loss, sinkhorn_knopp
from trainer.meta_arch import LOSS_KEYS, N_GLOBAL, SSLMetaArch, autocast_dtype

if TYPE_CHECKING:
    from trainer.config import TrainConfig

__all__ = ["DistillMetaArch", "PrototypePlan", "plan_prototypes", "spherical_kmeans"]

FIT_IMAGES = 2048  # images (x2 global crops) the prototypes are fitted on, at most
SAMPLES_PER_PROTOTYPE = 8
MIN_PROTOTYPES = 8
PATCH_SAMPLES_PER_PROTOTYPE = 16


@dataclass(frozen=True)
class PrototypePlan:
    fit_batches: int
    n_dino: int
    n_ibot: int


def plan_prototypes(cfg: TrainConfig, n_images: int) -> PrototypePlan:
    """How many batches the prototypes are fitted on, and how many DINO / iBOT prototypes there are.

    Each image is seen about twice (augmented) up to FIT_IMAGES; K_dino is at most one per 8 CLS samples and
    at most cfg.head.n_prototypes; K_ibot is at most twice that (patch tokens are plentiful) and at most
    cfg.head.ibot_n_prototypes.
    """
    b = cfg.optim.batch_size_per_device
    fit_images = min(FIT_IMAGES, max(b, 2 * n_images))
    batches = math.ceil(fit_images / b)
    cls_samples = N_GLOBAL * batches * b
    n_dino = min(cfg.head.n_prototypes, max(MIN_PROTOTYPES, cls_samples // SAMPLES_PER_PROTOTYPE), cls_samples)
    n_ibot = min(cfg.head.ibot_n_prototypes, 2 * n_dino) if cfg.head.separate_ibot_head else n_dino
    return PrototypePlan(batches, n_dino, n_ibot)


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, chunk: int = 8192) -> torch.Tensor:
    """k unit-norm centres of the unit-norm rows of x (cosine k-means). Deterministic for a seed.

    Starts from k distinct random rows; an emptied cluster restarts at the row farthest from every centre.
    """
    n = x.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"k-means needs 0 < k <= {n} samples, got k={k}")
    x = F.normalize(x.float(), dim=-1)
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    assign = None
    for _ in range(iters):
        best, new_assign = [], []
        for i in range(0, n, chunk):
            sim = x[i : i + chunk] @ centres.t()
            v, a = sim.max(dim=1)
            best.append(v)
            new_assign.append(a)
        best_t, new = torch.cat(best), torch.cat(new_assign)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            far = best_t.argsort()[: empty.numel()]
            sums[empty] = x[far]
        centres = F.normalize(sums, dim=-1)
    return centres


class DistillMetaArch(nn.Module):
    """Trainable student, its EMA (`teacher`, the result) and the frozen pretrained teacher with its prototypes.

    The same interface as SSLMetaArch for the loop: `student`, `teacher`, `forward(batch, teacher_temp)` -> the
    LOSS_KEYS terms, `clip_gradients`, `update_teacher` (here: the EMA of the student), `cfg`, `autocast_dtype`.
    """

    kind = "distill"

    def __init__(self, cfg: TrainConfig, frozen_teacher: DinoVisionTransformer,
                 init_backbone: DinoVisionTransformer | None, plan: PrototypePlan) -> None:
        super().__init__()
        self.cfg = cfg
        if init_backbone is not None:
            arch = init_backbone.config.with_(drop_path_rate=0.0)
            backbone = DinoVisionTransformer(arch)
            backbone.load_state_dict(init_backbone.state_dict())
        else:
            arch = cfg.backbone_config().with_(drop_path_rate=0.0)  # no stochastic depth when distilling
            backbone = DinoVisionTransformer(arch)
        if backbone.patch_size != cfg.model.patch_size:
            raise ConfigError(f"the student has patch size {backbone.patch_size}, the config {cfg.model.patch_size}")
        if cfg.loss.ibot_weight > 0 and frozen_teacher.patch_size != backbone.patch_size:
            raise ConfigError(
                f"the iBOT loss pairs student and teacher patch tokens, but the teacher has patch size "
                f"{frozen_teacher.patch_size} and the student {backbone.patch_size}; set loss.ibot_weight=0 or pick "
                "a teacher with the same patch size"
            )
        backbone.mask_token.requires_grad_(False)  # no masking: the token never enters a forward pass
        self.embed_dim = backbone.embed_dim
        self.plan = plan
        h = cfg.head
        heads = {"dino_head": DINOHead(self.embed_dim, plan.n_dino, h.hidden_dim, h.bottleneck_dim, h.nlayers)}
        if h.separate_ibot_head:
            heads["ibot_head"] = DINOHead(self.embed_dim, plan.n_ibot, h.hidden_dim, h.ibot_bottleneck_dim,
                                          h.nlayers)
        self.student = nn.ModuleDict({"backbone": backbone, **heads})
        self.teacher = copy.deepcopy(self.student)  # the spare EMA: what the run produces
        self.teacher.requires_grad_(False)
        self.frozen_teacher = frozen_teacher.eval().requires_grad_(False)
        t_dim = frozen_teacher.embed_dim
        self.register_buffer("dino_prototypes", torch.zeros(plan.n_dino, t_dim))
        self.register_buffer("ibot_prototypes", torch.zeros(plan.n_ibot, t_dim))
        self.register_buffer("prototypes_fitted", torch.zeros((), dtype=torch.bool))
        self.autocast_dtype: torch.dtype | None = None

    @classmethod
    def build(cls, cfg: TrainConfig, device: torch.device, checkpoint: dict[str, Any] | None = None,
              allow_download: bool = True, n_images: int | None = None) -> DistillMetaArch:
        """From a config: loads `teacher.distill_from` (frozen) and `model.pretrained` (the student's start, if
        set); with a checkpoint, the student's architecture and prototype counts come from it."""
        from engine.models import BackboneConfig, load_backbone

        frozen = load_backbone(cfg.teacher.distill_from, "cpu", allow_download=allow_download)
        if checkpoint is not None:
            init = DinoVisionTransformer(BackboneConfig.from_dict(checkpoint["backbone_config"]))
            s = checkpoint["student"]
            n_dino = s["dino_head.last_layer.weight_g"].shape[0]
            n_ibot = s["ibot_head.last_layer.weight_g"].shape[0] if "ibot_head.last_layer.weight_g" in s else n_dino
            plan = PrototypePlan(0, n_dino, n_ibot)
        else:
            init = load_backbone(cfg.model.pretrained, "cpu", allow_download=allow_download) \
                if cfg.model.pretrained else None
            plan = plan_prototypes(cfg, n_images or cfg.optim.batch_size_per_device)
        meta = cls(cfg, frozen, init, plan).to(device)
        meta.autocast_dtype = autocast_dtype(cfg.precision, device)
        return meta

    # ------------------------------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> DistillMetaArch:
        super().train(mode)
        self.teacher.eval()
        self.frozen_teacher.eval()
        return self

    @property
    def do_ibot(self) -> bool:
        return self.cfg.loss.ibot_weight > 0

    @property
    def uses_every_parameter(self) -> bool:
        """Whether every trainable parameter gets a gradient each step (DDP skips its unused-parameter search).
        The mask token, never used here, is frozen; an iBOT head without the iBOT loss is not."""
        return self.do_ibot or "ibot_head" not in self.student

    @property
    def needs_fit(self) -> bool:
        return not bool(self.prototypes_fitted)

    # ------------------------------------------------------------------------------------ prototypes
    @torch.no_grad()
    def _teacher_features(self, global_crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen teacher's L2-normalised CLS [2B, D] and patch tokens [2B, N, D], in float32."""
        with self._autocast(global_crops.device):
            out = self.frozen_teacher.forward_features(global_crops)
        return F.normalize(out["x_norm_clstoken"].float(), dim=-1), F.normalize(
            out["x_norm_patchtokens"].float(), dim=-1)

    @torch.no_grad()
    def fit_prototypes(self, batches: Iterable[dict[str, Any]], log: Callable[[str], None] | None = None) -> None:
        """k-means on the frozen teacher's features of the first `plan.fit_batches` batches of `batches`.

        Under torch.distributed, rank 0's prototypes are broadcast so every rank uses the same ones.
        """
        device = self.dino_prototypes.device
        plan = self.plan
        if log:
            log(f"fitting {plan.n_dino} DINO and {plan.n_ibot} iBOT prototypes on the frozen teacher's features "
                f"of {plan.fit_batches} batches")
        cls_feats, patch_feats = [], []
        patch_budget = PATCH_SAMPLES_PER_PROTOTYPE * plan.n_ibot
        per_batch = math.ceil(patch_budget / max(1, plan.fit_batches))
        g = torch.Generator().manual_seed(self.cfg.seed)
        for _, batch in zip(range(plan.fit_batches), batches, strict=False):
            crops = batch["collated_global_crops"].to(device, non_blocking=True)
            cls, patches = self._teacher_features(crops)
            cls_feats.append(cls)
            flat = patches.flatten(0, 1)
            pick = torch.randperm(flat.shape[0], generator=g)[: per_batch].to(device)
            patch_feats.append(flat.index_select(0, pick))
        cls_all = torch.cat(cls_feats)
        self.dino_prototypes.copy_(spherical_kmeans(cls_all, plan.n_dino, seed=self.cfg.seed))
        if self.cfg.head.separate_ibot_head:
            patch_all = torch.cat(patch_feats)
            self.ibot_prototypes.copy_(spherical_kmeans(patch_all, plan.n_ibot, seed=self.cfg.seed + 1))
        else:
            self.ibot_prototypes.copy_(self.dino_prototypes)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.dino_prototypes, 0)
            dist.broadcast(self.ibot_prototypes, 0)
        self.prototypes_fitted.fill_(True)

    # -------------------------------------------------------------------------------------- targets
    @torch.no_grad()
    def teacher_outputs(self, global_crops: torch.Tensor, temp: float) -> dict[str, torch.Tensor]:
        """Sinkhorn-Knopp targets: `dino` [2B, K] with the two views swapped (as in the SSL loop), and `ibot`
        [2B·N, K_ibot] for every patch token of both views, in (image, patch) order."""
        if self.needs_fit:
            raise RuntimeError("fit_prototypes must run before the first training step")
        cls, patches = self._teacher_features(global_crops)
        view0, view1 = cls.chunk(N_GLOBAL)
        cls = torch.cat((view1, view0))
        iters = self.cfg.loss.sinkhorn_iters
        out = {"dino": sinkhorn_knopp(cls @ self.dino_prototypes.t(), temp, n_iters=iters)}
        if self.do_ibot:
            logits = patches.flatten(0, 1) @ self.ibot_prototypes.t()
            out["ibot"] = sinkhorn_knopp(logits, temp, n_iters=iters)
        return out

    # -------------------------------------------------------------------------------------- student
    def forward(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch and their sum `total_loss`, with grad."""
        lc = self.cfg.loss
        device = self.dino_prototypes.device
        global_crops = batch["collated_global_crops"].to(device, non_blocking=True)
        local_crops = batch["collated_local_crops"].to(device, non_blocking=True)
        targets = self.teacher_outputs(global_crops, teacher_temp)
        n_images = global_crops.shape[0] // N_GLOBAL
        n_local_views = local_crops.shape[0] // n_images if local_crops.numel() else 0
        backbone = self.student["backbone"]
        with self._autocast(device):
            g = backbone.forward_features(global_crops)
            global_logits = self.student["dino_head"](g["x_norm_clstoken"])
            local_logits = None
            if n_local_views:
                local_logits = self.student["dino_head"](backbone.forward_features(local_crops)["x_norm_clstoken"])
            patch_logits = None
            if self.do_ibot:
                head = self.student["ibot_head"] if "ibot_head" in self.student else self.student["dino_head"]
                patch_logits = head(g["x_norm_patchtokens"].flatten(0, 1))
        n_terms = N_GLOBAL * (N_GLOBAL - 1) + N_GLOBAL * n_local_views
        teacher_views = list(targets["dino"].chunk(N_GLOBAL))
        zero = global_logits.new_zeros((), dtype=torch.float32)
        losses: dict[str, torch.Tensor] = {}
        local = (dino_loss(local_logits.chunk(n_local_views), teacher_views, lc.student_temp) / n_terms
                 if local_logits is not None else zero)
        glob = dino_loss([global_logits], [targets["dino"]], lc.student_temp) * N_GLOBAL / n_terms
        losses["dino_local_crops_loss"] = lc.dino_weight * local
        losses["dino_global_crops_loss"] = lc.dino_weight * glob
        losses["koleo_loss"] = (
            lc.koleo_weight * sum(koleo_loss(v) for v in g["x_norm_clstoken"].chunk(N_GLOBAL))
            if lc.koleo_weight > 0 else zero
        )
        if patch_logits is not None:
            every = torch.ones(g["x_norm_patchtokens"].shape[:2], dtype=torch.bool, device=device)
            losses["ibot_loss"] = lc.ibot_weight * ibot_loss(patch_logits, targets["ibot"], every, lc.student_temp)
        else:
            losses["ibot_loss"] = zero
        losses["total_loss"] = sum(losses[k] for k in LOSS_KEYS[:-1])
        return losses

    def forward_backward(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, torch.Tensor]:
        losses = self.forward(batch, teacher_temp)
        losses["total_loss"].backward()
        return {k: v.detach() for k, v in losses.items()}

    # The same per-submodule clipping and student -> EMA update as the SSL loop (the EMA here is the result).
    clip_gradients = SSLMetaArch.clip_gradients
    update_teacher = SSLMetaArch.update_teacher
    _autocast = SSLMetaArch._autocast

