"""The from-scratch ViT against the facts of the official code (DINOV2_SPEC.md §1, §9)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.models import OFFICIAL_CONFIGS, DinoVisionTransformer
from engine.models.vision_transformer import interpolate_pos_embed
from tests.helpers import tiny_backbone

EXPECTED_PARAMS = {"vits14": 22_056_576, "vitb14": 86_580_480, "vitl14": 304_368_640, "vitg14": 1_136_480_768}


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_official_architectures_have_the_published_parameter_counts(name: str) -> None:
    cfg = OFFICIAL_CONFIGS[name]
    with torch.device("meta"):
        model = DinoVisionTransformer(cfg)
    n = sum(p.numel() for p in model.parameters())
    arch = name.split("_")[1]
    expected = EXPECTED_PARAMS[arch] + (4 * cfg.embed_dim if name.endswith("_reg") else 0)
    assert n == expected
    assert model.pos_embed.shape == (1, 1370, cfg.embed_dim)
    assert cfg.embed_dim // cfg.num_heads == 64


def test_vits14_state_dict_has_the_official_175_keys_in_order() -> None:
    with torch.device("meta"):
        model = DinoVisionTransformer(OFFICIAL_CONFIGS["dinov2_vits14"])
    keys = list(model.state_dict())
    assert len(keys) == 175
    assert keys[:6] == ["cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight",
                        "patch_embed.proj.bias", "blocks.0.norm1.weight"]
    assert keys[-2:] == ["norm.weight", "norm.bias"]
    assert model.state_dict()["blocks.0.attn.qkv.weight"].shape == (1152, 384)


def test_vitg14_uses_swiglu_with_the_official_hidden_width() -> None:
    with torch.device("meta"):
        model = DinoVisionTransformer(OFFICIAL_CONFIGS["dinov2_vitg14"])
    sd = model.state_dict()
    assert sd["blocks.0.mlp.w12.weight"].shape == (8192, 1536)
    assert sd["blocks.0.mlp.w3.weight"].shape == (1536, 4096)


def test_register_model_output_shapes_on_a_non_square_input() -> None:
    """Oracle from the spec: 224×308 into S-reg gives 352 patch tokens and a 16×22 grid."""
    model = DinoVisionTransformer(OFFICIAL_CONFIGS["dinov2_vits14_reg"]).eval()
    x = torch.randn(2, 3, 224, 308)
    with torch.no_grad():
        out = model.forward_features(x)
        grids = model.get_intermediate_layers(x, n=4, reshape=True)
    assert out["x_norm_clstoken"].shape == (2, 384)
    assert out["x_norm_regtokens"].shape == (2, 4, 384)
    assert out["x_norm_patchtokens"].shape == (2, 352, 384)
    assert out["x_prenorm"].shape == (2, 357, 384)
    assert len(grids) == 4 and grids[0].shape == (2, 384, 16, 22)


@pytest.mark.parametrize("registers", [0, 4])
def test_forward_and_intermediate_layers_follow_the_official_semantics(registers: int) -> None:
    model = tiny_backbone(registers)
    x = torch.randn(2, 3, 224, 252)
    with torch.no_grad():
        ff = model.forward_features(x)
        (last,) = model.get_intermediate_layers(x, n=1)
        assert torch.allclose(last, ff["x_norm_patchtokens"], atol=1e-6)
        assert torch.allclose(model(x), ff["x_norm_clstoken"], atol=1e-6)
        # norm=False gives the raw block output; the last one is x_prenorm's patch part.
        (raw,) = model.get_intermediate_layers(x, n=1, norm=False)
        assert torch.allclose(raw, ff["x_prenorm"][:, 1 + registers :], atol=1e-6)
        # A list picks 0-based blocks; with class tokens we get (patch, cls) pairs, cls normed.
        pairs = model.get_intermediate_layers(x, n=[0, 2], return_class_token=True)
        assert len(pairs) == 2
        assert torch.allclose(pairs[1][1], ff["x_norm_clstoken"], atol=1e-6)
        assert pairs[0][0].shape == (2, 16 * 18, 128)
    with pytest.raises(ValueError, match="out of range"):
        model.get_intermediate_layers(x, n=[5])


def test_masked_patches_become_the_mask_token_and_keep_their_position() -> None:
    model = tiny_backbone()
    x = torch.randn(1, 3, 56, 56)
    masks = torch.zeros(1, 16, dtype=torch.bool)
    masks[0, 5] = True
    with torch.no_grad():
        tokens = model.prepare_tokens_with_masks(x, masks)
        pos = model.interpolate_pos_encoding(tokens, 56, 56)
    expected = model.mask_token[0] + pos[0, 1 + 5]
    assert torch.allclose(tokens[0, 1 + 5], expected, atol=1e-6)
    out = model.forward_features(x, masks=masks)
    assert out["masks"] is masks


def test_non_multiple_input_size_raises_a_clear_error() -> None:
    model = tiny_backbone()
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        model(torch.randn(1, 3, 225, 224))


@pytest.mark.parametrize("h0,w0", [(16, 16), (16, 22), (39, 43), (78, 86), (1, 3)])
def test_plain_models_interpolate_with_the_official_offset_path(h0: int, w0: int) -> None:
    """Plain hub models: bicubic, scale_factor=((h0+0.1)/M, (w0+0.1)/M), no antialias, in float32."""
    model = tiny_backbone()
    pos = model.pos_embed
    m = 37
    grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic", antialias=False)
    ref = torch.cat([pos[:, :1], ref.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)
    with torch.no_grad():
        tokens = torch.zeros(1, 1 + h0 * w0, 128)
        ours = model.interpolate_pos_encoding(tokens, h0 * 14, w0 * 14)
    assert torch.equal(ours, ref)
    # The explicit-size path samples elsewhere: the two are not interchangeable.
    size_path = interpolate_pos_embed(pos, h0, w0, offset=0.0, antialias=False)
    if (h0, w0) == (16, 16):
        assert (size_path - ours).abs().max() > 1e-3


def test_register_models_interpolate_to_an_explicit_size_with_antialias() -> None:
    model = tiny_backbone(registers=4)
    pos = model.pos_embed
    grid = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(16, 22), mode="bicubic", antialias=True)
    ref = torch.cat([pos[:, :1], ref.permute(0, 2, 3, 1).reshape(1, 16 * 22, -1)], dim=1)
    with torch.no_grad():
        ours = model.interpolate_pos_encoding(torch.zeros(1, 1 + 352, 128), 224, 308)
    assert torch.equal(ours, ref)


def test_native_square_size_uses_the_stored_table_unchanged() -> None:
    model = tiny_backbone()
    tokens = torch.zeros(1, 1370, 128)
    assert model.interpolate_pos_encoding(tokens, 518, 518) is model.pos_embed


def test_pos_embed_cache_follows_weight_updates() -> None:
    model = tiny_backbone()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        model.pos_embed.add_(0.5)
        after = model(x)
    assert not torch.allclose(before, after)


def test_stochastic_depth_in_training_and_deterministic_eval() -> None:
    from engine.models.layers import drop_add_residual_stochastic_depth

    x = torch.zeros(10, 4, 8)
    out = drop_add_residual_stochastic_depth(x, lambda t: torch.ones_like(t), 0.4)
    touched = (out != 0).any(dim=(1, 2))
    assert touched.sum() == 6  # floor(10·0.6) samples get the residual...
    assert torch.allclose(out[touched], torch.full_like(out[touched], 10 / 6))  # ...scaled by B/subset

    from engine.models import DinoVisionTransformer
    from tests.helpers import tiny_config

    net = DinoVisionTransformer(tiny_config().with_(drop_path_rate=0.4))
    x = torch.randn(4, 3, 56, 56)
    net.train()
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(2)
    b = net(x)
    assert not torch.allclose(a, b)  # random subsets differ between calls
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_list_input_runs_each_crop_set_separately() -> None:
    model = tiny_backbone()
    g, loc = torch.randn(2, 3, 56, 56), torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        outs = model.forward_features([g, loc], masks=[None, None])
        single = model.forward_features(loc)
    assert len(outs) == 2
    assert torch.allclose(outs[1]["x_norm_clstoken"], single["x_norm_clstoken"])


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_folding_layerscale_keeps_outputs_and_leaves_the_original_alone(ffn: str) -> None:
    from engine.models.fuse import fold_layerscale

    model = tiny_backbone(registers=4, ffn=ffn)
    folded = fold_layerscale(model)
    x = torch.randn(2, 3, 112, 140)
    with torch.no_grad():
        a, b = model.forward_features(x), folded.forward_features(x)
    assert (a["x_prenorm"] - b["x_prenorm"]).abs().max() < 1e-5
    assert isinstance(model.blocks[0].ls1, torch.nn.Module) and hasattr(model.blocks[0].ls1, "gamma")
    assert not hasattr(folded.blocks[0].ls1, "gamma")
