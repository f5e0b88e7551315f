"""Every checkpoint layout `load_backbone` accepts, on real files, and the errors for the ones it refuses."""

from __future__ import annotations

import functools
import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.models import CheckpointError, load_backbone, save_backbone, save_hf, zoo
from engine.models.checkpoint import official_to_hf
from tests.helpers import tiny_backbone


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, size=(224, 308)) -> float:
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        fa, fb = a.forward_features(x), b.forward_features(x)
    return max((fa[k] - fb[k]).abs().max().item() for k in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"))


@pytest.mark.parametrize("registers,ffn", [(0, "mlp"), (4, "mlp"), (0, "swiglu"), (4, "swiglu")])
def test_official_hub_pth_round_trip(tmp_path: Path, registers: int, ffn: str) -> None:
    model = tiny_backbone(registers, ffn)
    path = tmp_path / "dinov2_custom_pretrain.pth"
    torch.save(model.state_dict(), path)  # exactly what the hub files hold: a flat official state dict
    loaded = load_backbone(path)
    assert loaded.config.num_register_tokens == registers
    assert loaded.config.ffn_layer == ffn
    assert loaded.config.depth == 3 and loaded.embed_dim == 128 and loaded.patch_size == 14
    assert loaded.config.interpolate_antialias == bool(registers)
    assert not loaded.training
    assert _same_outputs(model, loaded) == 0.0


def test_official_training_checkpoint_with_chunked_blocks_and_heads(tmp_path: Path) -> None:
    """eval/training_N/teacher_checkpoint.pth: {"teacher": {backbone.blocks.{chunk}.{i}..., dino_head..., ...}}."""
    model = tiny_backbone(depth=4)
    teacher = {}
    for k, v in model.state_dict().items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // 2}.{i}." + k.split(".", 2)[2]  # 2 chunks of 2 blocks
        teacher["backbone." + k] = v
    teacher["dino_head.mlp.0.weight"] = torch.randn(16, 128)
    teacher["ibot_head.last_layer.weight_g"] = torch.ones(32, 1)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher}, path)
    assert "backbone.blocks.1.3.attn.qkv.weight" in teacher
    loaded = load_backbone(path)
    assert loaded.config.depth == 4
    assert _same_outputs(model, loaded) == 0.0


def test_dinoscope_format_keeps_the_full_config(tmp_path: Path) -> None:
    model = tiny_backbone(registers=4)
    path = save_backbone(model, tmp_path / "mine.pt")
    loaded = load_backbone(path)
    assert loaded.config == model.config
    assert _same_outputs(model, loaded) == 0.0
    assert not list(tmp_path.glob("*.tmp"))


def test_half_precision_files_load_as_float32_models(tmp_path: Path) -> None:
    """fp16/bf16 files (fp16 Hugging Face exports, the bundled demo model) give a float32 model that runs on CPU."""
    from engine.extract import Extractor

    model = tiny_backbone(registers=0)
    for dtype in (torch.float16, torch.bfloat16):
        path = save_backbone(model.to(dtype), tmp_path / f"{dtype}.pt")
        loaded = load_backbone(path)
        assert {p.dtype for p in loaded.parameters()} == {torch.float32}
        rounded = tiny_backbone(registers=0)
        rounded.load_state_dict({k: v.to(dtype).float() for k, v in model.float().state_dict().items()})
        assert _same_outputs(rounded, loaded) == 0.0
        assert np.isfinite(Extractor(loaded, device="cpu").embed_tensor(torch.randn(1, 3, 56, 56)).cls).all()
        model = model.float()
    half_hf = {k: v.half().contiguous() for k, v in official_to_hf(model.state_dict()).items()}
    save_file(half_hf, str(tmp_path / "model.safetensors"))
    assert {p.dtype for p in load_backbone(tmp_path / "model.safetensors").parameters()} == {torch.float32}


@pytest.mark.parametrize("prefix", ["", "dinov2."])
def test_hugging_face_safetensors_and_bin_files(tmp_path: Path, prefix: str) -> None:
    model = tiny_backbone(registers=4)
    hf = {prefix + k: v.contiguous() for k, v in official_to_hf(model.state_dict()).items()}
    if prefix:  # Dinov2ForImageClassification also holds its linear head
        hf["classifier.weight"] = torch.randn(10, 256)
        hf["classifier.bias"] = torch.zeros(10)
    save_file(hf, str(tmp_path / "model.safetensors"))
    torch.save(hf, tmp_path / "pytorch_model.bin")
    for path in (tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin"):
        loaded = load_backbone(path)
        assert loaded.num_register_tokens == 4
        assert _same_outputs(model, loaded) == 0.0


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    sd = tiny_backbone().state_dict()
    del sd["blocks.1.ls2.gamma"]
    sd["blocks.0.attn.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_backbone(tmp_path / "bad.pth")
    assert "blocks.1.ls2.gamma" in str(e.value) and "blocks.0.attn.extra.weight" in str(e.value)


def test_wrong_shapes_are_named(tmp_path: Path) -> None:
    sd = tiny_backbone().state_dict()
    sd["blocks.2.attn.proj.weight"] = torch.zeros(128, 64)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.2\.attn\.proj\.weight"):
        load_backbone(tmp_path / "bad.pth")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_python_objects_are_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(CheckpointError, match=r"refuses to unpickle|cannot read"):
        load_backbone(path)
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "content,message",
    [(b"", "empty"), (b"not a checkpoint at all", "cannot read"), (None, "no such file")],
)
def test_broken_files_get_a_clear_error(tmp_path: Path, content, message) -> None:
    path = tmp_path / "model.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_backbone(path)


def test_truncated_checkpoint_and_non_backbone_dict(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save(tiny_backbone().state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        load_backbone(cut)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(CheckpointError, match="not a DINOv2 backbone"):
        load_backbone(other)


def test_unknown_source_names_the_zoo() -> None:
    with pytest.raises(CheckpointError, match="dinov2_vits14"):
        load_backbone("dinov2_vitz14")


# ------------------------------------------------------------------------------- zoo over loopback
@pytest.fixture
def zoo_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Serve a folder with the official layout (dinov2_vits14/dinov2_vits14_pretrain.pth) on 127.0.0.1."""
    root = tmp_path / "mirror"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DINOSCOPE_ZOO_URL", f"http://127.0.0.1:{server.server_port}")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield root
    server.shutdown()
    server.server_close()


def test_zoo_name_downloads_once_into_the_cache(zoo_server: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny model published under an official name, so the real download and load path runs end to end.
    model = tiny_backbone()
    entry = zoo.entry("dinov2_vits14")
    (zoo_server / entry.folder).mkdir(parents=True)
    torch.save(model.state_dict(), zoo_server / entry.folder / entry.filename)
    assert zoo.status("dinov2_vits14") == "not downloaded"
    seen: list[tuple[int, int | None]] = []
    loaded = load_backbone("dinov2_vits14", progress=lambda p: seen.append((p.done, p.total)))
    assert _same_outputs(model, loaded) == 0.0
    assert seen and seen[-1][0] == seen[-1][1] == (zoo_server / entry.folder / entry.filename).stat().st_size
    assert zoo.status("dinov2_vits14") == "downloaded"
    assert zoo.cache_path("dinov2_vits14").is_file()
    # Second load: from the cache, no server needed.
    monkeypatch.setenv("DINOSCOPE_ZOO_URL", "http://127.0.0.1:9")
    again = load_backbone("dinov2_vits14")
    assert _same_outputs(model, again) == 0.0


def test_offline_zoo_error_says_what_to_fetch_and_where(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused, like an offline machine
    monkeypatch.setenv("DINOSCOPE_ZOO_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(Exception) as e:
        load_backbone("dinov2_vitb14_reg")
    msg = str(e.value)
    assert f"http://127.0.0.1:{port}/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth" in msg
    assert str(zoo.cache_path("dinov2_vitb14_reg")) in msg


def test_zoo_urls_follow_the_official_names() -> None:
    assert zoo.url("dinov2_vits14") == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
    assert zoo.url("dinov2_vitg14_reg").endswith("/dinov2_vitg14/dinov2_vitg14_reg4_pretrain.pth")
    assert len(zoo.ZOO) == 8


def test_a_file_in_torch_hub_cache_is_used(dinoscope_home: Path) -> None:
    model = tiny_backbone()
    hub = dinoscope_home / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(model.state_dict(), hub / "dinov2_vits14_pretrain.pth")
    assert _same_outputs(model, load_backbone("dinov2_vits14", allow_download=False)) == 0.0


def test_export_to_hugging_face_folder_round_trips(tmp_path: Path) -> None:
    model = tiny_backbone(registers=4, ffn="swiglu")
    save_hf(model, tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").is_file()
    loaded = load_backbone(tmp_path / "hf")
    assert _same_outputs(model, loaded) == 0.0
