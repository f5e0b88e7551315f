"""Hostile checkpoints are refused with one sentence naming the file, before any tensor is expanded (issue 15.5)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.models import CheckpointError, load_backbone, save_backbone
from engine.models.checkpoint import save_hf
from tests.helpers import tiny_backbone
from tests.test_indexer import run_cli


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return tiny_backbone()


def official_file(tmp_path: Path, tiny, name: str, **replace: torch.Tensor) -> Path:
    sd = {k: v.detach().clone() for k, v in tiny.state_dict().items()}
    sd.update(replace)
    path = tmp_path / name
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("side", [2600, 100_000])
def test_a_stride_zero_pos_embed_is_refused_before_it_is_expanded(tmp_path: Path, tiny, side: int) -> None:
    dim = tiny.embed_dim
    # A few KB on disk; expanded, 2600^2 positions are 3.5 GB at this width (10.5 GB at ViT-S's), 100,000^2 are 5 TB
    view = torch.randn(1, 1, dim).expand(1, side * side + 1, dim)
    path = official_file(tmp_path, tiny, f"pos{side}.pth", pos_embed=view)
    assert path.stat().st_size < 20_000_000
    with pytest.raises(CheckpointError, match=rf"^{path}: pos_embed declares shape \(1, {side * side + 1}, {dim}\)"
                                              r".*stride-0 view"):
        load_backbone(path)


def test_tensors_sharing_their_bytes_are_refused(tmp_path: Path, tiny) -> None:
    sd = {k: v.detach().clone() for k, v in tiny.state_dict().items()}
    shared = torch.randn(4 * tiny.embed_dim, tiny.embed_dim)
    for i in range(len(tiny.blocks)):  # every block's fc1 is the same bytes: each fits, together they do not
        sd[f"blocks.{i}.mlp.fc1.weight"] = shared
    path = tmp_path / "shared.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: its tensors declare .* refusing to expand them"):
        load_backbone(path)


def a_huge_grid(tmp_path: Path, tiny) -> Path:
    """A real (not a view) pos_embed of 300 x 300 positions: stored in full, but past any DINOv2's grid."""
    return official_file(tmp_path, tiny, "grid.pth", pos_embed=torch.zeros(1, 300 * 300 + 1, tiny.embed_dim))


def test_a_pos_embed_grid_past_the_budget_is_refused(tmp_path: Path, tiny) -> None:
    path = a_huge_grid(tmp_path, tiny)
    with pytest.raises(CheckpointError, match=rf"^{path}: pos_embed has 90000 positions; a DINOv2 backbone has 1 to"):
        load_backbone(path)


@pytest.mark.parametrize(("change", "message"), [
    ({"num_heads": 0}, r"num_heads must be a whole number from 1 to 1024, got 0"),
    ({"num_heads": -3}, r"num_heads must be a whole number from 1 to 1024, got -3"),
    ({"num_heads": 3}, r"num_heads \(3\) must divide embed_dim \(128\)"),
    ({"drop_path_rate": math.nan}, r"drop_path_rate must be a number from 0 to 0.99, got nan"),
    ({"interpolate_offset": 1e308}, r"interpolate_offset must be a number from 0 to 1, got 1e\+308"),
    ({"init_values": math.inf}, r"init_values must be a number"),
    ({"qkv_bias": "yes"}, r"qkv_bias must be true or false"),
    ({"ffn_layer": "conv"}, r"ffn_layer must be 'mlp' or 'swiglu'"),
    ({"embed_dim": 128.0}, r"embed_dim must be a whole number"),
])
def test_every_stored_config_value_is_checked(tmp_path: Path, tiny, change: dict, message: str) -> None:
    path = save_backbone(tiny, tmp_path / "run.pt")
    obj = torch.load(path, weights_only=True)
    obj["config"].update(change)
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: its stored backbone config is invalid: {message}"):
        load_backbone(path)


@pytest.mark.parametrize("config", [[("embed_dim", 128)], "vits14", None])
def test_a_stored_config_that_is_not_a_mapping_is_named(tmp_path: Path, tiny, config) -> None:
    path = save_backbone(tiny, tmp_path / "run.pt")
    obj = torch.load(path, weights_only=True)
    obj["config"] = config
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: its 'config' is a {type(config).__name__}, not a mapping"):
        load_backbone(path)


def test_a_training_checkpoint_with_a_list_config_is_named(tmp_path: Path, tiny) -> None:
    path = tmp_path / "step_10.pt"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in tiny.state_dict().items()},
                "backbone_config": [1, 2, 3]}, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: its backbone_config is a list, not a mapping"):
        load_backbone(path)


def test_a_hugging_face_folder_with_a_broken_config_json_names_it(tmp_path: Path, tiny) -> None:
    folder = save_hf(tiny, tmp_path / "hf")
    (folder / "config.json").write_text('{"hidden_size": 128, oops')
    with pytest.raises(CheckpointError, match=rf"^{folder / 'config.json'}: not a readable JSON file"):
        load_backbone(folder)
    (folder / "config.json").write_bytes(b"\xff\xfe binary")
    with pytest.raises(CheckpointError, match=rf"^{folder / 'config.json'}: not a readable JSON file"):
        load_backbone(folder)


def test_the_cli_prints_one_line_naming_the_file(tmp_path: Path, tiny, dinoscope_home: Path) -> None:
    view = torch.randn(1, 1, tiny.embed_dim).expand(1, 2600 * 2600 + 1, tiny.embed_dim)
    bad = official_file(tmp_path, tiny, "hostile.pth", pos_embed=view)
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(photo)
    r = run_cli("embed", str(photo), "--model", str(bad), "--out", str(tmp_path / "f.npy"), home=dinoscope_home)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: {bad}: pos_embed declares shape" in r.stderr
    assert not (tmp_path / "f.npy").exists()
