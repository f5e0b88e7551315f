"""engine.transforms: the official DINOv2 eval pipeline (checked against HF's BitImageProcessor) and dense sizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.imageio import load_rgb
from engine.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    dense_size,
    dense_transform,
    eval_batch,
    eval_transform,
    normalize,
)

# The published ImageNet statistics (torchvision's docs, DINOv2's make_normalize_transform), written out here so
# that a wrong constant in engine.transforms cannot make its own reference.
PUBLISHED_MEAN = (0.485, 0.456, 0.406)
PUBLISHED_STD = (0.229, 0.224, 0.225)
MEAN = torch.tensor(PUBLISHED_MEAN).view(3, 1, 1)
STD = torch.tensor(PUBLISHED_STD).view(3, 1, 1)


def test_the_normalisation_constants_are_the_published_ones() -> None:
    assert tuple(IMAGENET_MEAN) == PUBLISHED_MEAN and tuple(IMAGENET_STD) == PUBLISHED_STD


@pytest.fixture(scope="module")
def photos(skimage_data_dir: Path) -> dict[str, np.ndarray]:
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]
    return {name: load_rgb(skimage_data_dir / name) for name in names}


@pytest.fixture(scope="module")
def hf_processor():
    """HF's reference implementation of the same pipeline (what the official DINOv2 -> HF conversion checks against).

    transformers 5 without torchvision resolves ``BitImageProcessor`` to ``BitImageProcessorPil`` (with a warning);
    import that directly. transformers 4 has the same PIL-based "slow" ``BitImageProcessor``.
    """
    pytest.importorskip("transformers")
    try:
        from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil as Processor
    except ImportError:
        from transformers import BitImageProcessor as Processor
    return Processor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=True,
        image_mean=list(PUBLISHED_MEAN),
        image_std=list(PUBLISHED_STD),
        do_convert_rgb=True,
    )


def _hf(processor, img: np.ndarray) -> np.ndarray:
    return np.asarray(processor(images=img, return_tensors="np")["pixel_values"][0])


# ---------------------------------------------------------------------------------------------------------------
# eval_transform


def test_eval_transform_shape_dtype_and_range(photos: dict[str, np.ndarray]) -> None:
    out = eval_transform(photos["coffee.png"])
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32 and out.is_contiguous()
    pixels = out * STD + MEAN  # undo Normalize: back to ToTensor's [0, 1]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert 0.2 < pixels.mean() < 0.8


def test_normalize_values() -> None:
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 128, 255
    out = normalize(img)
    assert out.shape == (3, 2, 3)
    expected = [(0.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1.0 - 0.406) / 0.225]
    torch.testing.assert_close(out[:, 0, 0], torch.tensor(expected), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        normalize(img.astype(np.float32))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        eval_transform(img[..., 0])


@pytest.mark.parametrize("name", ["astronaut.png", "coffee.png", "chelsea.png"])
def test_eval_transform_matches_hf_bit_image_processor(
    name: str, photos: dict[str, np.ndarray], hf_processor
) -> None:
    """Resize(256, bicubic) + CenterCrop(224) + normalisation agree with HF on real photos.

    Measured max abs diff: 0.0 (bit-identical) for all three; both resize with PIL bicubic and normalise in float32.
    """
    ours = eval_transform(photos[name]).numpy()
    reference = _hf(hf_processor, photos[name])
    assert reference.shape == ours.shape == (3, 224, 224)
    np.testing.assert_array_equal(ours, reference)  # bit-identical, as measured


@pytest.mark.parametrize("name", ["rocket.jpg", "motorcycle_left.png"])
def test_center_crop_rounds_like_torchvision_not_hf(name: str, photos: dict[str, np.ndarray], hf_processor) -> None:
    """Where the resized long side minus 224 is odd, torchvision and HF crop one pixel apart.

    rocket.jpg (427x640) resizes to 256x383: 159 spare columns. torchvision (the official DINOv2 pipeline) takes
    ``int(round(159 / 2)) = 80`` (Python rounds 79.5 to even), HF's center_crop takes ``159 // 2 = 79``. The tensors
    then differ by up to 2.6 (a one-pixel shift) but are identical once shifted. We follow torchvision.
    """
    ours = eval_transform(photos[name]).numpy()
    reference = _hf(hf_processor, photos[name])
    assert np.abs(ours - reference).max() > 0.05  # a real, visible difference...
    np.testing.assert_array_equal(ours[:, :, :-1], reference[:, :, 1:])  # ...that is exactly a one-column shift


def test_eval_transform_portrait_and_exact_size(photos: dict[str, np.ndarray]) -> None:
    portrait = np.ascontiguousarray(photos["coffee.png"].transpose(1, 0, 2))  # 600x400
    assert eval_transform(portrait).shape == (3, 224, 224)
    # already 256 on the short side: no resampling, just the crop
    img = np.ascontiguousarray(np.asarray(Image.fromarray(photos["coffee.png"]).resize((384, 256))))
    out = eval_transform(img)
    torch.testing.assert_close(out, normalize(img[16:240, 80:304]))


def test_eval_transform_pads_when_crop_exceeds_resize(photos: dict[str, np.ndarray]) -> None:
    """torchvision's CenterCrop zero-pads (black, before Normalize) when the crop is larger than the image."""
    out = eval_transform(photos["astronaut.png"], resize=200, crop=224)
    assert out.shape == (3, 224, 224)
    black = ((0 - MEAN) / STD).view(3)
    torch.testing.assert_close(out[:, 0, 0], black)  # padded corner
    torch.testing.assert_close(out[:, 223, 223], black)
    assert not torch.allclose(out[:, 112, 112], black)


def test_eval_batch(photos: dict[str, np.ndarray]) -> None:
    images = [photos["astronaut.png"], photos["coffee.png"], photos["rocket.jpg"]]
    batch = eval_batch(images)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[1], eval_transform(images[1]))
    assert eval_batch([]).shape == (0, 3, 224, 224)
    assert eval_batch(images, resize=128, crop=112).shape == (3, 3, 112, 112)


# ---------------------------------------------------------------------------------------------------------------
# dense_size / dense_transform


@pytest.mark.parametrize(
    "height, width",
    [(300, 451), (451, 300), (512, 512), (3000, 4000), (427, 640), (1080, 1920), (100, 101), (448, 448)],
)
def test_dense_size_is_patch_aligned_and_keeps_aspect(height: int, width: int) -> None:
    h, w = dense_size(height, width)
    assert h % 14 == 0 and w % 14 == 0
    assert abs(min(h, w) - 448) <= 7  # shorter side at the resolution, give or take half a patch
    assert abs((h / w) / (height / width) - 1) < 0.03
    assert (h // 14) * (w // 14) <= 4096


def test_dense_size_other_patch_size() -> None:
    h, w = dense_size(480, 640, resolution=224, patch_size=16)
    assert (h, w) == (224, 304)  # 224 short side; 298.7 long side -> nearest multiple of 16


def test_dense_size_panorama_respects_max_tokens() -> None:
    h, w = dense_size(500, 10000)  # 20:1
    rows, cols = h // 14, w // 14
    assert h % 14 == 0 and w % 14 == 0
    assert rows * cols <= 4096
    assert rows * cols > 3500  # scaled down to fit, not much further
    assert abs(cols / rows - 20) < 1.5
    h, w = dense_size(500, 10000, max_tokens=256)
    assert (h // 14) * (w // 14) <= 256 and w > h
    # an absurd 1:100000 strip still gets at least one patch per side and stays within budget
    h, w = dense_size(3, 300000)
    assert h >= 14 and w >= 14 and (h // 14) * (w // 14) <= 4096


def test_dense_size_tiny_image() -> None:
    h, w = dense_size(5, 5)
    assert h >= 14 and w >= 14 and h % 14 == 0 and w % 14 == 0
    assert dense_size(5, 5, resolution=3) == (14, 14)  # smaller than one patch: still one patch per side
    with pytest.raises(ValueError):
        dense_size(0, 10)


def test_dense_transform(photos: dict[str, np.ndarray]) -> None:
    tensor, grid = dense_transform(photos["chelsea.png"])  # 300x451
    assert tensor.dtype == torch.float32
    assert tensor.shape == (3, grid[0] * 14, grid[1] * 14)
    assert grid == (32, 48)
    tiny, tiny_grid = dense_transform(np.full((5, 5, 3), 200, np.uint8))
    assert tiny_grid[0] >= 1 and tiny_grid[1] >= 1
    assert tiny.shape == (3, tiny_grid[0] * 14, tiny_grid[1] * 14)
    pano = np.ascontiguousarray(np.tile(photos["chelsea.png"][:100], (1, 20, 1)))  # 100x9020, about 90:1
    pano_tensor, pano_grid = dense_transform(pano, resolution=224)
    assert pano_grid[0] * pano_grid[1] <= 4096
    assert pano_tensor.shape[1:] == (pano_grid[0] * 14, pano_grid[1] * 14)
