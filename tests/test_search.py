"""Search on a real library: photos indexed by the real indexer with a tiny DINOv2, queried by outside copies, by
library photos and by a box around an object pasted into other photos; real SQLite, real FAISS indexes."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

from engine import faiss_runtime, region_search, search
from engine.extract import Extractor
from engine.imageio import ImageDecodeError, load_rgb
from engine.models import DinoVisionTransformer
from engine.store import Library, StoreError, index_cache, index_library
from engine.store import region_index as region_store
from engine.store.vectors import library_vectors, vector_index
from engine.transforms import eval_transform, normalize
from tests.helpers import tiny_config

PHOTOS = {"astronaut": "astronaut.png", "coffee": "coffee.png", "chelsea": "chelsea.png", "rocket": "rocket.jpg",
          "motorcycle": "motorcycle_left.png", "horse": "horse.png"}
# Region-search photos use other sources than the whole photos above, so that no photo has a near-copy.
BACKGROUNDS = ["hubble_deep_field.jpg", "ihc.png", "retina.jpg", "color.png"]
OTHERS = ["brick.png", "grass.png", "coins.png"]
# Where the cup goes in each composite, as (column, row) of the 4x4 region grid. Composites are 256x256, so the
# eval transform does not resize them and crops 16 px off each side: cell (c, r) is x = 16 + 56c, y = 16 + 56r.
CUP_CELLS = [(0, 0), (2, 1), (3, 3), (1, 2)]
CELL = 56


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """The tiny architecture with its normal initialisation: photos get clearly different vectors."""
    torch.manual_seed(seed)
    return DinoVisionTransformer(tiny_config()).eval()


def square(data_dir: Path, name: str, size: int = 256) -> Image.Image:
    im = Image.open(data_dir / name).convert("RGB")
    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return im.crop(box).resize((size, size), Image.Resampling.BICUBIC)


def coffee_cup(data_dir: Path) -> Image.Image:
    """The cup of scikit-image's coffee photo, as a 56 px square: exactly one 4x4 region cell (4 x 4 patches)."""
    return Image.open(data_dir / "coffee.png").convert("RGB").crop((130, 20, 470, 360)).resize(
        (CELL, CELL), Image.Resampling.LANCZOS)


def cell_box(col: int, row: int) -> tuple[float, float, float, float]:
    return (16.0 + CELL * col, 16.0 + CELL * row, 16.0 + CELL * (col + 1), 16.0 + CELL * (row + 1))


def write_library_photos(folder: Path, data_dir: Path) -> dict[str, Path]:
    """Whole photos (JPEG/PNG), and composites: four backgrounds with the cup pasted into one cell, the same four
    backgrounds without it, and three other photos."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, name in PHOTOS.items():
        im = Image.open(data_dir / name).convert("RGB")
        im.thumbnail((320, 320))
        files[key] = folder / f"{key}.jpg"
        im.save(files[key], quality=92)
    cup = coffee_cup(data_dir)
    for i, name in enumerate(BACKGROUNDS):
        bg = square(data_dir, name)
        files[f"plain_{i}"] = folder / f"plain_{i}.png"
        bg.save(files[f"plain_{i}"])
        col, row = CUP_CELLS[i]
        bg.paste(cup, (16 + CELL * col, 16 + CELL * row))
        files[f"cup_{i}"] = folder / f"cup_{i}.png"
        bg.save(files[f"cup_{i}"])
    for name in OTHERS:
        files[f"other_{name}"] = folder / f"other_{name.split('.')[0]}.png"
        square(data_dir, name).save(files[f"other_{name}"])
    return files


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, skimage_data_dir: Path):
    """(library folder, files, model, model id), indexed once for the module by the real indexer."""
    root = tmp_path_factory.mktemp("search")
    files = write_library_photos(root / "photos", skimage_data_dir)
    model = tiny_model()
    with Library.open(root / "lib") as lib:
        report = index_library(lib, model, folders=[root / "photos"], precision="fp32", batch_size=8)
        assert report.failed == 0 and report.new == len(files)
        model_id = report.model_id
    return root / "lib", files, model, model_id


@pytest.fixture
def lib(indexed):
    with Library.open(indexed[0], create=False) as library:
        yield library


def ids_by_key(lib: Library, files: dict[str, Path]) -> dict[str, int]:
    return {key: lib.image_by_path(path).id for key, path in files.items()}


def reencoded(path: Path, out: Path, quality: int = 70, scale: float = 0.9) -> Path:
    """A copy that is not in the library: decoded, resized, saved as JPEG at another quality."""
    im = Image.open(path).convert("RGB")
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    im.save(out, quality=quality)
    return out


def extractor(model: torch.nn.Module) -> Extractor:
    return Extractor(model, precision="fp32")


# ------------------------------------------------------------------------------------------- global search


def test_an_outside_copy_finds_its_original_first(lib, indexed, tmp_path: Path) -> None:
    _, files, model, _ = indexed
    ids = ids_by_key(lib, files)
    query = reencoded(files["coffee"], tmp_path / "coffee copy.jpg")
    results = search.search_by_images(lib, extractor(model), [query], k=8)
    assert results[0].image_id == ids["coffee"] and results[0].path == str(files["coffee"])
    assert results[0].score > 0.9
    assert [r.rank for r in results] == list(range(1, 9))
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True) and results[1].score < results[0].score
    assert all(Path(r.path).is_file() and r.box is None for r in results)

    # The backbone itself (matched by its weights hash; embedded at the default precision, bf16 on CPUs that
    # have it, hence the tolerance), the encoded bytes and a decoded array agree.
    by_bytes = search.search_by_images(lib, model, query.read_bytes(), k=8)
    by_array = search.search_by_images(lib, model, [load_rgb(query, min_side=256)], k=8)
    for other in (by_bytes, by_array):
        assert [r.image_id for r in other] == [r.image_id for r in results]
        np.testing.assert_allclose([r.score for r in other], scores, atol=5e-3)


def test_scores_are_cosines_to_the_stored_vectors(lib, indexed, tmp_path: Path) -> None:
    _, files, model, model_id = indexed
    query = reencoded(files["rocket"], tmp_path / "rocket.jpg")
    vectors, errors = search.embed_queries(model, [query])
    assert errors == [] and vectors.shape == (1, 128)
    results = search.search_by_vectors(lib, model_id, vectors, k=30)
    all_ids, all_vectors = library_vectors(lib, model_id)
    expected = all_vectors @ vectors[0]
    assert len(results) == len(all_ids)  # k beyond the library size returns every photo
    for r in results:
        assert r.score == pytest.approx(float(expected[np.searchsorted(all_ids, r.image_id)]), abs=1e-5)


def test_several_queries_search_by_their_normalised_mean(lib, indexed, tmp_path: Path) -> None:
    _, files, model, model_id = indexed
    ids = ids_by_key(lib, files)
    # Two photos of brown, rounded things: their mean lies between them, nearer to both than to anything else.
    queries = [reencoded(files["coffee"], tmp_path / "a.jpg"), reencoded(files["chelsea"], tmp_path / "b.jpg")]
    results = search.search_by_images(lib, extractor(model), queries, k=5)
    assert {results[0].image_id, results[1].image_id} == {ids["coffee"], ids["chelsea"]}
    vectors, _ = search.embed_queries(extractor(model), queries)
    mean = vectors.mean(axis=0)
    mean /= np.linalg.norm(mean)
    stored = search.stored_vectors(lib, model_id, [results[0].image_id])[0]
    assert results[0].score == pytest.approx(float(stored @ mean), abs=1e-5)
    assert [r.image_id for r in search.search_by_vectors(lib, model_id, vectors, k=5)] == [
        r.image_id for r in results]
    with pytest.raises(ValueError, match="cancel out"):
        search.search_by_vectors(lib, model_id, np.stack([vectors[0], -vectors[0]]), k=3)


def test_a_library_photo_finds_others_but_not_itself(lib, indexed) -> None:
    _, files, _, model_id = indexed
    ids = ids_by_key(lib, files)
    results = search.search_by_library_image(lib, model_id, ids["chelsea"], k=5)
    assert len(results) == 5 and ids["chelsea"] not in [r.image_id for r in results]
    everything = search.search_by_library_image(lib, model_id, ids["chelsea"], k=100)
    assert len(everything) == len(files) - 1
    assert [r.image_id for r in everything[:5]] == [r.image_id for r in results]
    with pytest.raises(KeyError, match="no vector"):
        search.search_by_library_image(lib, model_id, 987654, k=3)


def test_exclusions_and_filters_narrow_and_wide(lib, indexed) -> None:
    _, files, _, model_id = indexed
    ids = ids_by_key(lib, files)
    query = search.stored_vectors(lib, model_id, [ids["astronaut"]])
    everything = [r.image_id for r in search.search_by_vectors(lib, model_id, query, k=100)]
    assert everything[0] == ids["astronaut"]

    excluded = search.search_by_vectors(lib, model_id, query, k=4, exclude_ids=everything[:3])
    assert [r.image_id for r in excluded] == everything[3:7]
    assert [r.rank for r in excluded] == [1, 2, 3, 4]

    narrow = [ids["rocket"], ids["coffee"], ids["plain_2"]]  # a quarter of the library or less: scored directly
    got = [r.image_id for r in search.search_by_vectors(lib, model_id, query, k=10, filter=narrow)]
    assert got == [i for i in everything if i in narrow]
    wide = everything[1::2] + everything[2::2][:3]  # most of the library: fetched from the index, then filtered
    got = [r.image_id for r in search.search_by_vectors(lib, model_id, query, k=6, filter=wide,
                                                        exclude_ids=[everything[1]])]
    assert got == [i for i in everything if i in wide and i != everything[1]][:6]
    assert search.search_by_vectors(lib, model_id, query, k=3, filter=[]) == []


def test_an_approximate_index_gives_the_same_answers(tmp_path: Path, indexed) -> None:
    """Past ann_threshold the library searches an IVF index; on a small library every list is probed."""
    import shutil

    src, files, _, model_id = indexed
    shutil.copytree(src, tmp_path / "lib")
    with Library.open(tmp_path / "lib", create=False) as lib:
        ids = ids_by_key(lib, files)
        exact = search.search_by_library_image(lib, model_id, ids["coffee"], k=5)
        lib.set_setting("ann_threshold", 2)
    with Library.open(tmp_path / "lib", create=False) as lib:  # a fresh handle: the old one caches its index
        assert vector_index(lib, model_id).kind == "ivf"
        approx = search.search_by_library_image(lib, model_id, ids["coffee"], k=5)
        assert [r.image_id for r in approx] == [r.image_id for r in exact]


def test_models_are_matched_by_their_weights(lib, indexed, tmp_path: Path) -> None:
    _, files, model, model_id = indexed
    assert search.model_id_for(lib, model) == model_id
    assert search.model_id_for(lib, extractor(model)) == model_id  # folded LayerScale: matched by source and size
    assert search.library_model(lib).id == model_id
    with pytest.raises(StoreError, match="no vectors from model 'dinov2_vitb14'"):
        search.library_model(lib, "dinov2_vitb14")
    other = DinoVisionTransformer(tiny_config(dim=64)).eval()
    with pytest.raises(StoreError, match="no vectors from this model"):
        search.search_by_images(lib, other, [files["coffee"]], k=3)


def test_unreadable_queries_are_reported_not_guessed(lib, indexed, tmp_path: Path) -> None:
    _, files, model, _ = indexed
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    vectors, errors = search.embed_queries(model, [files["coffee"], broken, tmp_path / "missing.png"])
    assert vectors.shape == (1, 128)
    assert [i for i, _ in errors] == [1, 2] and "broken.jpg" in errors[0][1] and "missing.png" in errors[1][1]
    with pytest.raises(ImageDecodeError, match=r"broken\.jpg"):
        search.search_by_images(lib, model, [files["coffee"], broken], k=3)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        search.search_by_images(lib, model, [np.zeros((4, 4), np.uint8)], k=3)
    with pytest.raises(ValueError, match="k must be at least 1"):
        search.search_by_images(lib, model, [files["coffee"]], k=0)


# ------------------------------------------------------------------------------------------- region search


def test_the_eval_crop_box_is_where_eval_transform_crops() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (256, 400, 3), dtype=np.uint8)  # shorter side 256: no resize, only the crop
    x0, y0, x1, y1 = region_search.eval_crop_box(400, 256)
    assert (x0, y0, x1, y1) == (88, 16, 312, 240)
    torch.testing.assert_close(eval_transform(img), normalize(img[int(y0):int(y1), int(x0):int(x1)]))
    assert region_search.region_box(400, 256, 0) == (88, 16, 200, 128)  # first 2x2 cell
    assert region_search.region_box(400, 256, 19) == (256, 184, 312, 240)  # last 4x4 cell
    assert region_search.region_box(400, 256, region_store.WHOLE) == (88, 16, 312, 240)
    bx0, by0, bx1, by1 = region_search.eval_crop_box(1000, 2000)  # a portrait photo at full size
    assert (bx0, by0, bx1, by1) == (62.5, 562.5, 937.5, 1437.5)  # 224/256 of the shorter side, centred


def test_a_box_around_an_object_finds_the_photos_that_hold_it(lib, indexed, skimage_data_dir: Path,
                                                               tmp_path: Path) -> None:
    """The cup, pasted into a fifth photo, is searched by a box around it. Every composite holding the cup must
    come before every photo without it (among them the same four backgrounds without the cup), and each
    result's box must be the cell where the cup was pasted, in that photo's pixels."""
    _, files, model, _ = indexed
    ids = ids_by_key(lib, files)
    query = square(skimage_data_dir, "camera.png")
    query.paste(coffee_cup(skimage_data_dir), (16 + CELL, 16 + CELL))  # a cell none of the composites uses
    query_path = tmp_path / "query.png"
    query.save(query_path)
    box = cell_box(1, 1)

    rq = region_search.region_query(extractor(model), query_path, box)
    assert rq.view == "crop" and rq.patches == 16 and rq.box == box

    results = region_search.search_by_region(lib, extractor(model), query_path, box, k=12)
    cups = {ids[f"cup_{i}"]: cell_box(*CUP_CELLS[i]) for i in range(4)}
    # The coffee photo itself holds the cup too (as a larger part of a bigger picture).
    holders = set(cups) | {ids["coffee"]}
    assert {r.image_id for r in results[:5]} == holders
    for r in results:
        if r.image_id in cups:
            assert r.box == cups[r.image_id]
    assert all(r.box is not None for r in results)
    assert results[4].score > results[5].score

    # The whole-image search ranks differently: the composites' backgrounds dominate it.
    overall = search.search_by_images(lib, extractor(model), [query_path], k=4)
    assert {r.image_id for r in overall} != set(cups)

    # Bytes and an array of the same pixels give the same answer (JPEG q95 changes little).
    buf = io.BytesIO()
    query.save(buf, "JPEG", quality=95)
    for source in (buf.getvalue(), np.asarray(query)):
        again = region_search.search_by_region(lib, extractor(model), source, box, k=5)
        assert {r.image_id for r in again} == holders


def test_a_box_outside_the_centre_crop_is_read_from_the_whole_image(lib, indexed, skimage_data_dir: Path,
                                                                    tmp_path: Path) -> None:
    _, files, model, _ = indexed
    ids = ids_by_key(lib, files)
    wide = Image.open(skimage_data_dir / "hubble_deep_field.jpg").convert("RGB").resize((400, 256))
    wide.paste(coffee_cup(skimage_data_dir), (330, 100))  # the crop spans x 88..312: the cup is outside it
    path = tmp_path / "wide.png"
    wide.save(path)
    box = (330, 100, 386, 156)
    rq = region_search.region_query(extractor(model), path, box)
    assert rq.view == "dense" and rq.patches >= 9
    results = region_search.search_by_region(lib, extractor(model), path, box, k=5)
    assert {r.image_id for r in results} == {ids[f"cup_{i}"] for i in range(4)} | {ids["coffee"]}


def test_region_search_honours_filters_and_exclusions(lib, indexed, skimage_data_dir: Path, tmp_path: Path) -> None:
    _, files, model, model_id = indexed
    ids = ids_by_key(lib, files)
    query = square(skimage_data_dir, "camera.png")
    query.paste(coffee_cup(skimage_data_dir), (16 + CELL, 16 + CELL))
    rq = region_search.region_query(model, np.asarray(query), cell_box(1, 1))
    ranked = region_search.search_regions(lib, model_id, rq.vector, k=100)
    assert len(ranked) == len(files)
    order = [r.image_id for r in ranked]
    narrow = [ids["cup_2"], ids["plain_2"], ids["rocket"]]  # scored straight from the stored regions
    got = region_search.search_regions(lib, model_id, rq.vector, k=5, filter=narrow)
    assert [r.image_id for r in got] == [i for i in order if i in narrow]
    np.testing.assert_allclose([r.score for r in got], [r.score for r in ranked if r.image_id in narrow],
                               atol=2e-3)
    assert got[0].box == cell_box(*CUP_CELLS[2])
    skipped = region_search.search_regions(lib, model_id, rq.vector, k=3, exclude_ids=order[:2])
    assert [r.image_id for r in skipped] == order[2:5]


def test_bad_boxes_are_refused_with_a_reason(lib, indexed) -> None:
    _, files, model, _ = indexed
    with pytest.raises(ValueError, match="does not cover a pixel"):
        region_search.search_by_region(lib, model, files["coffee"], (400, 400, 500, 500), k=3)
    with pytest.raises(ValueError, match="four numbers"):
        region_search.search_by_region(lib, model, files["coffee"], (1, 2, 3), k=3)
    with pytest.raises(ValueError, match="not finite"):
        region_search.search_by_region(lib, model, files["coffee"], (0, 0, float("nan"), 5), k=3)
    tiny = region_search.region_query(model, files["coffee"], (10, 10, 12, 12))  # smaller than a patch: one patch
    assert tiny.patches == 1


def test_the_region_index_is_cached_and_rebuilt_when_the_library_changes(tmp_path: Path, indexed,
                                                                         skimage_data_dir: Path,
                                                                         monkeypatch, caplog) -> None:
    import shutil

    src, files, model, model_id = indexed
    shutil.copytree(src, tmp_path / "lib")
    with Library.open(tmp_path / "lib", create=False) as lib:
        built = region_store.region_index(lib, model_id)
        assert built.images == len(files)
        cached = {p.name for p in lib.vectors_dir.iterdir()}
        assert {f"regions_{model_id}.faiss", f"regions_{model_id}.json"} <= cached
        stamp = json.loads((lib.vectors_dir / f"regions_{model_id}.json").read_text())
        assert stamp["images"] == len(files) and stamp["revision"] == lib.model(model_id).revision
        raw = faiss.read_index(str(lib.vectors_dir / f"regions_{model_id}.faiss"))
        assert raw.ntotal == len(files) * region_store.REGIONS_PER_IMAGE
        keys = faiss.vector_to_array(raw.id_map)
        assert set(keys // 32) == set(built.image_ids.tolist()) and set(keys % 32) == set(range(21))

    def no_rebuild(*a, **kw):
        raise AssertionError("the cached region index should have been loaded")

    index_cache.forget((tmp_path / "lib").resolve())  # as in a new process: only the files are left
    with Library.open(tmp_path / "lib", create=False) as lib:
        monkeypatch.setattr(region_store.RegionIndex, "_build", no_rebuild)
        assert region_store.region_index(lib, model_id).images == len(files)
        monkeypatch.undo()

        extra = tmp_path / "more"
        extra.mkdir()
        square(skimage_data_dir, "coins.png").save(extra / "coins.png")
        with caplog.at_level(logging.INFO, logger="dinoscope.store"):
            index_library(lib, model, folders=[extra], precision="fp32")
            again = region_store.region_index(lib, model_id)
        assert again.images == len(files) + 1
        assert "rebuilding the region index" in caplog.text


def test_faiss_settings_suit_the_batch_and_are_restored() -> None:
    before = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold
    with faiss_runtime.faiss_settings(1) as n:  # one query: one thread, faiss's SIMD scan rather than BLAS
        assert n == 1 and faiss.omp_get_max_threads() == 1
        assert faiss.cvar.distance_compute_blas_threshold > 1
    with faiss_runtime.faiss_settings(5) as n:
        assert n == 1 and faiss.cvar.distance_compute_blas_threshold == 20
    assert (faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold) == before
    with faiss_runtime.faiss_settings(None) as n:
        assert n == faiss_runtime.batch_threads() and faiss.omp_get_max_threads() == n
    assert (faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold) == before


def test_faiss_thread_count_can_be_set_by_environment(monkeypatch) -> None:
    monkeypatch.setenv("DINOSCOPE_FAISS_THREADS", "3")
    assert faiss_runtime.batch_threads() == 3
    monkeypatch.setenv("DINOSCOPE_FAISS_THREADS", "lots")
    assert faiss_runtime.batch_threads() >= 1
