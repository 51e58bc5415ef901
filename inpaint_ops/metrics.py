"""Fill quality measured against the original pixels, inside the hole only.

Scores over the whole image would be dominated by the untouched pixels (the pipeline pastes
them back), so both metrics are restricted to the mask: PSNR over hole pixels, and the mean of
the SSIM map over hole pixels. Images are compared on a [0, 1] scale whatever their dtype.
"""

from __future__ import annotations

import cv2
import numpy as np

_SSIM_SIGMA, _C1, _C2 = 1.5, 0.01**2, 0.03**2


def _unit(image: np.ndarray) -> np.ndarray:
    scale = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
    out = image.astype(np.float64) / scale
    return out if out.ndim == 3 else out[:, :, None]


def masked_psnr(reference: np.ndarray, filled: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB over the pixels where ``mask`` is True (inf when they are identical)."""
    if not mask.any():
        raise ValueError("the mask is empty: there is nothing to score")
    diff = (_unit(reference) - _unit(filled))[mask]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim_map(reference: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004, Gaussian window sigma 1.5), averaged over channels."""
    a, b = _unit(reference), _unit(filled)
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), _SSIM_SIGMA)  # noqa: E731
    out = np.zeros(a.shape[:2])
    for c in range(a.shape[2]):
        x, y = a[:, :, c], b[:, :, c]
        mx, my = blur(x), blur(y)
        vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        num = (2 * mx * my + _C1) * (2 * cov + _C2)
        out += num / ((mx**2 + my**2 + _C1) * (vx + vy + _C2))
    return out / a.shape[2]


def masked_ssim(reference: np.ndarray, filled: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM over the pixels where ``mask`` is True."""
    if not mask.any():
        raise ValueError("the mask is empty: there is nothing to score")
    return float(ssim_map(reference, filled)[mask].mean())
