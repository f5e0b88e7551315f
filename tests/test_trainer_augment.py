"""Multi-crop augmentation (hand cases per op, rates over many seeds), the dataset over real files, the loader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.imageio import load_rgb
from engine.transforms import IMAGENET_MEAN, IMAGENET_STD
from trainer.augment import (
    MultiCropAugmentation,
    ViewTransform,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_probabilities,
    gaussian_blur,
    grayscale,
    rrc_params,
    solarize,
)
from trainer.config import preset
from trainer.data import (
    ImageFolderDataset,
    InfiniteSampler,
    MultiCropCollator,
    collate_multicrop,
    list_images,
    make_dataset,
    make_loader,
    read_file_list,
)
from trainer.masking import MaskingGenerator

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Crops are small: as in the loader's workers, one thread each; two would spin against a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photo(skimage_data_dir: Path) -> np.ndarray:
    img = load_rgb(skimage_data_dir / "astronaut.png")  # 512x512 RGB
    return np.asarray(Image.fromarray(img).resize((160, 120), Image.Resampling.BICUBIC))


# ------------------------------------------------------------------------------------------------ pipeline
def test_multicrop_shapes_ranges_and_determinism(photo):
    aug = MultiCropAugmentation(global_size=112, local_size=56, n_local=3)
    out = aug(photo, np.random.default_rng(0))
    assert [tuple(t.shape) for t in out["global_crops"]] == [(3, 112, 112)] * 2
    assert [tuple(t.shape) for t in out["local_crops"]] == [(3, 56, 56)] * 3
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    for t in out["global_crops"] + out["local_crops"]:
        assert t.dtype == torch.float32
        assert (t >= lo - 1e-5).all() and (t <= hi + 1e-5).all()
    again = aug(photo, np.random.default_rng(0))
    for a, b in zip(out["global_crops"] + out["local_crops"], again["global_crops"] + again["local_crops"],
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = aug(photo, np.random.default_rng(1))
    assert not torch.equal(out["global_crops"][0], other["global_crops"][0])


def test_rrc_boxes_respect_scale_and_ratio():
    rng = np.random.default_rng(0)
    for scale, (h_img, w_img) in [((0.32, 1.0), (120, 160)), ((0.05, 0.32), (300, 200))]:
        for _ in range(500):
            top, left, h, w = rrc_params(h_img, w_img, scale, rng)
            assert top >= 0 and top + h <= h_img and left >= 0 and left + w <= w_img
            area = h * w / (h_img * w_img)
            slack = (h + w + 1) / (h_img * w_img)  # rounding each side by up to half a pixel
            assert scale[0] - slack <= area <= scale[1] + slack
            assert 3 / 4 - 1 / min(h, w) <= w / h <= 4 / 3 + 1 / min(h, w)
    # impossible draws (a 1:20 strip at scale ~1) fall back to the largest centred box of ratio 3/4
    top, left, h, w = rrc_params(10, 200, (0.99, 1.0), rng)
    assert (h, w) == (10, round(10 * 4 / 3)) and left == (200 - w) // 2 and top == 0


def test_blur_probabilities_paper_and_official_switch(photo):
    assert blur_probabilities() == (1.0, 0.1, 0.5)
    assert blur_probabilities(official_blur_bug=True) == (0.0, 0.9, 0.5)
    small = np.asarray(Image.fromarray(photo).resize((40, 30)))

    def rates(bug: bool, n: int = 400) -> list[float]:
        aug = MultiCropAugmentation(28, 14, n_local=1, official_blur_bug=bug)
        counts = [0, 0, 0]
        rng = np.random.default_rng(123)
        for _ in range(n):
            for i, view in enumerate((aug.global1, aug.global2, aug.local)):
                applied: list[str] = []
                view(small, rng, applied)
                counts[i] += "blur" in applied
        return [c / n for c in counts]

    paper, official = rates(False), rates(True)
    assert paper[0] == 1.0 and official[0] == 0.0
    assert abs(paper[1] - 0.1) < 0.05 and abs(official[1] - 0.9) < 0.05
    assert abs(paper[2] - 0.5) < 0.08 and abs(official[2] - 0.5) < 0.08


def test_op_rates_over_many_seeds(photo):
    small = np.asarray(Image.fromarray(photo).resize((40, 30)))
    aug = MultiCropAugmentation(28, 14, n_local=0)
    n, seen = 400, {"flip": 0, "jitter": 0, "gray": 0, "solarize1": 0, "solarize2": 0}
    rng = np.random.default_rng(9)
    for _ in range(n):
        a1: list[str] = []
        a2: list[str] = []
        aug.global1(small, rng, a1)
        aug.global2(small, rng, a2)
        seen["flip"] += "flip" in a1
        seen["jitter"] += "jitter" in a1
        seen["gray"] += "gray" in a1
        seen["solarize1"] += "solarize" in a1
        seen["solarize2"] += "solarize" in a2
    assert abs(seen["flip"] / n - 0.5) < 0.08 and abs(seen["jitter"] / n - 0.8) < 0.07
    assert abs(seen["gray"] / n - 0.2) < 0.06 and abs(seen["solarize2"] / n - 0.2) < 0.06
    assert seen["solarize1"] == 0  # solarisation only on the second global crop


def test_grayscale_view_is_really_grey(photo):
    view = ViewTransform(56, (0.5, 1.0), blur_p=0.0, jitter_p=0.0, gray_p=1.0)
    x = _unnormalize(view(photo, np.random.default_rng(0)))
    torch.testing.assert_close(x[0], x[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(x[1], x[2], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ single ops
def test_photometric_ops_by_hand():
    px = torch.tensor([0.8, 0.4, 0.2]).view(3, 1, 1).expand(3, 2, 2).clone()
    torch.testing.assert_close(adjust_brightness(px, 0.5), px * 0.5)
    assert adjust_brightness(px, 1.4).max() == 1.0  # 0.8·1.4 = 1.12 clamps to 1
    luma = 0.299 * 0.8 + 0.587 * 0.4 + 0.114 * 0.2  # 0.4970
    torch.testing.assert_close(grayscale(px), torch.full((3, 2, 2), luma))
    torch.testing.assert_close(adjust_saturation(px, 0.0), torch.full((3, 2, 2), luma))
    torch.testing.assert_close(adjust_contrast(px, 0.0), torch.full((3, 2, 2), luma))
    # contrast 1.2 around the image's mean luma
    torch.testing.assert_close(adjust_contrast(px, 1.2)[:, 0, 0], 1.2 * px[:, 0, 0] - 0.2 * luma)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1), atol=1e-6,
                               rtol=0)  # hue 0 -> 1/3: red -> green
    torch.testing.assert_close(adjust_hue(red, -1 / 3), torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1), atol=1e-6,
                               rtol=0)
    rnd = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adjust_hue(rnd, 0.0), rnd, atol=1e-5, rtol=0)
    # a hue turn keeps value (max) and the grey level of achromatic pixels
    torch.testing.assert_close(adjust_hue(rnd, 0.25).max(0).values, rnd.max(0).values, atol=1e-5, rtol=0)


def test_solarize_inverts_at_and_above_128():
    levels = torch.tensor([0, 100, 127, 128, 200, 255], dtype=torch.float32) / 255
    out = solarize(levels.view(1, 1, -1)).flatten() * 255
    torch.testing.assert_close(out, torch.tensor([0, 100, 127, 127, 55, 0], dtype=torch.float32), atol=1e-4,
                               rtol=0)


def test_gaussian_blur_kernel():
    flat = torch.full((3, 12, 12), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.5), flat)
    impulse = torch.zeros(1, 11, 11)
    impulse[0, 5, 5] = 1.0
    sigma = 1.0
    out = gaussian_blur(impulse, sigma)
    g = torch.tensor([math.exp(-0.5 * (i / sigma) ** 2) for i in range(-4, 5)])
    g = g / g.sum()
    torch.testing.assert_close(out[0, 1:10, 1:10], torch.outer(g, g), atol=1e-6, rtol=0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------------------------ data
@pytest.fixture
def image_tree(tmp_path: Path, skimage_data_dir: Path) -> Path:
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for name, dest in [("astronaut.png", "a.png"), ("coffee.png", "trip/b.jpg"), ("chelsea.png", "c.jpg"),
                       ("rocket.jpg", "trip/d.jpg"), ("astronaut.png", ".hidden/e.png")]:
        img = Image.open(skimage_data_dir / name).convert("RGB")
        img.thumbnail((96, 96))
        img.save(root / dest)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_dataset_skips_unreadable_files_and_reports_them(image_tree: Path):
    paths = list_images(image_tree)
    names = [p.relative_to(image_tree).as_posix() for p in paths]
    assert names == ["a.png", "broken.jpg", "c.jpg", "trip/b.jpg", "trip/d.jpg"]
    ds = ImageFolderDataset(paths, MultiCropAugmentation(56, 28, n_local=2))
    torch.manual_seed(0)
    s = ds[1]  # broken.jpg -> the next readable image
    assert s["index"] == 2 and len(s["failed"]) == 1
    assert s["failed"][0][0].endswith("broken.jpg") and "broken.jpg" in s["failed"][0][1]
    assert [tuple(t.shape) for t in s["global_crops"]] == [(3, 56, 56)] * 2
    assert ds[1]["failed"] == []  # remembered: not decoded (nor reported) twice
    only_bad = ImageFolderDataset([image_tree / "broken.jpg", image_tree / "notes.txt"],
                                  MultiCropAugmentation(56, 28, 1))
    with pytest.raises(RuntimeError, match="could not be read"):
        only_bad[0]


def test_file_list_and_folder_sources(image_tree: Path, tmp_path: Path):
    lst = tmp_path / "curated.txt"
    lst.write_text(f"# curated\nphotos/a.png\n\n{image_tree / 'c.jpg'}\n")
    assert read_file_list(lst) == [tmp_path / "photos" / "a.png", image_tree / "c.jpg"]
    cfg = preset("tiny-cpu")
    cfg.data.source = str(lst)
    assert len(make_dataset(cfg)) == 2
    cfg.data.source = str(image_tree)
    ds = make_dataset(cfg)
    assert len(ds) == 5 and ds.decode_min_side == 224
    cfg.data.source = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        make_dataset(cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg.data.source = str(empty)
    with pytest.raises(ValueError, match="no supported images"):
        make_dataset(cfg)


def test_collate_is_crop_major():
    samples = [
        {"global_crops": [torch.full((3, 28, 28), 10.0 * v + j) for v in range(2)],
         "local_crops": [torch.full((3, 14, 14), 100.0 + 10 * v + j) for v in range(3)],
         "index": j, "failed": [] if j else [("x.jpg", "bad")]}
        for j in range(4)
    ]
    out = collate_multicrop(samples, MaskingGenerator(2), (0.1, 0.5), 0.5)
    assert out["collated_global_crops"][:, 0, 0, 0].tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    assert out["collated_local_crops"][:, 0, 0, 0].tolist() == [100 + 10 * v + j for v in range(3) for j in range(4)]
    assert out["collated_masks"].shape == (8, 4)
    assert out["indices"].tolist() == [0, 1, 2, 3] and out["failed"] == [("x.jpg", "bad")]


def test_infinite_sampler_shards_and_resumes():
    it0 = iter(InfiniteSampler(10, rank=0, world_size=2, seed=3))
    it1 = iter(InfiniteSampler(10, rank=1, world_size=2, seed=3))
    a = [next(it0) for _ in range(5)]
    b = [next(it1) for _ in range(5)]
    assert sorted(a + b) == list(range(10))  # one pass split between the ranks, disjoint
    more = [next(it0) for _ in range(5)]
    assert sorted(more + [next(it1) for _ in range(5)]) == list(range(10))  # next pass, a new permutation
    resumed = iter(InfiniteSampler(10, rank=0, world_size=2, seed=3, start=5))
    assert [next(resumed) for _ in range(5)] == more
    with pytest.raises(ValueError):
        InfiniteSampler(0)


def test_loader_with_a_worker_yields_training_batches(image_tree: Path):
    cfg = preset("tiny-cpu")
    cfg.data.source = str(image_tree)
    cfg.data.num_workers = 1
    cfg.optim.batch_size_per_device = 4
    cfg.crops.n_local = 2
    loader = make_loader(make_dataset(cfg), cfg)
    batches = iter(loader)
    failed = []
    for _ in range(2):  # 8 samples from 5 files: broken.jpg is met at least once
        batch = next(batches)
        failed += batch["failed"]
        assert batch["collated_global_crops"].shape == (8, 3, 112, 112)
        assert batch["collated_local_crops"].shape == (8, 3, 56, 56)
        assert batch["collated_masks"].shape == (8, 64)
        assert int((batch["collated_masks"].sum(1) > 0).sum()) == 4
    assert failed and all(p.endswith("broken.jpg") for p, _ in failed)
    del batches, loader
    assert isinstance(MultiCropCollator(cfg).generator, MaskingGenerator)


def test_library_source_uses_decoded_files_only(image_tree: Path):
    from engine.store import Library, StoreError, index_library
    from tests.helpers import tiny_backbone

    with Library.open("trainset") as lib:
        index_library(lib, tiny_backbone(), folders=[image_tree], precision="fp32", batch_size=4, device="cpu")
    cfg = preset("tiny-cpu")
    cfg.data.source = "library:trainset"
    ds = make_dataset(cfg)
    names = sorted(Path(p).name for p in ds.paths)
    assert names == ["a.png", "b.jpg", "c.jpg", "d.jpg"]  # broken.jpg is an error row; hidden files are skipped
    cfg.data.source = "library:nosuchlib"
    with pytest.raises(StoreError, match="no library 'nosuchlib'"):
        make_dataset(cfg)
