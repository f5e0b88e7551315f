"""iBOT block-wise masking of the global crops, as the official code draws it (DINOV2_SPEC.md §4.6).

Masks are unions of random rectangles on the patch grid. A batch masks a fixed share of its images with ratios
stratified over the configured range, so every batch sees small and large masks alike. Randomness comes from a
`random.Random` (Python's generator, as upstream); by default the module-level one, which DataLoader seeds per worker.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

__all__ = ["MaskingGenerator", "collate_masks"]

RandomLike = random.Random | Any  # the `random` module itself also works


class MaskingGenerator:
    """Draws a boolean (height, width) mask with a requested number of patches set, in rectangular blocks."""

    def __init__(
        self,
        input_size: int | tuple[int, int],
        max_num_patches: float | None = None,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        rng: RandomLike | None = None,
    ) -> None:
        self.height, self.width = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.num_patches = self.height * self.width
        # One rectangle never covers more than this; upstream passes 0.5 * grid².
        self.max_num_patches = self.num_patches * 0.5 if max_num_patches is None else max_num_patches
        self.min_num_patches = min_num_patches
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.rng = rng if rng is not None else random

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _add_block(self, mask: np.ndarray, budget: float) -> int:
        """Try (10 times) to add one rectangle that sets between 1 and `budget` new cells; return how many it set."""
        rng = self.rng
        for _ in range(10):
            area = rng.uniform(self.min_num_patches, budget)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if w >= self.width or h >= self.height:
                continue
            top = rng.randint(0, self.height - h)
            left = rng.randint(0, self.width - w)
            box = mask[top : top + h, left : left + w]
            new = h * w - int(box.sum())
            if 0 < new <= budget:
                box[...] = True
                return new
        return 0

    def __call__(self, num_masking_patches: int = 0) -> np.ndarray:
        """A mask with at most `num_masking_patches` cells set (almost always exactly that many)."""
        mask = np.zeros(self.shape, dtype=bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            added = self._add_block(mask, budget)
            if added == 0:
                break
            count += added
        return mask


def collate_masks(
    n_images: int,
    generator: MaskingGenerator,
    ratio: tuple[float, float] = (0.1, 0.5),
    sample_probability: float = 0.5,
    rng: RandomLike | None = None,
) -> dict[str, Any]:
    """Masks for a batch of `n_images` global crops (2B, crop-major), as the official collate builds them.

    int(n_images * sample_probability) images get a mask; image i of those draws its ratio from
    U(probs[i], probs[i+1]) with probs = linspace(ratio, n+1), the rest get none, and the list is shuffled.

    Returns `collated_masks` (n_images, N) bool; `mask_indices_list` (M,) the flat indices of masked tokens in
    row-major (image, patch) order, which is also the order of every per-masked-token tensor; `masks_weight` (M,)
    1 / (masked tokens of that token's image); `n_masked_patches` (1,) long; `upperbound`, the largest M the
    ratios allow (a fixed buffer size for compiled code).
    """
    rng = rng if rng is not None else random
    n_tokens = generator.num_patches
    n_masked_images = int(n_images * sample_probability)
    probs = torch.linspace(ratio[0], ratio[1], n_masked_images + 1).tolist()
    masks: list[np.ndarray] = []
    upperbound = 0
    for i in range(n_masked_images):
        target = int(n_tokens * rng.uniform(probs[i], probs[i + 1]))
        masks.append(generator(target))
        upperbound += int(n_tokens * probs[i + 1])
    empty = np.zeros(generator.shape, dtype=bool)
    masks.extend(empty for _ in range(n_images - n_masked_images))
    rng.shuffle(masks)
    if masks:
        collated = torch.from_numpy(np.stack(masks)).reshape(n_images, n_tokens)
    else:
        collated = torch.zeros((0, n_tokens), dtype=torch.bool)
    mask_indices = collated.flatten().nonzero().flatten()
    per_image = 1.0 / collated.sum(-1).clamp(min=1).to(torch.float32)
    masks_weight = per_image.unsqueeze(-1).expand_as(collated)[collated]
    return {
        "collated_masks": collated,
        "mask_indices_list": mask_indices,
        "masks_weight": masks_weight,
        "n_masked_patches": torch.tensor([mask_indices.numel()], dtype=torch.long),
        "upperbound": upperbound,
    }
