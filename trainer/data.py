"""Training data: an image dataset that survives bad files, the multi-crop collate, samplers and the loaders.

A personal photo library always holds a few files that will not decode (truncated copies, odd formats). The
dataset skips them at load time, substitutes the next readable image, and reports what it skipped through the
batch (`batch["failed"]`), so the training loop can log them from the main process even with worker processes.

Determinism. The loop's batch `it` of rank `r` is a pure function of (seed, r, it): `IterationBatches` picks its
images from InfiniteSampler's permutation stream and seeds the crops and iBOT masks from SeedSequence(seed, r, it).
So neither the number of DataLoader workers, nor which worker builds a batch, nor a restart changes the data; and
the global RNGs of the training process are touched only by the model (stochastic depth).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from trainer.augment import MultiCropAugmentation
from trainer.masking import MaskingGenerator, RandomLike, collate_masks

if TYPE_CHECKING:
    from trainer.config import TrainConfig

TRAIN_STREAM = 0  # SeedSequence stream of the training batches; distillation fits its prototypes on stream 1

__all__ = [
    "TRAIN_STREAM",
    "ImageFolderDataset",
    "InfiniteSampler",
    "IterationBatches",
    "MultiCropCollator",
    "collate_multicrop",
    "library_images",
    "list_images",
    "make_dataset",
    "make_iteration_loader",
    "make_loader",
    "read_file_list",
]


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every supported image under `root`, recursively, skipping hidden files and folders, in sorted order."""
    from engine.imageio import SUPPORTED_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in SUPPORTED_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def read_file_list(path: str | os.PathLike) -> list[Path]:
    """Paths from a text file, one per line; blank lines and '#' comments are ignored, relative paths are
    relative to the list's folder."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the file list ({e.strerror or e})") from e
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        out.append(p if p.is_absolute() else path.parent / p)
    return out


LIBRARY_PREFIX = "library:"


def library_images(name_or_path: str | os.PathLike) -> list[Path]:
    """The decoded files of a Dinoscope library (status 'ok'), in path order; files the indexer could not read
    (status 'error') and files not indexed yet are left out."""
    from engine.store import Library

    lib = Library.open(name_or_path, create=False)
    try:
        return [Path(r.path) for r in lib.images(status="ok")]
    finally:
        lib.close()


class ImageFolderDataset(Dataset):
    """Images from a list of paths, each turned into a multi-crop sample by `transform`.

    An unreadable image is replaced by the next one in the list (wrapping around); the replacement is remembered
    per worker so a bad file is decoded only once. `__getitem__` returns the transform's dict plus `index` (the
    image actually used) and `failed`: the (path, message) pairs skipped on the way.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        transform: MultiCropAugmentation,
        decode_min_side: int | None = None,
        max_consecutive_failures: int = 50,
    ) -> None:
        if not paths:
            raise ValueError("the training set is empty: no images were found")
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.decode_min_side = decode_min_side
        self.max_consecutive_failures = max_consecutive_failures
        self._bad: dict[int, str] = {}  # per process (each worker has its own copy)

    @classmethod
    def from_source(
        cls, source: str | os.PathLike, transform: MultiCropAugmentation, decode_min_side: int | None = None
    ) -> ImageFolderDataset:
        """A folder (searched recursively), a .txt file list, or `library:<name or folder>` (its decoded files)."""
        text = os.fspath(source)
        if text.startswith(LIBRARY_PREFIX):
            name = text[len(LIBRARY_PREFIX):].strip()
            paths = library_images(name)
            if not paths:
                raise ValueError(f"library {name!r} has no decoded images yet; index it first")
            return cls(paths, transform, decode_min_side)
        p = Path(text).expanduser()
        if p.is_dir():
            paths = list_images(p)
            if not paths:
                raise ValueError(f"{p}: no supported images in this folder or below it")
        elif p.is_file():
            paths = read_file_list(p)
            if not paths:
                raise ValueError(f"{p}: the file list names no images")
        else:
            raise FileNotFoundError(f"{p}: no such folder or file list")
        return cls(paths, transform, decode_min_side)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> np.ndarray:
        from engine.imageio import load_rgb

        return load_rgb(self.paths[index], min_side=self.decode_min_side)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from engine.imageio import ImageDecodeError

        failed: list[tuple[str, str]] = []
        n = len(self.paths)
        limit = min(n, self.max_consecutive_failures)
        for step in range(limit):
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                img = self._load(i)
            except (ImageDecodeError, OSError) as e:
                self._bad[i] = str(e)
                failed.append((self.paths[i], str(e)))
                continue
            # A fresh seed from torch's RNG: DataLoader seeds it per worker and per epoch, so crops differ
            # across workers and runs, yet a seeded main process reproduces them.
            seed = int(torch.randint(0, 2**62, (1,)).item())
            sample = self.transform(img, np.random.default_rng(seed))
            sample["index"] = i
            sample["failed"] = failed
            return sample
        raise RuntimeError(
            f"{limit} images in a row could not be read (starting at {self.paths[index]}); "
            f"last error: {failed[-1][1] if failed else self._bad.get(index, 'unknown')}"
        )


def make_dataset(cfg: TrainConfig) -> ImageFolderDataset:
    """The dataset a `TrainConfig` describes (cfg.data.source, cfg.crops)."""
    if not cfg.data.source:
        raise ValueError("data.source is empty: give a folder of images or a text file listing them")
    transform = MultiCropAugmentation.from_config(cfg.crops)
    min_side = round(cfg.data.decode_scale * cfg.crops.global_size) if cfg.data.decode_scale > 0 else None
    return ImageFolderDataset.from_source(cfg.data.source, transform, decode_min_side=min_side)


# ------------------------------------------------------------------------------------------------ collate
def collate_multicrop(
    samples: Sequence[dict[str, Any]],
    mask_generator: MaskingGenerator,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    dtype: torch.dtype = torch.float32,
    rng: RandomLike | None = None,
) -> dict[str, Any]:
    """Stack crops crop-major ([view0 of every sample; view1 of every sample]) and draw the iBOT masks.

    Keys: collated_global_crops (2B,3,G,G), collated_local_crops (n_local·B,3,L,L) (empty when n_local is 0),
    the mask keys of `trainer.masking.collate_masks`, `indices` (B,) and `failed` (all skipped files).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    n_global = len(samples[0]["global_crops"])
    n_local = len(samples[0]["local_crops"])
    globals_ = torch.stack([s["global_crops"][v] for v in range(n_global) for s in samples]).to(dtype)
    if n_local:
        locals_ = torch.stack([s["local_crops"][v] for v in range(n_local) for s in samples]).to(dtype)
    else:
        locals_ = globals_.new_zeros((0, *globals_.shape[1:]))
    out: dict[str, Any] = {"collated_global_crops": globals_, "collated_local_crops": locals_}
    out.update(collate_masks(len(globals_), mask_generator, mask_ratio, mask_probability, rng=rng))
    out["indices"] = torch.tensor([s.get("index", -1) for s in samples], dtype=torch.long)
    out["failed"] = [f for s in samples for f in s.get("failed", ())]
    return out


class MultiCropCollator:
    """A picklable collate_fn for DataLoader workers, built from a TrainConfig."""

    def __init__(self, cfg: TrainConfig, dtype: torch.dtype = torch.float32) -> None:
        m = cfg.mask
        grid = cfg.patch_grid
        self.generator = MaskingGenerator(
            grid, max_num_patches=m.max_ratio * grid * grid, min_num_patches=m.min_num_patches,
            min_aspect=m.min_aspect,
        )
        self.ratio = tuple(m.ratio)
        self.probability = m.sample_probability
        self.dtype = dtype

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate_multicrop(samples, self.generator, self.ratio, self.probability, self.dtype)


# ------------------------------------------------------------------------------------------------ sampling
class InfiniteSampler(Sampler[int]):
    """Endless shuffled indices for iteration-based training, sharded across ranks.

    Pass p draws a permutation from seed + p; rank r takes every world_size-th index from offset r, so ranks see
    disjoint samples and the stream is identical across restarts. `start` skips that many of this rank's indices:
    to resume after k iterations, pass k x the per-device batch size.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 start: int = 0) -> None:
        if size < 1:
            raise ValueError("InfiniteSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.shuffle, self.start = seed, shuffle, start

    def _stream(self) -> Iterator[int]:
        for p in itertools.count():
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + p)
                yield from torch.randperm(self.size, generator=g).tolist()
            else:
                yield from range(self.size)

    def __iter__(self) -> Iterator[int]:
        mine = itertools.islice(self._stream(), self.rank, None, self.world_size)
        return itertools.islice(mine, self.start, None)


def _worker_init(_worker_id: int) -> None:
    # One thread per worker (they decode and augment one sample at a time; more would fight over the cores the
    # model needs), and Ctrl-C goes to the main process alone: it finishes the step and saves, while the workers
    # keep feeding it.
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def make_loader(
    dataset: Dataset,
    cfg: TrainConfig,
    rank: int = 0,
    world_size: int = 1,
    *,
    infinite: bool = True,
    start_iter: int = 0,
    dtype: torch.dtype = torch.float32,
    pin_memory: bool = False,
) -> DataLoader:
    """DataLoader with workers and the multi-crop collate.

    infinite=True (iteration-based training, the default) uses InfiniteSampler, resumable at `start_iter`.
    infinite=False gives finite epochs: DistributedSampler when world_size > 1 (call `loader.sampler.set_epoch`),
    else a RandomSampler seeded with cfg.seed.
    """
    batch = cfg.optim.batch_size_per_device
    sampler: Sampler[int]
    if infinite:
        sampler = InfiniteSampler(len(dataset), rank, world_size, seed=cfg.seed, start=start_iter * batch)
    elif world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.seed))
    from trainer.distributed import data_workers

    device_type = "cpu" if cfg.device == "cpu" or not torch.cuda.is_available() else "cuda"
    workers = data_workers(cfg.data.num_workers, device_type, world_size)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=MultiCropCollator(cfg, dtype),
        drop_last=True,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=2 if workers > 0 else None,
    )


# ------------------------------------------------------------------------------------------------ per iteration
class IterationBatches(Dataset):
    """Map-style dataset whose item `it` is the whole collated batch of iteration `it` for one rank.

    Images: rank r's k-th sample is position r + k·world of the stream that InfiniteSampler draws (pass p is
    randperm(size) seeded with seed + p), so ranks see disjoint images, as with `trainer.data.make_loader`.
    Randomness: crops from a torch seed and masks from a `random.Random`, both from SeedSequence(seed, rank, it,
    stream); the caller's global torch RNG is saved and restored around the crops.
    """

    def __init__(self, images: ImageFolderDataset, cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                 stream: int = TRAIN_STREAM) -> None:
        self.images = images
        self.batch_size = cfg.optim.batch_size_per_device
        self.rank, self.world_size = rank, world_size
        self.seed = cfg.seed
        self.stream = stream
        self.collator = MultiCropCollator(cfg)
        self._perms: dict[int, torch.Tensor] = {}  # the last two passes (a batch may straddle two)

    def _perm(self, p: int) -> torch.Tensor:
        perm = self._perms.get(p)
        if perm is None:
            g = torch.Generator().manual_seed(self.seed + p)
            perm = torch.randperm(len(self.images), generator=g)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[p] = perm
        return perm

    def indices(self, it: int) -> list[int]:
        size = len(self.images)
        out = []
        for k in range(it * self.batch_size, (it + 1) * self.batch_size):
            p, offset = divmod(self.rank + k * self.world_size, size)
            out.append(int(self._perm(p)[offset]))
        return out

    def __getitem__(self, it: int) -> dict[str, Any]:
        if it < 0:
            raise IndexError("iterations are numbered from 0")
        torch_seed, py_seed = np.random.SeedSequence((self.seed, self.rank, it, self.stream)).generate_state(
            2, dtype=np.uint64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch_seed))
            samples = [self.images[i] for i in self.indices(it)]
        rng = random.Random(int(py_seed))
        c = self.collator
        c.generator.rng = rng
        batch = collate_multicrop(samples, c.generator, c.ratio, c.probability, c.dtype, rng=rng)
        batch["iteration"] = it
        return batch


class _Count(Sampler[int]):
    """start, start+1, ... forever."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def make_iteration_loader(batches: IterationBatches, start: int, num_workers: int,
                          pin_memory: bool = False) -> DataLoader:
    """DataLoader over IterationBatches from iteration `start`; it draws no number from the global RNG."""
    return DataLoader(
        batches,
        batch_size=None,
        sampler=_Count(start),
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        prefetch_factor=2 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(0),  # DataLoader's base seed; unused by IterationBatches
    )
