"""DINOv2's losses and teacher-target normalisations (DINOV2_SPEC.md §4.5), correct under torch.distributed.

Every statistic the official code reduces across GPUs (Sinkhorn-Knopp marginals, the softmax centre, the masked-
token count) is all-reduced here when a process group is initialised, so each rank gets the result a single
process would compute on the concatenated batch. The cross-entropies (DINO, iBOT) and KoLeo are per-rank means,
as upstream: data-parallel gradient averaging combines them.

Targets are computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "dino_loss",
    "global_count",
    "ibot_loss",
    "koleo_loss",
    "sinkhorn_knopp",
    "softmax_center",
    "update_center",
]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    """In-place sum (or `op`) over ranks; a no-op in a single process."""
    if _distributed():
        dist.all_reduce(t, op=op if op is not None else dist.ReduceOp.SUM)
    return t


def _world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def global_count(n: int, device: torch.device | str = "cpu") -> int:
    """Sum of a per-rank count over all ranks (every rank must call it), e.g. the masked tokens of the batch."""
    if not _distributed():
        return int(n)
    t = torch.tensor([float(n)], dtype=torch.float64, device=device)
    _all_reduce(t)
    return round(t.item())


def _global_logsumexp(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """log Σ exp(x) over `dim` (None: everything), where `dim` may be split across ranks; keepdim shape."""
    if dim is None:
        m = x.amax().reshape(1) if x.numel() else x.new_full((1,), -math.inf)
    elif x.shape[dim]:
        m = x.amax(dim=dim, keepdim=True)
    else:  # this rank holds no samples (e.g. no masked token): it still joins the collectives
        shape = list(x.shape)
        shape[dim] = 1
        m = x.new_full(shape, -math.inf)
    _all_reduce(m, dist.ReduceOp.MAX if _distributed() else None)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(x - m).sum().reshape(1) if dim is None else torch.exp(x - m).sum(dim=dim, keepdim=True)
    _all_reduce(s)
    out = m + torch.log(s)
    return out.reshape(()) if dim is None else out


# ------------------------------------------------------------------------------------------------ targets
@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor, temp: float, n_iters: int = 3, n_samples: int | None = None
) -> torch.Tensor:
    """Teacher targets by Sinkhorn-Knopp: [B, K] probabilities whose rows sum to 1.

    The official iteration, Q = exp(logits/temp)ᵀ normalised to total 1, then n_iters rounds of "each prototype
    sums to 1/K" (samples all-reduced) and "each sample sums to 1/B", finally scaled by B, so each sample's
    row sums to 1 exactly and each prototype's column to about B/K (exactly only in the limit of iterations).

    Computed in log space. This is the same arithmetic: each step divides Q by positive sums, i.e. subtracts
    their logs, and a log-sum-exp taken around its maximum equals the plain sum. It cannot overflow or produce
    0/0 at any temperature, where exp(logits/0.04) in float32 does once |logits| passes about 3.5.

    `n_samples` is the global sample count B; by default the rows of every rank, all-reduced (for iBOT, the
    masked tokens of the whole batch, which differ per rank).
    """
    logits = teacher_logits.float()
    b_local, k = logits.shape
    total = global_count(b_local, logits.device) if n_samples is None else int(n_samples)
    if total == 0:
        return logits.new_zeros((b_local, k))
    log_q = logits.t() / temp  # K x B
    log_q = log_q - _global_logsumexp(log_q, None)
    log_k, log_b = math.log(k), math.log(total)
    for _ in range(n_iters):
        log_q = log_q - _global_logsumexp(log_q, 1) - log_k  # prototypes: sums over every rank's samples
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b  # samples: local
    return torch.exp(log_q + log_b).t()


def softmax_center(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Teacher targets by centring: softmax((logits - center) / temp) over prototypes, in float32."""
    return F.softmax((teacher_logits.float() - center.float()) / temp, dim=-1)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """The next centre: momentum·center + (1-momentum)·(batch mean of the logits over every rank).

    [B, K] logits average over B; [B, N, K] (patch) logits average over the N patches of each row first, then over
    B, as upstream's iBOT loss does. Use it after `softmax_center`: iteration t is centred with the centre that
    includes iteration t-1 (the official code applies its asynchronous update lazily, to the same effect).
    """
    logits = teacher_logits.float()
    if logits.dim() == 3:
        logits = logits.mean(dim=1)
    elif logits.dim() != 2:
        raise ValueError(f"teacher logits must be [B, K] or [B, N, K], got shape {tuple(teacher_logits.shape)}")
    batch_sum = logits.sum(dim=0, keepdim=True)
    _all_reduce(batch_sum)
    batch_mean = batch_sum / (logits.shape[0] * _world_size())
    new = center.float() * momentum + batch_mean.reshape(center.shape) * (1.0 - momentum)
    return new.to(center.dtype)


# ------------------------------------------------------------------------------------------------ losses
def dino_loss(
    student_logits: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor], student_temp: float = 0.1
) -> torch.Tensor:
    """-Σ over every (student, teacher) pair of mean_batch Σ_k t_k · log_softmax(s / student_temp)_k."""
    total = None
    for s in student_logits:
        log_p = F.log_softmax(s.float() / student_temp, dim=-1)
        for t in teacher_probs:
            term = -(t.float() * log_p).sum(dim=-1).mean()
            total = term if total is None else total + term
    if total is None:
        raise ValueError("dino_loss needs at least one student and one teacher tensor")
    return total


def ibot_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor, student_temp: float = 0.1
) -> torch.Tensor:
    """Masked-patch cross-entropy: each image's masked tokens weighted 1/(its masked count), summed, divided by B.

    `student_logits` and `teacher_probs` are [M, K], one row per masked token in the row-major order of `masks`
    ([B, N] bool, i.e. masks.flatten().nonzero()); an image without a masked token contributes nothing, but
    still counts in B.
    """
    masks = masks.reshape(masks.shape[0], -1)
    m = int(masks.sum())
    if student_logits.shape[0] != m or teacher_probs.shape[0] != m:
        raise ValueError(
            f"ibot_loss: masks select {m} tokens but got {student_logits.shape[0]} student and "
            f"{teacher_probs.shape[0]} teacher rows"
        )
    per_token = (teacher_probs.float() * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)
    weights = (1.0 / masks.sum(dim=-1).clamp(min=1).float()).unsqueeze(-1).expand_as(masks)[masks]
    return -(per_token * weights).sum() / masks.shape[0]


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser: -mean_i log(distance of L2-normalised x_i to its nearest neighbour), in float32."""
    if x.shape[0] < 2:
        raise ValueError("koleo_loss needs at least two vectors")
    device_type = x.device.type if x.device.type in ("cuda", "cpu", "mps", "xpu") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            dots = x @ x.t()
            dots.fill_diagonal_(-1.0)
            nearest = dots.argmax(dim=1)
        distances = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
        return -torch.log(distances + eps).mean()
