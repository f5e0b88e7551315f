"""dino.txt loads from its three official files (a reduced model with the official key names), matches the
official code's outputs, indexes through load_backbone, and names the file at fault when one is wrong."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.models import CheckpointError, load_backbone, load_dinotxt, zoo
from engine.models.dinotxt import TextConfig, TextTower, VisionHead, VisionHeadConfig
from engine.models.dinotxt_load import is_dinotxt_source
from engine.text import Tokenizer
from tests.dinotxt_helpers import BACKBONE, TEXT_ENCODER, VISION_HEAD, save_tiny_dinotxt
from tests.helpers import tiny_backbone


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_dinotxt(tmp_path_factory.mktemp("dinotxt"))


@pytest.fixture(scope="module")
def model(folder):
    return load_dinotxt(folder)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


def _copy(folder: Path, dest: Path, skip: str | None = None) -> Path:
    dest.mkdir()
    for name in (BACKBONE, VISION_HEAD, TEXT_ENCODER):
        if name != skip:
            (dest / name).write_bytes((folder / name).read_bytes())
    return dest


# Printed by the official dinov2 code (dinov2/hub/text: DinoTxt over DINOv2Wrapper(DinoVisionTransformer) and
# TextTransformer, fetched checkout) for this reduced model, fp32; see docs/notes/txt.md for the script.
OFFICIAL_IMAGE = [[-0.016143, 0.011912, 0.014308, 0.047835], [-0.017771, 0.009112, 0.01864, 0.047924]]
OFFICIAL_IMAGE_TAIL = [[0.106428, 0.004384, -0.032746], [0.110228, 0.00134, -0.030924]]
OFFICIAL_TEXT = [[0.000436, -0.061641, -0.024635, 0.068731], [-0.048988, -0.076891, -0.070129, 0.069195]]
OFFICIAL_TEXT_TAIL = [[0.011926, -0.006979, -0.037534], [0.038598, 0.013547, -0.117287]]
OFFICIAL_SIM = [0.016940098, 0.021166543, 0.016119398, 0.021264730]


def test_outputs_match_the_official_code(model, tok):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    ids = tok.tokenize(["a red motorcycle", "東京の夜景 🌃"])
    with torch.no_grad():
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(ids, normalize=True)
    assert torch.allclose(img[:, :4], torch.tensor(OFFICIAL_IMAGE), atol=1e-4)
    assert torch.allclose(img[:, -3:], torch.tensor(OFFICIAL_IMAGE_TAIL), atol=1e-4)
    assert torch.allclose(txt[:, :4], torch.tensor(OFFICIAL_TEXT), atol=1e-4)
    assert torch.allclose(txt[:, -3:], torch.tensor(OFFICIAL_TEXT_TAIL), atol=1e-4)
    assert torch.allclose((img @ txt.T).flatten(), torch.tensor(OFFICIAL_SIM), atol=1e-4)


def test_shapes_and_the_two_halves(model, tok):
    x = torch.randn(3, 3, 224, 308)
    with torch.no_grad():
        cls, patches = model.get_visual_class_and_patch_tokens(x)
        image = model.encode_image(x)
        text = model.encode_text(tok.tokenize(["a", "b", "c"]))
    assert cls.shape == (3, 128) and patches.shape == (3, 16 * 22, 128)
    assert torch.allclose(image, torch.cat([cls, patches.mean(1)], -1), atol=1e-6)
    assert image.shape == text.shape == (3, 256)
    assert torch.allclose(model.encode_image(x, normalize=True).norm(dim=-1), torch.ones(3), atol=1e-5)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_text_pools_the_end_token_and_ignores_padding(model, tok):
    ids = tok.tokenize(["a red motorcycle", "a much longer text about a red motorcycle in the rain"])
    with torch.no_grad():
        both = model.encode_text(ids)
        alone = model.encode_text(ids[:1])
        longer = model.encode_text(tok.tokenize("a red motorcycle", context_length=77))
        other = model.encode_text(tok.tokenize("a blue bicycle"))
    assert torch.allclose(both[0], alone[0], atol=1e-5)
    assert torch.allclose(alone, longer, atol=1e-6)
    assert not torch.allclose(alone, other, atol=1e-3)


def test_full_size_architecture_has_the_released_parameter_count():
    with torch.device("meta"):
        head = VisionHead(VisionHeadConfig())
        text = TextTower(TextConfig())
    backbone = zoo.ZOO["dinov2_vitl14_reg"].params
    n = backbone + sum(p.numel() for p in head.parameters()) + sum(p.numel() for p in text.parameters())
    assert n == zoo.text_entry(zoo.DINOTXT).params
    assert text.config.heads * 64 == 1280 and head.config.ffn_hidden == 2752


def test_load_backbone_gives_the_image_encoder_for_indexing(folder, model):
    from engine.extract import Extractor

    encoder = load_backbone(folder)
    assert encoder.embed_dim == 256 and encoder.patch_size == 14
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = F.normalize(model.encode_image(x), dim=-1)
        out = encoder.forward_features(x)
    assert torch.allclose(F.normalize(out["x_norm_clstoken"], dim=-1), expected, atol=1e-5)
    assert out["x_norm_patchtokens"].shape == (2, 256, 256)
    assert not out["x_norm_patchtokens"][..., :128].any()  # regions live in the patch half
    batch = Extractor(encoder, device="cpu", precision="fp32", patch_tokens=True).embed_tensor(x)
    assert torch.allclose(torch.from_numpy(batch.cls), expected, atol=1e-4)  # LayerScale folded, same vectors


def test_the_image_encoder_hash_differs_from_the_plain_backbone(folder):
    from engine.store.indexer import model_hash

    plain = load_backbone(folder / BACKBONE)
    assert model_hash(load_backbone(folder)) != model_hash(plain)
    assert model_hash(load_backbone(folder)) == model_hash(load_backbone(folder))


@pytest.mark.parametrize("missing", [BACKBONE, VISION_HEAD, TEXT_ENCODER])
def test_a_missing_file_is_named(folder, tmp_path, missing):
    broken = _copy(folder, tmp_path / "partial", skip=missing)
    with pytest.raises(CheckpointError, match=missing):
        load_dinotxt(broken)


def test_swapped_files_are_named(folder, tmp_path):
    broken = _copy(folder, tmp_path / "swapped")
    (broken / TEXT_ENCODER).write_bytes((folder / VISION_HEAD).read_bytes())
    with pytest.raises(CheckpointError, match=f"{TEXT_ENCODER}: not the dino.txt text encoder"):
        load_dinotxt(broken)
    (broken / VISION_HEAD).write_bytes((folder / BACKBONE).read_bytes())
    with pytest.raises(CheckpointError, match=f"{VISION_HEAD}: not the dino.txt vision head"):
        load_dinotxt(broken)


def test_a_backbone_from_another_model_is_named(folder, tmp_path):
    no_registers = _copy(folder, tmp_path / "noreg")
    torch.save(tiny_backbone(registers=0, depth=2, dim=128).state_dict(), no_registers / BACKBONE)
    with pytest.raises(CheckpointError, match=f"{BACKBONE}: a backbone without registers"):
        load_dinotxt(no_registers)
    narrow = _copy(folder, tmp_path / "narrow")
    torch.save(tiny_backbone(registers=4, depth=2, dim=64).state_dict(), narrow / BACKBONE)
    with pytest.raises(CheckpointError, match=f"{BACKBONE}: a backbone 64 wide"):
        load_dinotxt(narrow)


def test_extra_or_misshapen_keys_are_named(folder, tmp_path):
    extra = _copy(folder, tmp_path / "extra")
    sd = torch.load(folder / VISION_HEAD)
    sd["block_list.0.attn.qkv.bias"] = torch.zeros(384)
    torch.save(sd, extra / VISION_HEAD)
    with pytest.raises(CheckpointError, match=r"vision_head\.pth: does not match .*unexpected 1 key.*qkv\.bias"):
        load_dinotxt(extra)
    small = _copy(folder, tmp_path / "small")
    sd = torch.load(folder / TEXT_ENCODER)
    sd["head.linear_projection.weight"] = sd["head.linear_projection.weight"][:200]
    torch.save(sd, small / TEXT_ENCODER)
    with pytest.raises(CheckpointError, match=r"text_encoder\.pth: projects text to 200 dimensions"):
        load_dinotxt(small)


def test_corrupt_and_unsafe_files_are_refused_by_name(folder, tmp_path):
    corrupt = _copy(folder, tmp_path / "corrupt")
    (corrupt / TEXT_ENCODER).write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match=f"{TEXT_ENCODER}: cannot read"):
        load_dinotxt(corrupt)
    unsafe = _copy(folder, tmp_path / "unsafe")
    sd = torch.load(folder / VISION_HEAD)
    torch.save({"head": sd, "note": functools.partial(print)}, unsafe / VISION_HEAD)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        load_dinotxt(unsafe)


def test_source_detection():
    assert is_dinotxt_source("dinov2_vitl14_reg4_dinotxt")
    assert is_dinotxt_source("dinov2_vitl14_reg4_dinotxt_tet1280d20h24l")
    assert not is_dinotxt_source("dinov2_vitl14_reg")


def test_zoo_downloads_the_three_official_files(folder, tmp_path, monkeypatch):
    """A loopback server with the official layout: the backbone comes through the ordinary zoo entry."""
    site = tmp_path / "site" / "dinov2_vitl14"
    site.mkdir(parents=True)
    for name in (BACKBONE, VISION_HEAD, TEXT_ENCODER):
        (site / name).write_bytes((folder / name).read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site.parent))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("DINOSCOPE_ZOO_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
        assert zoo.text_model_status(zoo.DINOTXT) == "not downloaded"
        with pytest.raises(CheckpointError, match="not downloaded"):
            load_dinotxt(zoo.DINOTXT, allow_download=False)
        seen = []
        model = load_dinotxt(zoo.DINOTXT, progress=lambda p: seen.append(p.done))
    finally:
        httpd.shutdown()
    assert model.source == zoo.DINOTXT
    assert seen and seen[-1] == sum((folder / n).stat().st_size for n in (BACKBONE, VISION_HEAD, TEXT_ENCODER))
    assert zoo.text_model_status(zoo.DINOTXT) == "downloaded"
    paths = zoo.text_model_paths(zoo.DINOTXT)
    (paths["text_encoder"]).rename(paths["text_encoder"].with_name("aside"))
    assert zoo.text_model_status(zoo.DINOTXT) == "partial"
    paths["text_encoder"].with_name("aside").rename(paths["text_encoder"])
    assert {p.name for p in paths.values()} == {BACKBONE, VISION_HEAD, TEXT_ENCODER}
    assert zoo.text_model_url(zoo.DINOTXT, "vision_head").endswith(f"/dinov2_vitl14/{VISION_HEAD}")
    again = load_dinotxt(zoo.DINOTXT, allow_download=False)  # now cached
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(again.encode_image(x), model.encode_image(x))


def test_the_image_encoder_feeds_the_patch_viewers(folder, skimage_data_dir):
    """pca and the viewer's patch maps call get_intermediate_layers; a dino.txt model gives its head's tokens."""
    import numpy as np
    from PIL import Image

    from engine.viz.patches import patch_tokens

    encoder = load_backbone(folder)
    photo = np.asarray(Image.open(skimage_data_dir / "chelsea.png").convert("RGB"))
    tokens = patch_tokens(encoder, [photo], resolution=224, device="cpu", precision="fp32")[0]
    assert tokens.tokens.shape == (tokens.grid[0] * tokens.grid[1], 256)
    with pytest.raises(ValueError, match="head's tokens only"):
        encoder.get_intermediate_layers(torch.zeros(1, 3, 28, 28), n=2)
