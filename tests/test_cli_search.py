"""`search`, `dedup` and `cluster` as a user runs them, on a library indexed by `index` from real photos with a
tiny checkpoint file. Most runs call the CLI's entry point in-process (fast); one goes through a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.cli import main
from engine.models import DinoVisionTransformer, save_backbone
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = {"astronaut": "astronaut.png", "coffee": "coffee.png", "chelsea": "chelsea.png", "rocket": "rocket.jpg",
          "horse": "horse.png", "motorcycle": "motorcycle_left.png"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, skimage_data_dir: Path):
    """(library folder, photos folder, checkpoint, outside folder): indexed once through `python -m app index`."""
    root = tmp_path_factory.mktemp("cli_search")
    photos, outside = root / "photos", root / "outside"
    photos.mkdir()
    outside.mkdir()
    for key, name in PHOTOS.items():
        im = Image.open(skimage_data_dir / name).convert("RGB")
        im.thumbnail((320, 320))
        im.save(photos / f"{key}.jpg", quality=92)
        im.resize((im.width * 9 // 10, im.height * 9 // 10)).save(outside / f"{key} copy.jpg", quality=70)
    shutil.copyfile(photos / "rocket.jpg", photos / "rocket (1).jpg")  # an exact copy
    Image.open(photos / "coffee.jpg").save(photos / "coffee small.jpg", quality=60)  # a re-encode
    (outside / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    torch.manual_seed(0)
    checkpoint = save_backbone(DinoVisionTransformer(tiny_config()).eval(), root / "tiny.pth")
    lib = root / "lib"
    assert main(["index", str(photos), "--library", str(lib), "--model", str(checkpoint), "--dtype", "fp32"]) == 0
    return lib, photos, checkpoint, outside


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_prints_a_ranked_table(setup, capsys) -> None:
    lib, photos, _, outside = setup
    code, out, err = run(capsys, "search", str(outside / "horse copy.jpg"), "--library", str(lib), "--k", "3")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "path"] and len(lines) == 4
    rank, score, path = lines[1].split(maxsplit=2)
    assert rank == "1" and path == str(photos / "horse.jpg") and float(score) > 0.9
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]


def test_search_json_is_machine_readable(setup, capsys) -> None:
    lib, photos, _, outside = setup
    code, out, err = run(capsys, "search", str(outside / "coffee copy.jpg"), str(outside / "chelsea copy.jpg"),
                         "--library", str(lib), "--k", "4", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"rank", "score", "path", "image_id"}
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert {Path(r["path"]).name for r in rows[:3]} >= {"chelsea.jpg"}
    assert all(Path(r["path"]).parent == photos for r in rows)


def test_unreadable_queries_are_reported_and_the_rest_used(setup, capsys) -> None:
    lib, _, _, outside = setup
    code, out, err = run(capsys, "search", str(outside / "rocket copy.jpg"), str(outside / "broken.jpg"),
                         str(outside / "missing.jpg"), "--library", str(lib), "--k", "2", "--json")
    assert code == 1
    assert "unreadable: broken.jpg" in err and "missing.jpg: no such file" in err
    assert Path(json.loads(out)[0]["path"]).name in {"rocket.jpg", "rocket (1).jpg"}
    code, out, err = run(capsys, "search", str(outside / "broken.jpg"), "--library", str(lib))
    assert code == 2 and out == "" and "no readable query image" in err


def test_a_library_photo_as_query_is_left_out_of_its_results(setup, capsys) -> None:
    lib, photos, _, _ = setup
    code, out, err = run(capsys, "search", str(photos / "astronaut.jpg"), "--library", str(lib), "--k", "50",
                         "--json", "--no-stack")
    assert code == 0, err
    paths = [r["path"] for r in json.loads(out)]
    assert str(photos / "astronaut.jpg") not in paths and len(paths) == len(PHOTOS) + 1  # 8 photos, minus itself


def test_region_search_gives_boxes(setup, capsys) -> None:
    lib, _, _, outside = setup
    code, out, err = run(capsys, "search", str(outside / "coffee copy.jpg"), "--region", "60,10,200,150",
                         "--library", str(lib), "--k", "3", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 3 and all(len(r["box"]) == 4 for r in rows)
    assert Path(rows[0]["path"]).name.startswith("coffee")
    code, out, err = run(capsys, "search", str(outside / "coffee copy.jpg"), "--region", "60,10,200,150",
                         "--library", str(lib), "--k", "2")
    assert code == 0 and out.splitlines()[0].split() == ["rank", "score", "box", "path"]


@pytest.mark.parametrize(("args", "message"), [
    (["--region", "1,2,3"], "four numbers"),
    (["--region", "5,5,1,1"], "X1 must exceed X0"),
    (["extra.jpg", "--region", "1,1,5,5"], "exactly one IMAGE"),
    (["--k", "0"], "at least 1"),
    (["--model", "dinov2_vitg14"], "no vectors from model 'dinov2_vitg14'"),
])
def test_bad_search_arguments_do_nothing(setup, capsys, args: list[str], message: str) -> None:
    lib, _, _, outside = setup
    code, out, err = run(capsys, "search", str(outside / "coffee copy.jpg"), *args, "--library", str(lib))
    assert code == 2 and out == "" and message in err


def test_a_missing_library_is_an_error(tmp_path: Path, capsys) -> None:
    for command in (["search", "x.jpg"], ["dedup"], ["cluster"]):
        code, _, err = run(capsys, *command, "--library", str(tmp_path / "nothing here"))
        assert code == 2 and "there is no library" in err


def test_changed_weights_are_refused(setup, tmp_path: Path, capsys) -> None:
    lib, _, checkpoint, outside = setup
    changed = tmp_path / "tiny.pth"
    torch.manual_seed(1)
    save_backbone(DinoVisionTransformer(tiny_config()).eval(), changed)
    code, _, err = run(capsys, "search", str(outside / "horse copy.jpg"), "--library", str(lib), "--model",
                       str(changed))
    assert code == 2 and "no vectors from model" in err
    # Same path as indexed, other weights: found by its path, refused by the weights hash.
    original = checkpoint.read_bytes()
    try:
        shutil.copyfile(changed, checkpoint)
        code, _, err = run(capsys, "search", str(outside / "horse copy.jpg"), "--library", str(lib))
        assert code == 2 and "are not the ones" in err
    finally:
        checkpoint.write_bytes(original)


def test_dedup_lists_tiers_with_keepers(setup, capsys) -> None:
    lib = setup[0]
    code, out, err = run(capsys, "dedup", "--library", str(lib), "--json")
    assert code == 0, err
    groups = json.loads(out)
    tiers = {g["tier"]: g for g in groups}
    assert {Path(m["path"]).name for m in tiers["exact"]["members"]} == {"rocket.jpg", "rocket (1).jpg"}
    near = {Path(m["path"]).name for m in tiers["near"]["members"]}
    assert near == {"coffee.jpg", "coffee small.jpg"}
    keeper = [m for m in tiers["near"]["members"] if m["keeper"]]
    assert len(keeper) == 1 and keeper[0]["image_id"] == tiers["near"]["keeper_id"]

    code, out, err = run(capsys, "dedup", "--library", str(lib))
    assert code == 0
    assert "exact copies: 1 group(s)" in out and "near-identical (cosine >= 0.95)" in out
    assert any(line.strip().startswith("* keeper") for line in out.splitlines())
    code, _, err = run(capsys, "dedup", "--library", str(lib), "--near", "0.5", "--scene", "0.9")
    assert code == 2 and "--scene <= --near" in err


def test_dedup_defaults_are_the_engines() -> None:
    from app.commands import dedup as command
    from engine import dedup

    assert (command.NEAR_DEFAULT, command.SCENE_DEFAULT) == (dedup.NEAR, dedup.SCENE)


def test_cluster_stores_and_prints_sizes(setup, capsys) -> None:
    lib, _, _, _ = setup
    code, out, err = run(capsys, "cluster", "--k", "3", "--library", str(lib), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["k"] == 3 and data["photos"] == len(PHOTOS) + 2
    assert sum(c["size"] for c in data["clusters"]) == data["photos"]
    assert all(c["representative"] for c in data["clusters"])
    code, out, _ = run(capsys, "cluster", "--k", "2", "--library", str(lib))
    assert code == 0 and "2 clusters of 8 photos" in out
    code, _, err = run(capsys, "cluster", "--k", "100", "--library", str(lib))
    assert code == 2 and "between 1 and the number of photos" in err


def test_a_real_process_searches_and_lists_the_commands(setup, dinoscope_home: Path) -> None:
    lib, photos, _, outside = setup
    env = dict(os.environ, DINOSCOPE_HOME=str(dinoscope_home))
    r = subprocess.run([sys.executable, "-m", "app", "search", str(outside / "motorcycle copy.jpg"), "--library",
                        str(lib), "--k", "2", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["path"] == str(photos / "motorcycle.jpg")


def test_the_commands_are_registered(capsys) -> None:
    from app.cli import build_parser

    build_parser().print_help()
    out = capsys.readouterr().out
    assert all(f"    {name} " in out for name in ("search", "dedup", "cluster"))


def test_the_gui_way_an_extractor_loaded_from_the_indexed_checkpoint_is_matched(setup) -> None:
    """The GUI loads the model by its source and wraps it in an Extractor (LayerScale folded, so its weights no
    longer hash like the checkpoint): the library's model is found by that source."""
    from engine import search
    from engine.extract import Extractor
    from engine.imageio import load_rgb
    from engine.models import load_backbone
    from engine.store import Library

    lib_path, photos, checkpoint, outside = setup
    extractor = Extractor(load_backbone(checkpoint), precision="fp32")
    with Library.open(lib_path, create=False) as lib:
        assert search.model_id_for(lib, extractor) == search.library_model(lib).id
        results = search.search_by_images(lib, extractor, [load_rgb(outside / "horse copy.jpg")], k=2)
        assert results[0].path == str(photos / "horse.jpg")
