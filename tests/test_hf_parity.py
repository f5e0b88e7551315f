"""Numerical parity with Hugging Face `transformers` (a test-only peer) on random weights, both directions.

Current transformers interpolates the plain (no-register) models' position embeddings with an explicit size,
while the official code uses scale_factor with a +0.1 offset. So Dinov2Model matches at the native 518² only,
and at other sizes we follow the official rule (tested against F.interpolate in test_backbone.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from engine.models import load_backbone, save_hf  # noqa: E402
from tests.helpers import tiny_backbone  # noqa: E402


def _hf_tokens(hf, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(pixel_values=x).last_hidden_state


def _our_tokens(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        f = model.forward_features(x)
    return torch.cat([f["x_norm_clstoken"][:, None], f["x_norm_regtokens"], f["x_norm_patchtokens"]], dim=1)


@pytest.fixture(scope="module", params=[(0, "mlp"), (4, "mlp"), (0, "swiglu"), (4, "swiglu")],
                ids=["plain", "reg", "plain-swiglu", "reg-swiglu"])
def pair(request, tmp_path_factory):
    registers, ffn = request.param
    ours = tiny_backbone(registers, ffn, seed=7)
    folder = save_hf(ours, tmp_path_factory.mktemp("hf") / "model")
    hf = transformers.AutoModel.from_pretrained(folder).eval()
    return registers, ours, hf, folder


def test_hf_loads_our_export_as_the_right_class(pair) -> None:
    registers, _, hf, _ = pair
    expected = "Dinov2WithRegistersModel" if registers else "Dinov2Model"
    assert type(hf).__name__ == expected


def test_identical_outputs_at_the_native_518(pair) -> None:
    _, ours, hf, _ = pair
    x = torch.randn(2, 3, 518, 518)
    assert (_our_tokens(ours, x) - _hf_tokens(hf, x)).abs().max() < 1e-4


@pytest.mark.parametrize("size", [(224, 224), (224, 308), (434, 196)])
def test_register_models_match_at_any_size(pair, size) -> None:
    registers, ours, hf, _ = pair
    if not registers:
        pytest.skip("plain models: transformers uses a different pos-embed interpolation (documented)")
    x = torch.randn(2, 3, *size)
    assert (_our_tokens(ours, x) - _hf_tokens(hf, x)).abs().max() < 1e-4


def test_plain_models_differ_from_transformers_off_native_size(pair) -> None:
    """Documents the known difference: a user of HF weights sees slightly different features at 224."""
    registers, ours, hf, _ = pair
    if registers:
        pytest.skip("register models agree everywhere")
    x = torch.randn(1, 3, 224, 224)
    assert (_our_tokens(ours, x) - _hf_tokens(hf, x)).abs().max() > 1e-4


def test_weights_saved_by_transformers_load_back_identically(pair, tmp_path: Path) -> None:
    _, ours, hf, _ = pair
    hf.save_pretrained(tmp_path / "resaved")
    loaded = load_backbone(tmp_path / "resaved")
    for k, v in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_hf_pooler_is_our_forward(pair) -> None:
    _, ours, hf, _ = pair
    x = torch.randn(2, 3, 518, 518)
    with torch.no_grad():
        assert (hf(pixel_values=x).pooler_output - ours(x)).abs().max() < 1e-4
