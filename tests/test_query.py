"""engine.query: the one path from what a person gives (files, bytes, arrays, library photos, a box) to results,
on a real library indexed from real photos with a tiny checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.extract import Extractor
from engine.models import DinoVisionTransformer, save_backbone
from engine.query import MAX_QUERIES, LibraryPhoto, Region, expand_inputs, run_query
from engine.search import stored_vectors
from engine.store import Library
from engine.store.indexer import index_library
from tests.helpers import tiny_config

PHOTOS = {"astronaut": "astronaut.png", "coffee": "coffee.png", "chelsea": "chelsea.png", "rocket": "rocket.jpg",
          "horse": "horse.png", "motorcycle": "motorcycle_left.png"}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, skimage_data_dir: Path):
    """(library root, photos folder, extractor, model id) with 1000 px JPEGs, so reduced JPEG decoding matters."""
    root = tmp_path_factory.mktemp("query")
    photos = root / "photos"
    photos.mkdir()
    for key, name in PHOTOS.items():
        im = Image.open(skimage_data_dir / name).convert("RGB")
        im.resize((im.width * 2, im.height * 2)).save(photos / f"{key}.jpg", quality=90)
    torch.manual_seed(0)
    model = DinoVisionTransformer(tiny_config()).eval()
    save_backbone(model, root / "tiny.pth")
    with Library.open(root / "lib") as lib:
        report = index_library(lib, model, folders=[photos], precision="fp32")
    return root / "lib", photos, Extractor(model, precision="fp32"), report.model_id


def _no_model():
    raise AssertionError("the model was loaded although every query is a library photo")


def test_a_copy_elsewhere_is_recognised_and_left_out_of_its_own_results(indexed, tmp_path) -> None:
    root, photos, _, model_id = indexed
    copy = tmp_path / "downloads" / "IMG_0001.jpg"
    copy.parent.mkdir()
    shutil.copyfile(photos / "horse.jpg", copy)
    with Library.open(root) as lib:
        horse = lib.image_by_path(photos / "horse.jpg").id
        by_file = run_query(lib, _no_model, [copy], k=5, model_id=model_id)
        by_bytes = run_query(lib, _no_model, [copy.read_bytes()], k=5, model_id=model_id)
        by_id = run_query(lib, _no_model, [LibraryPhoto(horse)], k=5, model_id=model_id)
        with_self = run_query(lib, _no_model, [copy], k=5, model_id=model_id, include_queries=True)
    for outcome in (by_file, by_bytes, by_id):
        assert outcome.in_library == [horse] and outcome.used == 1 and not outcome.unusable
        assert horse not in [r.image_id for r in outcome.results] and len(outcome.results) == 5
    assert [r.image_id for r in by_file.results] == [r.image_id for r in by_id.results]
    assert with_self.results[0].image_id == horse and with_self.results[0].score == pytest.approx(1.0, abs=1e-5)


def test_a_photo_decoded_like_the_indexer_lands_on_its_stored_vector(indexed, tmp_path) -> None:
    """Bytes after the JPEG's end marker change the content hash but not the pixels: the query is decoded, and
    must give the vector the indexer stored (reduced-size decode, 256 resize, 224 crop)."""
    root, photos, extractor, model_id = indexed
    other = tmp_path / "chelsea edited.jpg"
    other.write_bytes((photos / "chelsea.jpg").read_bytes() + b"trailing bytes")
    loads = []

    def load():
        loads.append(1)
        return extractor

    with Library.open(root) as lib:
        chelsea = lib.image_by_path(photos / "chelsea.jpg").id
        outcome = run_query(lib, load, [other], k=3, model_id=model_id)
        stored = stored_vectors(lib, model_id, [chelsea])[0]
    assert loads == [1] and outcome.in_library == []
    top = outcome.results[0]
    # the same pixels through the same pipeline: equal up to float rounding (a full-size decode gives ~0.99999)
    assert top.image_id == chelsea and top.score > 0.999999, (top.score, float(np.linalg.norm(stored)))


def test_unusable_inputs_are_named_and_the_rest_still_search(indexed, tmp_path) -> None:
    root, photos, extractor, model_id = indexed
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((photos / "coffee.jpg").read_bytes()[:300])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with Library.open(root) as lib:
        outcome = run_query(lib, extractor, [broken, tmp_path / "missing.jpg", empty, photos / "rocket.jpg",
                                             np.zeros((4, 4), np.uint8)], k=3, model_id=model_id)
    assert outcome.used == 1 and len(outcome.results) == 3
    messages = "\n".join(u.message for u in outcome.unusable)
    assert "broken.jpg: " in messages and "missing.jpg: no such file" in messages
    assert "empty.png: the file is empty" in messages and "HxWx3 uint8" in messages
    assert len(outcome.unusable) == 4


def test_arrays_and_several_photos_make_one_mean_query(indexed) -> None:
    root, photos, extractor, model_id = indexed
    rgb = np.asarray(Image.open(photos / "astronaut.jpg").convert("RGB"))
    with Library.open(root) as lib:
        astronaut = lib.image_by_path(photos / "astronaut.jpg").id
        alone = run_query(lib, extractor, [rgb], k=1, model_id=model_id)
        both = run_query(lib, extractor, [LibraryPhoto(astronaut), photos / "coffee.jpg"], k=6, model_id=model_id)
    assert alone.results[0].image_id == astronaut and alone.in_library == []
    assert both.used == 2 and len(both.in_library) == 2 and len(both.results) == 4


def test_a_region_on_a_library_photo(indexed) -> None:
    root, photos, extractor, model_id = indexed
    with Library.open(root) as lib:
        rocket = lib.image_by_path(photos / "rocket.jpg").id
        outcome = run_query(lib, extractor, region=Region(LibraryPhoto(rocket), (100, 100, 400, 500)), k=3,
                            model_id=model_id)
        kept = run_query(lib, extractor, region=Region(photos / "rocket.jpg", (100, 100, 400, 500)), k=3,
                         model_id=model_id, include_queries=True)
        with pytest.raises(ValueError, match="one box on one photo"):
            run_query(lib, extractor, [photos / "horse.jpg"], region=Region(photos / "rocket.jpg", (0, 0, 9, 9)))
    assert outcome.in_library == [rocket] and rocket not in [r.image_id for r in outcome.results]
    assert all(r.box is not None for r in outcome.results)
    assert kept.results[0].image_id == rocket


def test_a_dropped_folder_gives_only_its_image_files(tmp_path) -> None:
    folder = tmp_path / "drop"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.PNG", "notes.txt", ".hidden.jpg", "movie.mp4", "c.heic"):
        (folder / name).write_bytes(b"x")
    loose = tmp_path / "loose.txt"
    loose.write_text("given by name: kept, so that it is reported as unreadable")
    files, skipped = expand_inputs([folder, loose])
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["drop/a.jpg", "drop/c.heic", "drop/sub/b.PNG",
                                                                    "loose.txt"]
    assert skipped == []
    many = tmp_path / "many"
    many.mkdir()
    for i in range(MAX_QUERIES + 3):
        (many / f"{i:04d}.jpg").write_bytes(b"x")
    files, skipped = expand_inputs([many])
    assert len(files) == MAX_QUERIES and len(skipped) == 3 and "at most" in skipped[0].message


def test_stacked_copies_fold_into_their_best_ranked_member(tmp_path, skimage_data_dir: Path, capsys) -> None:
    """A photo and its re-encoded copy form a stack (engine.stacks); a search shows one of them, the other listed in
    its `stack`, unless folding is turned off. The CLI's --json carries the same field."""

    from app.cli import main
    from engine.stacks import update_stacks

    photos = tmp_path / "photos"
    photos.mkdir()
    for key, name in PHOTOS.items():
        Image.open(skimage_data_dir / name).convert("RGB").resize((320, 240)).save(photos / f"{key}.jpg")
    Image.open(photos / "coffee.jpg").save(photos / "coffee again.jpg", quality=75)  # a near-identical copy
    torch.manual_seed(0)
    model = DinoVisionTransformer(tiny_config()).eval()
    ckpt = save_backbone(model, tmp_path / "tiny.pth")
    with Library.open(tmp_path / "lib") as lib:
        report = index_library(lib, str(ckpt), folders=[photos], precision="fp32")
        update_stacks(lib, report.model_id)
        coffee = lib.image_by_path(photos / "coffee.jpg").id
        again = lib.image_by_path(photos / "coffee again.jpg").id
        folded = run_query(lib, Extractor(model, precision="fp32"), [LibraryPhoto(coffee)], k=10,
                           model_id=report.model_id, include_queries=True)
        flat = run_query(lib, Extractor(model, precision="fp32"), [LibraryPhoto(coffee)], k=10,
                         model_id=report.model_id, include_queries=True, fold_stacks=False)
    assert {coffee, again} <= {r.image_id for r in flat.results} and len(flat.results) == 7
    assert len(folded.results) == 6 and [r.rank for r in folded.results] == list(range(1, 7))
    top = folded.results[0]
    assert top.image_id == coffee and top.stack == [str(photos / "coffee again.jpg")]
    assert again not in {r.image_id for r in folded.results}
    query = tmp_path / "query.png"  # not the library's bytes: embedded, and the stack comes first
    Image.open(photos / "coffee.jpg").save(query)
    args = ["search", str(query), "--library", str(tmp_path / "lib"), "--json", "--k", "3"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and Path(rows[0]["path"]).name in ("coffee.jpg", "coffee again.jpg")
    assert len(rows[0]["stack"]) == 1 and all("stack" not in r for r in rows[1:])
    assert main([*args, "--no-stack"]) == 0
    flat_rows = json.loads(capsys.readouterr().out)
    assert {Path(r["path"]).name for r in flat_rows[:2]} == {"coffee.jpg", "coffee again.jpg"}
