"""`python -m app heatmap PHOTO --text ... --out FILE` on a real photo with a reduced dino.txt (official layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from engine.models import load_dinotxt
from engine.text import Tokenizer
from engine.text.heatmap import text_heatmap
from engine.transforms import dense_transform
from tests.dinotxt_helpers import save_tiny_dinotxt


@pytest.fixture(scope="module")
def setup(tmp_path_factory, skimage_data_dir):
    root = tmp_path_factory.mktemp("heatmap")
    photo = root / "motorcycle.jpg"
    Image.open(skimage_data_dir / "motorcycle_left.png").convert("RGB").save(photo, quality=92)
    return photo, save_tiny_dinotxt(root / "dinotxt")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_writes_a_picture_of_the_photos_size_that_depends_on_the_words(setup, tmp_path, capsys):
    photo, model = setup
    outs = []
    for i, text in enumerate(["a red motorcycle", "a bowl of soup"]):
        out = tmp_path / f"heat{i}.png"
        code, stdout, err = run(capsys, "heatmap", str(photo), "--text", text, "--out", str(out), "--model",
                                str(model), "--device", "cpu", "--dtype", "fp32", "--resolution", "224")
        assert code == 0, err
        assert f"wrote {out}" in stdout and "best match at" in stdout
        outs.append(np.asarray(Image.open(out).convert("RGB")).astype(int))
    size = Image.open(photo).size
    assert outs[0].shape == outs[1].shape == (size[1], size[0], 3)
    assert np.abs(outs[0] - outs[1]).mean() > 2  # different words, different heat
    jpg = tmp_path / "heat.jpg"
    code, _, err = run(capsys, "heatmap", str(photo), "--text", "wheels", "--out", str(jpg), "--model", str(model),
                       "--device", "cpu", "--dtype", "fp32", "--resolution", "224")
    assert code == 0, err
    assert Image.open(jpg).format == "JPEG"


def test_the_map_is_the_cosine_of_the_text_patch_half_with_each_patch(setup):
    """At the patch centres the 4x-finer map equals the notebook's maths done by hand on the patch grid."""
    photo, folder = setup
    model = load_dinotxt(folder)
    image = np.asarray(Image.open(photo).convert("RGB"))
    heat = text_heatmap(model, image, "a red motorcycle", resolution=224, device="cpu", precision="fp32")
    x, grid = dense_transform(image, resolution=224, patch_size=14)
    with torch.no_grad():
        _, patches = model.get_visual_class_and_patch_tokens(x[None])
        words = model.encode_text(Tokenizer().tokenize("a red motorcycle"))[0, 128:]
    manual = torch.nn.functional.normalize(patches[0], dim=-1) @ torch.nn.functional.normalize(words, dim=0)
    manual = manual.reshape(grid).numpy()
    assert heat.sim.shape == (grid[0] * 4, grid[1] * 4)
    assert heat.size == image.shape[:2]
    # bicubic upsampling with align_corners=False: a patch's centre falls between fine cells 4i+1 and 4i+2
    centre = heat.sim.reshape(grid[0], 4, grid[1], 4)[:, 1:3, :, 1:3].mean(axis=(1, 3))
    assert np.corrcoef(centre.ravel(), manual.ravel())[0, 1] > 0.97
    assert heat.best_score == pytest.approx(float(heat.sim.max()))


def test_bad_input_gets_one_clear_message(setup, tmp_path, capsys):
    photo, model = setup
    out = tmp_path / "x.png"
    common = ["--out", str(out), "--model", str(model), "--device", "cpu"]
    code, _, err = run(capsys, "heatmap", str(photo), "--text", "  ", *common)
    assert code == 2 and "--text is empty" in err
    code, _, err = run(capsys, "heatmap", str(tmp_path / "nope.jpg"), "--text", "cat", *common)
    assert code == 2 and "nope.jpg: no such file" in err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    code, _, err = run(capsys, "heatmap", str(broken), "--text", "cat", *common)
    assert code == 2 and "broken.jpg" in err
    code, _, err = run(capsys, "heatmap", str(photo), "--text", "cat", "--out", str(tmp_path / "x.gif"))
    assert code == 2 and ".png, .jpg or .webp" in err
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in Path(model).iterdir():
        if "text_encoder" not in f.name:
            (partial / f.name).write_bytes(f.read_bytes())
    code, _, err = run(capsys, "heatmap", str(photo), "--text", "cat", "--out", str(out), "--model", str(partial))
    assert code == 2 and "text_encoder.pth" in err
    assert not out.exists()
