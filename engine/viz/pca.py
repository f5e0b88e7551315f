"""PCA part overlays: the DINOv2 paper's recipe for colouring object parts from patch tokens.

The recipe (paper Sec. 7.5 and the authors' answers in issues #23/#45, see shared/DINOV2_SPEC.md §8):

1. A PCA of each image's patch tokens; its first component, min-max normalised to [0, 1], is thresholded
   (``threshold``, 0.5 by default) to split foreground from background.
2. A second PCA, on the foreground patches only, gives three components; each is min-max scaled over the patches
   it was fitted on and shown as R, G, B. With ``joint=True`` this PCA is fitted once on the foreground patches of
   all the images, so the same part gets the same colour in every image (the paper's Fig. 1).
3. Background patches carry no colour; :func:`render_overlay` shows them dark or as the dimmed photo.

**Foreground sign rule.** The sign of a principal component is arbitrary, so both ways of thresholding are tried
and the foreground is the candidate region with the lower cost ``area share + border share`` (the share of the grid
it covers plus the share of the grid's border patches it touches): objects are usually the smaller region and
backgrounds usually run along the image borders. When the two costs are within 0.1 of each other, the region whose
centroid is nearer the image centre wins. The first PCA is per image even with ``joint=True``: whether a patch is
foreground is a question about its own image, and a joint first component tends to separate images rather than
objects when the images differ in lighting or style.

**No clear foreground.** An image whose tokens are all equal (a blank picture through a position-free model), or
whose thresholded first component separates badly (between-class share of its variance, Otsu's measure, below
``min_separation``), is flagged ``has_foreground=False`` and its parts PCA runs on all its patches, so the picture
still shows structure. In joint mode such images are projected on the basis fitted to the images that do have a
foreground (all patches are used only when none has one), so one blank image cannot take over the colours.

**PCA implementation.** :func:`fit_pca` is an exact eigendecomposition of the covariance (or, when there are fewer
patches than dimensions, of the Gram matrix), asking only for the top k eigenpairs (Lanczos, LAPACK as fallback).
It is deterministic (fixed start vector; signs fixed so the largest loading is positive), handles rank deficiency
by zero axes instead of noise directions, and costs milliseconds for a few thousand 384-768-d tokens.
``torch.pca_lowrank`` is randomised (colours would change between runs), and sklearn's PCA adds 0.6 s of import
for the same computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.viz.patches import upsample_grid

__all__ = ["PartsResult", "PcaBasis", "fit_parts", "fit_pca", "render_overlay"]

MODES = ("blend", "side", "parts")
BACKGROUNDS = ("dark", "dimmed")
DIM = 0.35  # brightness kept by background="dimmed"
_TIE = 0.1  # cost difference under which the sign rule falls back to the centroid


@dataclass(frozen=True)
class PcaBasis:
    """A fitted PCA: ``project(x) = (x - mean) @ axes.T``."""

    mean: np.ndarray  # (D,) float32
    axes: np.ndarray  # (k, D) float32, orthonormal rows; all-zero rows where the data had no more directions
    variance: np.ndarray  # (k,) float64, the data's variance along each axis

    def project(self, x: np.ndarray) -> np.ndarray:
        """``(N, D)`` -> ``(N, k)`` float32 scores."""
        x = np.asarray(x, dtype=np.float32)
        return (x - self.mean) @ self.axes.T


def fit_pca(x: np.ndarray, k: int) -> PcaBasis:
    """The top ``k`` principal axes of the rows of ``x``, exact and deterministic (see the module notes)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"PCA needs a non-empty (N, D) array, got shape {x.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not np.isfinite(x).all():
        raise ValueError("PCA input holds NaN or infinite values")
    n, d = x.shape
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    xc = x - mean
    m = min(k, n, d)
    if n >= d:
        w, v = _top_eigenpairs((xc.T @ xc).astype(np.float64) / n, m)
        axes = v.T
    else:  # fewer samples than dimensions: the n x n Gram matrix has the same non-zero spectrum
        w, u = _top_eigenpairs((xc @ xc.T).astype(np.float64) / n, m)
        axes = u.T @ xc.astype(np.float64)
    # An eigenvalue this small relative to the data's energy is rounding noise, not a direction of the data.
    energy = float(np.mean(np.einsum("ij,ij->i", x, x, dtype=np.float64)))
    keep = w > 1e-10 * energy + 1e-30
    axes = np.where(keep[:, None], axes, 0.0)
    norms = np.linalg.norm(axes, axis=1, keepdims=True)
    axes = np.divide(axes, norms, out=np.zeros_like(axes), where=norms > 0)
    # Deterministic signs: the largest-magnitude loading of each axis is positive (as sklearn's svd_flip does).
    pivots = axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)]
    axes *= np.where(pivots < 0, -1.0, 1.0)[:, None]
    out_axes = np.zeros((k, d), np.float32)
    out_var = np.zeros(k, np.float64)
    out_axes[:m] = axes
    out_var[:m] = np.where(keep, w, 0.0)
    return PcaBasis(mean=mean, axes=out_axes, variance=out_var)


def _top_eigenpairs(mat: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` largest eigenvalues (descending) and eigenvectors (columns) of a symmetric PSD matrix.

    Lanczos (ARPACK) from a fixed start vector when few pairs of a large matrix are wanted: patch tokens have a few
    dominant directions, where it converges in a handful of steps (1-2 ms against 30-60 ms for a full reduction
    at 384-d). Small or degenerate matrices (e.g. all zero) go to LAPACK, which never fails to converge.
    """
    from scipy.linalg import eigh
    from scipy.sparse.linalg import ArpackError, eigsh

    size = mat.shape[0]
    if size > 4 * m + 32:
        start = np.random.default_rng(0).standard_normal(size)
        try:
            w, v = eigsh(mat, k=m, which="LA", v0=start)
            order = np.argsort(w)[::-1]
            return w[order], v[:, order]
        except ArpackError:  # includes ArpackNoConvergence
            pass
    w, v = eigh(mat, subset_by_index=[size - m, size - 1])
    return w[::-1], v[:, ::-1]


@dataclass
class PartsResult:
    """The recipe's output for one image, on its patch grid; :func:`render_overlay` turns it into a picture."""

    grid: tuple[int, int]
    foreground: np.ndarray  # (gh, gw) bool: thresholded first component (may be empty)
    fg_score: np.ndarray  # (gh, gw) float32 in [0, 1]: first component, min-max normalised, high = foreground
    components: np.ndarray  # (gh, gw, 3) float32: every patch projected on the parts PCA axes (raw scores)
    rgb: np.ndarray  # (gh, gw, 3) float32 in [0, 1]: parts colours where `coloured`, 0 elsewhere
    coloured: np.ndarray  # (gh, gw) bool: patches that carry a colour (the foreground, or all without one)
    has_foreground: bool
    separation: float  # Otsu's between-class share of the first component's variance at the threshold, [0, 1]
    note: str = ""  # why there is no clear foreground, for the user; empty otherwise
    basis: PcaBasis | None = field(default=None, repr=False)  # the parts PCA (the same object for all in joint)
    low: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32), repr=False)  # colour scaling
    high: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32), repr=False)

    def colours(self) -> np.ndarray:
        """Parts colours for every patch, background included (clipped to [0, 1]); smooth upsampling uses them."""
        return _scale(self.components, self.low, self.high)


def fit_parts(
    tokens_list: Sequence[np.ndarray],
    grids: Sequence[tuple[int, int]] | None = None,
    threshold: float = 0.5,
    joint: bool = True,
    min_separation: float = 0.6,
) -> list[PartsResult]:
    """Run the recipe on each image's patch tokens: ``(gh, gw, D)`` arrays, or ``(gh*gw, D)`` with ``grids``.

    ``threshold`` applies to the first component normalised to [0, 1] (higher keeps less foreground).
    ``joint=True`` shares one parts PCA (and colour scaling) between all images; with one image it is the same as
    ``joint=False``. See the module notes for the sign rule and the no-foreground fallback.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    if not tokens_list:
        return []
    flat, shapes = _as_flat(tokens_list, grids)
    firsts = [_foreground(t, g, threshold, min_separation) for t, g in zip(flat, shapes, strict=True)]

    def fit_set(i: int) -> np.ndarray:
        return flat[i][firsts[i][0].ravel()] if firsts[i][2] else flat[i]

    if joint:
        with_fg = [i for i, f in enumerate(firsts) if f[2]]
        members = with_fg or list(range(len(flat)))
        shared = _fit_colours(np.concatenate([fit_set(i) for i in members]))
        colourings = [shared] * len(flat)
    else:
        colourings = [_fit_colours(fit_set(i)) for i in range(len(flat))]

    results = []
    for tokens, grid, (fg, score, has_fg, sep, note), (basis, low, high) in zip(
        flat, shapes, firsts, colourings, strict=True
    ):
        comps = basis.project(tokens).reshape(grid[0], grid[1], 3)
        coloured = fg if has_fg else np.ones(grid, bool)
        rgb = _scale(comps, low, high) * coloured[..., None]
        results.append(PartsResult(grid=grid, foreground=fg, fg_score=score, components=comps,
                                   rgb=rgb.astype(np.float32), coloured=coloured, has_foreground=has_fg,
                                   separation=sep, note=note, basis=basis, low=low, high=high))
    return results


def _as_flat(
    tokens_list: Sequence[np.ndarray], grids: Sequence[tuple[int, int]] | None
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    if grids is not None and len(grids) != len(tokens_list):
        raise ValueError(f"{len(tokens_list)} token arrays but {len(grids)} grids")
    flat, shapes = [], []
    dim = None
    for i, tokens in enumerate(tokens_list):
        arr = np.asarray(tokens, dtype=np.float32)
        if arr.ndim == 3:
            grid = (arr.shape[0], arr.shape[1])
            arr = arr.reshape(-1, arr.shape[2])
        elif arr.ndim == 2 and grids is not None:
            grid = (int(grids[i][0]), int(grids[i][1]))
        else:
            raise ValueError("tokens must be (gh, gw, D), or (gh*gw, D) together with grids")
        if grid[0] * grid[1] != arr.shape[0] or arr.shape[0] == 0:
            raise ValueError(f"image {i}: {arr.shape[0]} tokens do not fill a {grid[0]}x{grid[1]} grid")
        if dim is not None and arr.shape[1] != dim:
            raise ValueError(f"image {i}: tokens are {arr.shape[1]}-d, the first image's are {dim}-d")
        if not np.isfinite(arr).all():
            raise ValueError(f"image {i}: tokens hold NaN or infinite values")
        dim = arr.shape[1]
        flat.append(arr)
        shapes.append(grid)
    return flat, shapes


def _foreground(
    tokens: np.ndarray, grid: tuple[int, int], threshold: float, min_separation: float
) -> tuple[np.ndarray, np.ndarray, bool, float, str]:
    """Step 1 on one image: (mask, oriented normalised score, has_foreground, separation, note)."""
    empty = np.zeros(grid, bool)
    basis = fit_pca(tokens, 1)
    score = basis.project(tokens)[:, 0].astype(np.float64)
    span = score.max() - score.min()
    if basis.variance[0] == 0.0 or span <= 0.0:
        return empty, np.zeros(grid, np.float32), False, 0.0, "all patches look alike: no foreground to separate"
    norm = ((score - score.min()) / span).reshape(grid)
    candidates = [(norm, norm > threshold), (1.0 - norm, (1.0 - norm) > threshold)]
    oriented, mask = _pick_sign(candidates, grid)
    sep = _separation(oriented, mask)
    score32 = oriented.astype(np.float32)
    if not mask.any():
        return mask, score32, False, sep, f"no patch scores above the threshold {threshold:g}"
    if sep < min_separation:
        note = f"no clear foreground (separation {sep:.2f} < {min_separation:g}); parts coloured over the image"
        return mask, score32, False, sep, note
    return mask, score32, True, sep, ""


def _pick_sign(candidates: list[tuple[np.ndarray, np.ndarray]], grid: tuple[int, int]):
    """The sign rule of the module notes: lower (area + border) share wins; near-ties go to the central region."""
    border = np.zeros(grid, bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    n_border = border.sum()

    def cost(mask: np.ndarray) -> float:
        if not mask.any():
            return np.inf
        return mask.mean() + (mask & border).sum() / n_border

    def centre_distance(mask: np.ndarray) -> float:
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            return np.inf
        dy = (rows.mean() + 0.5) / grid[0] - 0.5
        dx = (cols.mean() + 0.5) / grid[1] - 0.5
        return float(np.hypot(dx, dy))

    (a, mask_a), (b, mask_b) = candidates
    cost_a, cost_b = cost(mask_a), cost(mask_b)
    if np.isfinite(cost_a) and np.isfinite(cost_b) and abs(cost_a - cost_b) < _TIE:
        return (a, mask_a) if centre_distance(mask_a) <= centre_distance(mask_b) else (b, mask_b)
    return (a, mask_a) if cost_a <= cost_b else (b, mask_b)


def _separation(values: np.ndarray, mask: np.ndarray) -> float:
    """Between-class variance over total variance of ``values`` split by ``mask`` (0 when one side is empty)."""
    total = float(values.var())
    n_in = int(mask.sum())
    if total <= 0.0 or n_in == 0 or n_in == mask.size:
        return 0.0
    p = n_in / mask.size
    between = p * (1 - p) * (float(values[mask].mean()) - float(values[~mask].mean())) ** 2
    return float(np.clip(between / total, 0.0, 1.0))


def _fit_colours(tokens: np.ndarray) -> tuple[PcaBasis, np.ndarray, np.ndarray]:
    """Step 2: a 3-component PCA and the min-max range of each component over the patches it was fitted on."""
    basis = fit_pca(tokens, 3)
    proj = basis.project(tokens)
    return basis, proj.min(axis=0), proj.max(axis=0)


def _scale(components: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a component with no spread (fewer than 3 fitted patches) becomes a flat 0.5."""
    span = (high - low).astype(np.float32)
    ok = span > 1e-12 * (1.0 + np.abs(high).astype(np.float32))
    scaled = np.where(ok, (components - low) / np.where(ok, span, 1.0), 0.5)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def render_overlay(
    image_rgb: np.ndarray,
    result: PartsResult,
    mode: str = "blend",
    upsample: str = "nearest",
    background: str = "dark",
    alpha: float = 0.6,
) -> np.ndarray:
    """The parts picture at the photo's own size, as ``uint8`` RGB.

    mode "parts": the colours alone; "blend": colours laid over the photo with opacity ``alpha``; "side": the photo
    and the parts picture side by side (twice the width). Background patches are black ("dark") or the photo at
    35% brightness ("dimmed"). "bicubic" upsampling blends the colour and the foreground edge smoothly; "nearest"
    shows the patch blocks the model saw.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; choose dark or dimmed")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie between 0 and 1, got {alpha}")
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype}")
    import cv2

    size = image_rgb.shape[:2]
    image = np.ascontiguousarray(image_rgb)
    if upsample == "nearest":
        colours = (result.rgb * 255.0 + 0.5).astype(np.uint8)
    else:  # colour every patch so edges blend toward real colours; a soft mask decides what shows
        colours = (result.colours() * 255.0 + 0.5).astype(np.uint8)
    colour_img = upsample_grid(colours, size, upsample)
    # cv2 for the per-pixel work: at 12 MP, numpy's uint16 temporaries cost several times more.
    if mode == "blend":
        front = cv2.addWeighted(colour_img, alpha, image, 1.0 - alpha, 0.0)
    else:
        front = colour_img
    back = np.zeros_like(image) if background == "dark" else cv2.convertScaleAbs(image, alpha=DIM)
    if upsample == "nearest":
        mask = upsample_grid(result.coloured.astype(np.uint8), size, "nearest")
        picture = cv2.copyTo(front, mask, back)
    else:
        # An 8-bit weight map upsamples several times faster than a float one; 1/255 steps are invisible.
        weight = upsample_grid(result.coloured.astype(np.uint8) * np.uint8(255), size, "bicubic")
        weight = weight.astype(np.float32) * np.float32(1 / 255)
        picture = cv2.blendLinear(front, back, weight, 1.0 - weight)
    if mode == "side":
        return np.concatenate([image_rgb, picture], axis=1)
    return picture

