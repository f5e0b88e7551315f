"""DINOv2 losses and teacher targets against small cases worked by hand (single process)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import dino_loss, ibot_loss, koleo_loss, sinkhorn_knopp, softmax_center, update_center


def _log_softmax_row(row: list[float]) -> list[float]:
    lse = math.log(sum(math.exp(v) for v in row))
    return [v - lse for v in row]


def _ce(t: list[float], s: list[float], temp: float) -> float:
    """-Σ t·log_softmax(s/temp), by hand."""
    return -sum(ti * li for ti, li in zip(t, _log_softmax_row([v / temp for v in s]), strict=True))


# ------------------------------------------------------------------------------------------------ DINO
def test_dino_loss_two_by_three_by_hand():
    s = torch.tensor([[0.1, 0.2, 0.0], [0.0, 0.0, 0.3]])
    t = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    # s / 0.1 = [[1, 2, 0], [0, 0, 3]]
    # row 0: lse = ln(e + e² + 1) = 2.407606; log-softmax = [-1.407606, -0.407606, -2.407606]
    #        CE = 0.5·1.407606 + 0.5·0.407606 = 0.907606
    # row 1: lse = ln(2 + e³) = 3.094923; CE = 1·(3.094923 - 3) = 0.094923
    # batch mean = (0.907606 + 0.094923) / 2 = 0.501264
    assert dino_loss([s], [t]).item() == pytest.approx(0.501264, abs=2e-6)
    row0 = 0.5 * (math.log(math.e + math.e**2 + 1) - 1) + 0.5 * (math.log(math.e + math.e**2 + 1) - 2)
    row1 = math.log(2 + math.e**3) - 3
    assert dino_loss([s], [t]).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_dino_loss_sums_every_student_teacher_pair():
    torch.manual_seed(0)
    students = [torch.randn(2, 3) for _ in range(3)]
    teachers = [torch.softmax(torch.randn(2, 3), -1) for _ in range(2)]
    expected = 0.0
    for s in students:
        for t in teachers:
            expected += sum(_ce(t[i].tolist(), s[i].tolist(), 0.1) for i in range(2)) / 2
    assert dino_loss(students, teachers).item() == pytest.approx(expected, rel=1e-5)
    # student temperature is a parameter
    assert dino_loss(students[:1], teachers[:1], student_temp=0.2).item() == pytest.approx(
        sum(_ce(teachers[0][i].tolist(), students[0][i].tolist(), 0.2) for i in range(2)) / 2, rel=1e-5
    )


# ------------------------------------------------------------------------------------------------ iBOT
def test_ibot_loss_weights_each_image_by_its_masked_count():
    masks = torch.tensor(
        [[True, True, False, False], [False, False, False, False], [False, False, False, True]]
    )  # image 0: 2 masked tokens, image 1: none, image 2: one
    s = torch.tensor([[0.2, 0.0], [0.0, 0.1], [0.3, -0.1]])  # masked tokens in row-major order
    t = torch.tensor([[0.7, 0.3], [0.4, 0.6], [1.0, 0.0]])
    c = [_ce(t[i].tolist(), s[i].tolist(), 0.1) for i in range(3)]
    # (c0/2 + c1/2 + c2/1) / B, with B = 3 images (the unmasked one counts in B, adds nothing)
    expected = (c[0] / 2 + c[1] / 2 + c[2]) / 3
    assert ibot_loss(s, t, masks).item() == pytest.approx(expected, rel=1e-6)
    # two more unmasked images only change the denominator
    more = torch.cat([masks, torch.zeros(2, 4, dtype=torch.bool)])
    assert ibot_loss(s, t, more).item() == pytest.approx(expected * 3 / 5, rel=1e-6)


def test_ibot_loss_rejects_rows_that_do_not_match_the_masks():
    masks = torch.tensor([[True, False], [True, True]])
    with pytest.raises(ValueError, match="masks select 3 tokens"):
        ibot_loss(torch.zeros(2, 4), torch.zeros(2, 4), masks)


# ------------------------------------------------------------------------------------------------ KoLeo
def test_koleo_three_points_by_hand():
    # unit directions at 0°, 60° and 180° (given at other lengths: KoLeo normalises first)
    x = torch.tensor([[3.0, 0.0], [0.25, 0.25 * math.sqrt(3)], [-0.5, 0.0]])
    # chords: |p0-p1| = 1, |p1-p2| = √3, |p0-p2| = 2 -> nearest distances 1, 1, √3
    expected = -(math.log(1) + math.log(1) + math.log(math.sqrt(3))) / 3  # = -ln(3)/6
    assert koleo_loss(x).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(-math.log(3) / 6)


def test_koleo_equals_minus_mean_log_min_distance():
    torch.manual_seed(1)
    x = torch.randn(12, 5)
    xn = torch.nn.functional.normalize(x, dim=-1)
    d = torch.cdist(xn, xn)
    d.fill_diagonal_(float("inf"))
    expected = -torch.log(d.min(dim=1).values).mean()
    assert koleo_loss(x).item() == pytest.approx(expected.item(), abs=1e-5)


def test_koleo_gradient_pushes_close_points_apart():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.05], [-1.0, 0.0]], requires_grad=True)
    koleo_loss(x).backward()
    # descending the loss moves point 1 away from point 0 (up, +y)
    assert x.grad[1, 1] < 0


# ------------------------------------------------------------------------------------------------ Sinkhorn-Knopp
def _sk_official(logits: torch.Tensor, temp: float, n_iters: int = 3) -> torch.Tensor:
    """The upstream iteration verbatim (exp, divide): the reference the log-space version must equal."""
    q = torch.exp(logits.double() / temp).t()
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(n_iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def test_sinkhorn_rows_sum_to_one_and_match_the_official_iteration():
    torch.manual_seed(0)
    logits = torch.randn(16, 10) * 0.5
    q = sinkhorn_knopp(logits, temp=0.07)
    assert q.shape == (16, 10) and q.dtype == torch.float32
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.double(), _sk_official(logits, 0.07), atol=1e-6, rtol=1e-5)
    assert (q >= 0).all()


def test_sinkhorn_prototype_marginals_tend_to_b_over_k():
    """Rows sum to 1 exactly after any number of iterations; prototype sums reach B/K only in the limit."""
    torch.manual_seed(2)
    b, k = 32, 8
    logits = torch.randn(b, k) + torch.linspace(0, 2, k)  # some prototypes favoured by every sample
    softmax_dev = (torch.softmax(logits / 0.1, -1).sum(0) - b / k).abs().max()
    devs = [(sinkhorn_knopp(logits, 0.1, n_iters=n).sum(0) - b / k).abs().max() for n in (1, 3, 10, 200)]
    assert softmax_dev > devs[0] > devs[1] > devs[2] > devs[3]
    assert devs[1] > 1.0  # 3 iterations (the default) are far from balanced on such peaked logits...
    assert devs[3] < 1e-4  # ...but the iteration converges to prototype sums of B/K
    torch.testing.assert_close(sinkhorn_knopp(logits, 0.1, n_iters=200).sum(1), torch.ones(b), atol=1e-5, rtol=0)


def test_sinkhorn_invariants_shifts_and_sample_count():
    """Q is unchanged by a constant added to every logit (the global max-subtraction case) or per prototype (the
    first row normalisation divides it out), and n_samples only rescales intermediate values, so it cannot change
    the single-process result. A per-sample shift does change Q: subtracting each sample's own max would be wrong."""
    torch.manual_seed(3)
    logits = torch.randn(6, 5)
    q = sinkhorn_knopp(logits, 0.1)
    torch.testing.assert_close(sinkhorn_knopp(logits + 7.0, 0.1), q, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(sinkhorn_knopp(logits + torch.randn(6, 1), 0.1), q, atol=1e-3)
    torch.testing.assert_close(sinkhorn_knopp(logits + torch.randn(1, 5), 0.1), q, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sinkhorn_knopp(logits, 0.1, n_samples=600), q, atol=1e-6, rtol=1e-5)


def test_sinkhorn_stays_finite_where_the_plain_exponential_overflows():
    torch.manual_seed(4)
    logits = torch.randn(8, 6) * 6.0  # |logits| / 0.04 reaches hundreds: exp overflows in float32
    plain = torch.exp(logits / 0.04)
    assert not torch.isfinite(plain).all()
    q = sinkhorn_knopp(logits, 0.04)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.double(), _sk_official(logits, 0.04), atol=1e-5, rtol=1e-4)  # float64 copes


def test_sinkhorn_empty_input():
    assert sinkhorn_knopp(torch.zeros(0, 4), 0.05).shape == (0, 4)


# ------------------------------------------------------------------------------------------------ centring
def test_softmax_center_by_hand():
    logits = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    center = torch.tensor([[1.0, 0.0]])
    # (l - c) / 0.5 = [[0, 4], [4, 0]]
    p = softmax_center(logits, center, temp=0.5)
    e4 = math.exp(4)
    torch.testing.assert_close(p, torch.tensor([[1 / (1 + e4), e4 / (1 + e4)], [e4 / (1 + e4), 1 / (1 + e4)]]))


def test_update_center_by_hand_for_cls_and_patch_logits():
    logits = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    center = torch.tensor([[1.0, 0.0]])
    # batch mean [2, 1]; 0.9·[1, 0] + 0.1·[2, 1] = [1.1, 0.1]
    torch.testing.assert_close(update_center(center, logits), torch.tensor([[1.1, 0.1]]))
    torch.testing.assert_close(update_center(center, logits, momentum=0.5), torch.tensor([[1.5, 0.5]]))
    # [B=2, N, K=2] with unequal patches per row: mean over patches first, then over images
    patch = torch.tensor([[[0.0, 4.0], [2.0, 0.0]], [[6.0, 2.0], [6.0, 2.0]]])  # row means [1,2] and [6,2]
    c3 = torch.zeros(1, 1, 2)
    out = update_center(c3, patch)
    assert out.shape == (1, 1, 2)
    torch.testing.assert_close(out, torch.tensor([[[0.35, 0.2]]]))  # 0.1 · [3.5, 2]


def test_centering_uses_the_centre_that_already_includes_the_previous_batch():
    """Iteration t is centred with c_t = 0.9·c_{t-1} + 0.1·mean(batch t-1): use, then update."""
    b1 = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    b2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    center = torch.zeros(1, 2)
    p1 = softmax_center(b1, center, 0.1)
    center = update_center(center, b1)  # [0.1, 0.0]
    p2 = softmax_center(b2, center, 0.1)
    center = update_center(center, b2)  # 0.9·[0.1, 0] + 0.1·[0.5, 0.5] = [0.14, 0.05]
    torch.testing.assert_close(p1, torch.softmax(b1 / 0.1, -1))
    torch.testing.assert_close(p2, torch.softmax((b2 - torch.tensor([[0.1, 0.0]])) / 0.1, -1))
    torch.testing.assert_close(center, torch.tensor([[0.14, 0.05]]))
