"""Fill quality of single images: against the original pixels, and on their own.

Scores over the whole image would be dominated by the untouched pixels (the pipeline pastes
them back), so PSNR and SSIM against the original are restricted to the mask: PSNR over hole
pixels, and the mean of the SSIM map over hole pixels. ``seam_score`` and ``is_blank`` need no
original; ``ms_ssim`` and ``mean_pairwise_ms_ssim`` compare variants of one source with each
other (their diversity). Images are compared on a [0, 1] scale whatever their dtype: integer
images are divided by their dtype's maximum (255 for uint8, 65535 for uint16), float images are
taken as already on [0, 1].
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np

_SSIM_SIGMA, _SSIM_WINDOW, _C1, _C2 = 1.5, 11, 0.01**2, 0.03**2
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_SEAM_RING = 4  # the reference ring reaches this many seam widths out from the hole

AREA_BINS = tuple(f"{10 * i}-{10 * i + 10}%" for i in range(10))
"""The labels ``area_bin`` returns, smallest holes first."""


def _unit(image: np.ndarray) -> np.ndarray:
    scale = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
    out = image.astype(np.float64) / scale
    return out if out.ndim == 3 else out[:, :, None]


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


def masked_psnr(reference: np.ndarray, filled: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB over the pixels where ``mask`` is True (inf when they are identical).

    ``10 * log10(1 / MSE)`` with both images on [0, 1], i.e. the peak is the dtype's maximum.
    """
    if not mask.any():
        raise ValueError("the mask is empty: there is nothing to score")
    diff = (_unit(reference) - _unit(filled))[mask]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _blur(x: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(x, (_SSIM_WINDOW, _SSIM_WINDOW), _SSIM_SIGMA)


def _ssim_terms(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luminance and contrast-structure maps of SSIM for two 2-D images on [0, 1]."""
    mx, my = _blur(x), _blur(y)
    vx, vy, cov = _blur(x * x) - mx**2, _blur(y * y) - my**2, _blur(x * y) - mx * my
    luminance = (2 * mx * my + _C1) / (mx**2 + my**2 + _C1)
    return luminance, (2 * cov + _C2) / (vx + vy + _C2)


def ssim_map(reference: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004, Gaussian window sigma 1.5), averaged over channels."""
    a, b = _unit(reference), _unit(filled)
    out = np.zeros(a.shape[:2])
    for c in range(a.shape[2]):
        luminance, contrast_structure = _ssim_terms(a[:, :, c], b[:, :, c])
        out += luminance * contrast_structure
    return out / a.shape[2]


def masked_ssim(reference: np.ndarray, filled: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM over the pixels where ``mask`` is True."""
    if not mask.any():
        raise ValueError("the mask is empty: there is nothing to score")
    return float(ssim_map(reference, filled)[mask].mean())


def _ms_ssim_scale_count(shortest_side: int) -> int:
    """Scales such that the coarsest one is still at least one SSIM window (11 px) across."""
    if shortest_side < 2 * _SSIM_WINDOW:
        return 1
    return min(len(_MS_SSIM_WEIGHTS), 1 + int(math.log2(shortest_side / _SSIM_WINDOW)))


def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling (an odd last row or column is dropped)."""
    h, w = x.shape[0] // 2, x.shape[1] // 2
    return x[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


def _ms_ssim_plane(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    value = 1.0
    for level, weight in enumerate(weights):
        luminance, contrast_structure = _ssim_terms(x, y)
        if level == len(weights) - 1:
            term = float(np.mean(luminance * contrast_structure))
        else:
            term = float(np.mean(contrast_structure))
            x, y = _halve(x), _halve(y)
        value *= max(term, 0.0) ** weight
    return value


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) of two same-shaped images, in [0, 1].

    ``prod_j mean(cs_j) ** w_j * mean(ssim_M) ** w_M``: the mean contrast-structure term at
    each scale j < M and the mean SSIM at the coarsest scale M, each image halved by 2x2
    averaging between scales, with the standard weights (0.0448, 0.2856, 0.3001, 0.2363,
    0.1333). An image too small for five scales (shortest side < 176 px) uses as many as
    keep the coarsest scale at least 11 px across (one scale below 22 px), with the first
    weights renormalised to sum to 1. Negative mean terms are clamped to 0. Colour images are
    scored per channel and the channel scores averaged. 1.0 for identical images.
    """
    _check_same_shape(a, b)
    x, y = _unit(a), _unit(b)
    weights = np.array(_MS_SSIM_WEIGHTS[: _ms_ssim_scale_count(min(x.shape[:2]))])
    weights /= weights.sum()
    planes = [_ms_ssim_plane(x[:, :, c], y[:, :, c], weights) for c in range(x.shape[2])]
    return float(np.mean(planes))


def mean_pairwise_ms_ssim(images: list[np.ndarray]) -> float:
    """Mean ``ms_ssim`` over all unordered pairs: lower means more diverse variants.

    nan for fewer than two images.
    """
    if len(images) < 2:
        return float("nan")
    pairs = itertools.combinations(images, 2)
    return float(np.mean([ms_ssim(a, b) for a, b in pairs]))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), disc).astype(bool)


def _pair_steps(
    pixels: np.ndarray, mask: np.ndarray, ring: np.ndarray, distance: int
) -> tuple[np.ndarray, np.ndarray]:
    """Steps ``|I(p) - I(q)|`` over pixel pairs ``distance`` px apart, along rows and columns.

    Returns the steps of the pairs that cross the hole boundary (one pixel in the hole, one
    outside) and of the pairs that lie wholly in ``ring``.
    """
    across, around = [], []
    for first, second in (
        (np.s_[:, :-distance], np.s_[:, distance:]),
        (np.s_[:-distance, :], np.s_[distance:, :]),
    ):
        step = np.abs(pixels[first] - pixels[second]).mean(axis=-1)
        across.append(step[mask[first] != mask[second]])
        around.append(step[ring[first] & ring[second]])
    return np.concatenate(across), np.concatenate(around)


def seam_score(image: np.ndarray, mask: np.ndarray, width: int = 2) -> float:
    """How visible the boundary of the filled hole is: ~1 blends in, larger is a visible seam.

    With the image on [0, 1] and ``step(p, q) = mean over channels of |I(p) - I(q)|``, over
    pixel pairs ``(p, q)`` ``width`` px apart along a row or a column::

        seam_score = mean step over pairs with exactly one pixel in the hole
                     / mean step over pairs with both pixels in the ring

    where the ring is the hole dilated by ``4 * width`` px (elliptical kernel) minus the hole.
    So the step across the boundary is measured against the image's own typical step, at the
    same scale, just outside the hole. 1.0 when both are 0 (a flat image with an invisible
    fill), inf when only the ring is flat. nan for an empty mask, a mask covering the whole
    image, or one that leaves no such pairs.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1 px, got {width}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    if not mask.any() or mask.all():
        return float("nan")
    ring = _dilate(mask, _SEAM_RING * width) & ~mask
    across, around = _pair_steps(_unit(image), mask, ring, width)
    if across.size == 0 or around.size == 0:
        return float("nan")
    step, typical = float(across.mean()), float(around.mean())
    if typical == 0:
        return 1.0 if step == 0 else float("inf")
    return step / typical


def is_blank(image: np.ndarray, tolerance: float = 0) -> bool:
    """True when the image is one flat colour: in every channel, ``max - min <= tolerance``.

    ``tolerance`` is in the image's own units (e.g. 0..255 for uint8).
    """
    if image.size == 0:
        raise ValueError("the image has no pixels")
    channels = image.shape[2] if image.ndim == 3 else 1
    pixels = image.reshape(-1, channels)
    spread = pixels.max(axis=0).astype(np.float64) - pixels.min(axis=0)
    return bool((spread <= tolerance).all())


def area_bin(fraction: float) -> str:
    """The LaMa-style bin of a hole covering ``fraction`` (0..1) of the image, e.g. "10-20%".

    Bins are 10 points wide, closed below and open above (0.1 is "10-20%"), except that 1.0
    falls in "90-100%". Fractions are rounded to 9 decimals first, so that 0.3 computed as
    0.30000000000000004 or 0.29999999999999993 still lands in "30-40%".
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"an area fraction must be within [0, 1], got {fraction}")
    return AREA_BINS[min(math.floor(round(fraction * 10, 9)), len(AREA_BINS) - 1)]
