"""`index --model <dino.txt>` then `search --text`, as a user runs them, on real photos with a reduced dino.txt
saved in the official three-file layout; the ranking is checked against the model's own cosines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from engine.extract import eval_input
from engine.models import DinoVisionTransformer, load_dinotxt, save_backbone
from engine.text import Tokenizer
from tests.dinotxt_helpers import save_tiny_dinotxt
from tests.helpers import tiny_config

PHOTOS = {"astronaut": "astronaut.png", "coffee": "coffee.png", "chelsea": "chelsea.png", "rocket": "rocket.jpg",
          "motorcycle": "motorcycle_left.png"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, skimage_data_dir):
    """(library, photos, dino.txt folder, ViT checkpoint): indexed with a plain ViT and then with dino.txt."""
    root = tmp_path_factory.mktemp("text_search")
    photos = root / "photos"
    photos.mkdir()
    for key, name in PHOTOS.items():
        im = Image.open(skimage_data_dir / name).convert("RGB")
        im.thumbnail((320, 320))
        im.save(photos / f"{key}.jpg", quality=92)
    torch.manual_seed(0)
    vit = save_backbone(DinoVisionTransformer(tiny_config()).eval(), root / "tiny.pth")
    dinotxt = save_tiny_dinotxt(root / "dinotxt")
    lib = root / "lib"
    assert main(["index", str(photos), "--library", str(lib), "--model", str(vit), "--dtype", "fp32"]) == 0
    return lib, photos, dinotxt, vit


def run(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in-process; searches list every photo (--no-stack): these tests check the ranking against the
    model's own cosines, and a random tiny model stacks most photos as near-identical (tests/test_query.py covers
    stacks)."""
    if args and args[0] == "search":
        args = (*args, "--no-stack")
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _expected_scores(dinotxt: Path, photos: Path, text: str, images: list[Path] = ()) -> dict[str, float]:
    model = load_dinotxt(dinotxt)
    paths = sorted(photos.glob("*.jpg"))
    with torch.no_grad():
        lib = model.encode_image(torch.stack([eval_input(p) for p in paths]), normalize=True)
        q = model.encode_text(Tokenizer().tokenize(text), normalize=True)
        if images:
            q = torch.cat([q, model.encode_image(torch.stack([eval_input(p) for p in images]), normalize=True)])
        q = torch.nn.functional.normalize(q.mean(0, keepdim=True), dim=-1)
    return {p.name: float(s) for p, s in zip(paths, (lib @ q.T)[:, 0].tolist(), strict=True)}


def test_without_dinotxt_vectors_the_error_gives_the_command_and_its_cost(setup, capsys):
    lib, *_ = setup
    code, out, err = run(capsys, "search", "--text", "a red motorcycle", "--library", str(lib))
    assert code == 2 and not out
    assert "has no dino.txt vectors" in err
    assert f"python -m app index --library {lib.name} --model dinov2_vitl14_reg4_dinotxt" in err
    assert "3.5 GB download" in err and "7 photos/s" in err and "5 photos would take about 1 min" in err


def test_a_checkpoint_in_a_folder_named_dinotxt_is_no_text_model(setup, tmp_path):
    """Text vectors are recognised by the dino.txt source, not by a word somewhere in a checkpoint's path."""
    from engine.store import Library
    from engine.text.query import NoTextVectors, text_index_cost, text_model_record

    _, photos, _, vit = setup
    experiments = tmp_path / "dinotxt-experiments"
    experiments.mkdir()
    (experiments / "vit.pth").write_bytes(vit.read_bytes())
    lib_root = tmp_path / "lib2"
    assert main(["index", str(photos), "--library", str(lib_root), "--model", str(experiments / "vit.pth"),
                 "--dtype", "fp32"]) == 0
    with Library.open(lib_root) as lib:
        with pytest.raises(NoTextVectors):
            text_model_record(lib)
        cost = text_index_cost(lib)  # the zoo model, nothing downloaded in this test's data folder
        assert cost.photos == 5 and cost.download_bytes == 4 * 867_830_272 == zoo_bytes()
        assert cost.hours == pytest.approx(5 / 7.0 / 3600)
        assert text_index_cost(lib, str(experiments)).download_bytes == 0  # a folder: nothing to fetch


def zoo_bytes() -> int:
    from engine.models import zoo

    return zoo.text_entry(zoo.DINOTXT).approx_bytes


@pytest.fixture(scope="module")
def indexed(setup):
    lib, _, dinotxt, _ = setup
    assert main(["index", "--library", str(lib), "--model", str(dinotxt), "--dtype", "fp32"]) == 0
    return setup


def test_text_search_ranks_by_the_models_cosine(indexed, capsys):
    lib, photos, dinotxt, _ = indexed
    text = "a red motorcycle"
    code, out, err = run(capsys, "search", "--text", text, "--library", str(lib), "--k", "5", "--json")
    assert code == 0, err
    rows = json.loads(out)
    expected = _expected_scores(dinotxt, photos, text)
    assert [Path(r["path"]).name for r in rows] == sorted(expected, key=expected.get, reverse=True)
    for r in rows:
        assert r["score"] == pytest.approx(expected[Path(r["path"]).name], abs=2e-3)


def test_other_words_rank_differently_and_a_table_is_printed(indexed, capsys):
    lib, *_ = indexed
    orders = set()
    for text in ("a red motorcycle", "東京の夜景 🌃🚀", "coffee cup", "Привет мир"):
        code, out, err = run(capsys, "search", "--text", text, "--library", str(lib), "--json")
        assert code == 0, err
        orders.add(tuple(r["path"] for r in json.loads(out)))
    assert len(orders) > 1
    code, out, _ = run(capsys, "search", "--text", "a cat", "--library", str(lib), "--k", "2")
    assert code == 0 and out.splitlines()[0].split() == ["rank", "score", "path"] and len(out.splitlines()) == 3


def test_text_combines_with_an_image_as_the_mean_of_normalised_vectors(indexed, capsys, tmp_path):
    lib, photos, dinotxt, _ = indexed
    outside = tmp_path / "query.jpg"
    Image.open(photos / "chelsea.jpg").rotate(8).save(outside, quality=80)
    code, out, err = run(capsys, "search", str(outside), "--text", "a cat", "--library", str(lib), "--json",
                         "--device", "cpu")
    assert code == 0, err
    rows = json.loads(out)
    expected = _expected_scores(dinotxt, photos, "a cat", [outside])
    assert [Path(r["path"]).name for r in rows] == sorted(expected, key=expected.get, reverse=True)
    # a library photo as the image query is left out of the results
    code, out, err = run(capsys, "search", str(photos / "rocket.jpg"), "--text", "a cat", "--library", str(lib),
                         "--json")
    assert code == 0, err
    assert "rocket.jpg" not in {Path(r["path"]).name for r in json.loads(out)}


def test_image_search_keeps_working_with_either_model(indexed, capsys):
    lib, photos, dinotxt, vit = indexed
    for model in (vit, dinotxt):
        code, out, err = run(capsys, "search", str(photos / "coffee.jpg"), "--library", str(lib), "--model",
                             str(model), "--json")
        assert code == 0, err
        assert len(json.loads(out)) == 4


def test_empty_and_overlong_text(indexed, capsys):
    lib, *_ = indexed
    code, out, err = run(capsys, "search", "--text", "   ", "--library", str(lib))
    assert code == 2 and "--text is empty" in err
    code, out, err = run(capsys, "search", "--text", "motorcycle " * 90, "--library", str(lib), "--json")
    assert code == 0, err
    assert "the text is 90 tokens long; dino.txt reads the first 75" in err
    assert json.loads(out)


def test_no_query_at_all_is_refused(indexed, capsys):
    lib, *_ = indexed
    code, _, err = run(capsys, "search", "--library", str(lib))
    assert code == 2 and "IMAGE files, or --text" in err


def test_text_combines_with_a_region(indexed, capsys):
    """Box + words: the mean of the box's region vector and the words' patch half, against region cells."""
    from engine.region_search import region_query
    from engine.store import Library
    from engine.store.region_index import with_whole
    from engine.text.query import embed_texts, region_text_vector, text_model_record

    lib_path, photos, dinotxt, _ = indexed
    query_photo = photos / "motorcycle.jpg"
    base = ["search", str(query_photo), "--region", "20,20,200,150", "--library", str(lib_path), "--json",
            "--model", str(dinotxt)]
    code, out, err = run(capsys, *base, "--text", "a wheel")
    assert code == 0, err
    rows = json.loads(out)
    assert rows and all(len(r["box"]) == 4 for r in rows)
    model = load_dinotxt(dinotxt)
    with Library.open(str(lib_path), create=False) as lib:
        record = text_model_record(lib)
        words = region_text_vector(embed_texts(model, ["a wheel"]))[0]
        assert not words[:128].any() and np.linalg.norm(words) == pytest.approx(1.0, abs=1e-5)
        from engine.extract import Extractor

        box = region_query(Extractor(model.image_encoder(), device="cpu", precision="fp32"), query_photo,
                           (20, 20, 200, 150)).vector
        q = words + box / np.linalg.norm(box)
        q /= np.linalg.norm(q)
        ids = [lib.image_by_path(Path(r["path"])).id for r in rows]
        cells = with_whole(lib.regions(record.id, ids)).astype(np.float32)
    best = (cells @ q).max(axis=1)
    assert [r["score"] for r in rows] == pytest.approx(best.tolist(), abs=5e-3)
    code, out, err = run(capsys, *base)  # the box alone ranks by the box alone
    assert code == 0, err
    assert [r["score"] for r in json.loads(out)] != pytest.approx([r["score"] for r in rows], abs=1e-3)


def test_stored_vectors_are_2048_wide_halves_of_encode_image(indexed):
    """What indexing stores for dino.txt is its encode_image vector (here 2 x 128 wide), normalised."""
    from engine.search import stored_vectors
    from engine.store import Library
    from engine.text.query import text_model_record

    lib_path, photos, dinotxt, _ = indexed
    with Library.open(str(lib_path), create=False) as lib:
        record = text_model_record(lib)
        image_id = lib.image_by_path(photos / "rocket.jpg").id
        stored = stored_vectors(lib, record.id, [image_id])[0]
    model = load_dinotxt(dinotxt)
    with torch.no_grad():
        expected = model.encode_image(eval_input(photos / "rocket.jpg")[None], normalize=True)[0].numpy()
    assert record.dim == 256
    assert np.allclose(stored, expected, atol=2e-3)


def test_changed_weights_or_a_moved_folder_are_said(indexed, capsys):
    """Vectors from other weights are never compared with these words; a gone folder is named."""
    lib_path, _, dinotxt, _ = indexed
    from tests.dinotxt_helpers import BACKBONE
    from tests.helpers import tiny_backbone

    original = (dinotxt / BACKBONE).read_bytes()
    try:
        torch.save(tiny_backbone(registers=4, depth=2, dim=128, seed=5).state_dict(), dinotxt / BACKBONE)
        code, out, err = run(capsys, "search", "--text", "a cat", "--library", str(lib_path))
        assert code == 2 and not out
        assert "are not the ones the library's dino.txt vectors were computed with" in err
        moved = dinotxt.with_name("dinotxt moved")
        dinotxt.rename(moved)
        try:
            code, out, err = run(capsys, "search", "--text", "a cat", "--library", str(lib_path))
            assert code == 2 and str(dinotxt) in err and "no such folder" in err
        finally:
            moved.rename(dinotxt)
    finally:
        (dinotxt / BACKBONE).write_bytes(original)
